"""Contrastive Representation Distillation (Tian et al., ICLR 2020) -- `--distill crd`.

Pooled features `feats[-1]` of both networks are embedded (Linear + L2 norm, `feat_dim`), and an
NCE loss contrasts each sample against `nce_k` negatives drawn from a momentum memory bank of
`ctx.num_train_samples` rows (see `crd/`). The data set must supply, per sample, its index and
(nce_k + 1) contrast indices with the positive first: `batch.extra = (index, contrast_idx)`.

Data wrapping: `wrap_train_dataset(ds)` calls `ctx.extras['contrastive_wrapper'](ds, k=, mode=)`
when the entry layer provides it (keeps `distiller_zoo` free of `dataset` imports, as the layering
asks); otherwise it falls back to a lazy `dataset.ContrastiveDataset(ds, k=nce_k, mode=mode)`.
"""
from __future__ import annotations

from collections import Counter
from typing import Optional, Sequence

from crd import CRDLoss

from .base import Distiller, DistillContext
from ._common import move_to, opt_get, student_teacher_shapes


def available_negatives(num_samples: int, targets: Optional[Sequence] = None) -> int:
    """Fewest negatives any sample can draw: n - (size of its class) when labels are known
    (the contrastive data set draws negatives from the other classes), else n - 1."""
    if targets is None:
        return num_samples - 1
    counts = Counter(int(t) for t in targets)
    return num_samples - max(counts.values()) if counts else num_samples - 1


def check_nce_k(nce_k: int, num_samples: int, targets: Optional[Sequence] = None) -> None:
    avail = available_negatives(num_samples, targets)
    if nce_k < 1 or nce_k > avail:
        raise ValueError(f"--nce_k {nce_k} needs at least that many negatives per sample, but the "
                         f"training set ({num_samples} samples) offers at most {avail}; lower --nce_k")


def _targets_of(ds):
    targets = getattr(ds, "targets", None)
    return list(targets) if targets is not None else None


class CRDDistiller(Distiller):
    """opt: feat_dim (128), nce_k (16384), nce_t (0.07), nce_m (0.5), mode ('exact')."""

    needs_feats = True

    def __init__(self, ctx: DistillContext):
        super().__init__(ctx)
        self.feat_dim = int(opt_get(ctx, "feat_dim", 128))
        self.nce_k = int(opt_get(ctx, "nce_k", 16384))
        self.nce_t = float(opt_get(ctx, "nce_t", 0.07))
        self.nce_m = float(opt_get(ctx, "nce_m", 0.5))
        self.mode = str(opt_get(ctx, "mode", "exact"))
        if self.mode not in ("exact", "relax"):
            raise ValueError(f"--mode must be 'exact' or 'relax', got {self.mode!r}")
        self.n_data = int(ctx.num_train_samples)
        check_nce_k(self.nce_k, self.n_data)  # per-class check (labels known) in wrap_train_dataset
        self._wrapper = (ctx.extras or {}).get("contrastive_wrapper")

        s_shapes, t_shapes = student_teacher_shapes(ctx)
        s_dim = _numel(s_shapes[-1])
        t_dim = _numel(t_shapes[-1])
        self.criterion = CRDLoss(s_dim, t_dim, self.feat_dim, self.n_data, self.nce_k,
                                 self.nce_t, self.nce_m)
        move_to(self, ctx)

    def wrap_train_dataset(self, ds):
        check_nce_k(self.nce_k, len(ds), _targets_of(ds))
        if len(ds) != self.n_data:
            raise ValueError(f"CRD memory bank has {self.n_data} rows (ctx.num_train_samples) "
                             f"but the training set has {len(ds)} samples")
        if self._wrapper is not None:
            return self._wrapper(ds, k=self.nce_k, mode=self.mode)
        import dataset  # lazy: only the helper layer normally imports dataset

        return dataset.ContrastiveDataset(ds, k=self.nce_k, mode=self.mode)

    def forward(self, student_out, teacher_out, batch):
        if len(batch.extra) < 1:
            raise ValueError("CRD needs batch.extra = (index, contrast_idx) from its wrapped data set")
        idx = batch.extra[0]
        contrast_idx = batch.extra[1] if len(batch.extra) > 1 else None
        loss = self.criterion(student_out.feats[-1], teacher_out.feats[-1], idx, contrast_idx)
        return {"crd": loss}


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
