"""Contrastive Representation Distillation (Tian et al., ICLR 2020) -- `--distill crd`.

Pooled features `feats[-1]` of both networks are embedded (Linear + L2 norm, `feat_dim`), and an
NCE loss contrasts each sample against `nce_k` negatives drawn from a momentum memory bank of
`ctx.num_train_samples` rows (see `crd/`). The data set must supply, per sample, its index and
(nce_k + 1) contrast indices with the positive first: `batch.extra = (index, contrast_idx)`.

Data wrapping: `wrap_train_dataset(ds)` calls `ctx.contrastive_dataset(ds, k=nce_k, mode=mode)`,
which `helper.train` sets to `dataset.ContrastiveDataset` (distiller_zoo imports no `dataset`).
"""
from __future__ import annotations

from collections import Counter
from typing import Optional, Sequence

from crd import CRDLoss

from .base import Distiller, DistillContext
from ._common import move_to, student_teacher_shapes


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
    published_beta = 0.8
    needs_feats = True

    @classmethod
    def add_options(cls, parser) -> None:
        add = parser.add_argument
        add('--feat_dim', default=128, type=int, help='feature dimension')
        add('--mode', default='exact', type=str, choices=['exact', 'relax'])
        add('--nce_k', default=16384, type=int, help='number of negative samples for NCE')
        add('--nce_t', default=0.07, type=float, help='temperature parameter for softmax')
        add('--nce_m', default=0.5, type=float, help='momentum for non-parametric updates')

    def __init__(self, ctx: DistillContext):
        super().__init__(ctx)
        opt = ctx.opt
        self.feat_dim, self.nce_k, self.nce_t, self.nce_m = opt.feat_dim, opt.nce_k, opt.nce_t, opt.nce_m
        self.mode = opt.mode
        self.n_data = int(ctx.num_train_samples)
        check_nce_k(self.nce_k, self.n_data)  # per-class check (labels known) in wrap_train_dataset
        self._contrastive_dataset = ctx.contrastive_dataset

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
        if self._contrastive_dataset is None:
            raise ValueError("CRD needs ctx.contrastive_dataset (dataset.ContrastiveDataset, handed in by "
                             "helper.train) to add sample and contrast indices")
        return self._contrastive_dataset(ds, k=self.nce_k, mode=self.mode)

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
