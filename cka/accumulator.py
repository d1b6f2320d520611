"""Minibatch CKA over many batches: HSIC terms of each batch in raw feature units, averaged.

Pure torch: this module imports nothing from the project.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from cka.grams import Layers, as_list, compute_dtype
from cka.kernels import NORM_EPS, autocast_off, batch_size, centred_kernels, check_kernel, inverse_order

__all__ = ["hsic_terms", "CKAAccumulator"]


def _hsic_normaliser(n: int, debiased: bool) -> float:
    return float(n * (n - 3)) if debiased else float((n - 1) ** 2)


def hsic_terms(xs: Layers, ys: Optional[Layers] = None, kernel: str = "linear",
               debiased: bool = False, *, rbf_threshold: float = 0.5, rbf_sigma2=None,
               dtype: Optional[torch.dtype] = None):
    """HSIC estimates of one batch in raw feature units, as float64 (not differentiable).

    Returns ``(cross, self_x, self_y)``: ``cross[i, j] = HSIC(x_i, y_j)`` (``ys=None``: x vs x),
    ``self_x[i] = HSIC(x_i, x_i)``, ``self_y[j] = HSIC(y_j, y_j)``. Biased: ``tr(KHLH)/(n-1)^2``;
    debiased: the unbiased estimator of Song et al. (``<U(K), U(L)> / (n(n-3))``).
    """
    dtype = compute_dtype(as_list(xs) + ([] if ys is None else as_list(ys)), dtype)
    kw = dict(rbf_threshold=rbf_threshold, rbf_sigma2=rbf_sigma2, dtype=dtype)
    with torch.no_grad():
        fx, sx = _raw_unit_rows(xs, kernel, debiased, **kw)
        n = batch_size(as_list(xs))
        if ys is None:
            fy, sy = fx, sx
        else:
            if batch_size(as_list(ys)) != n:
                raise ValueError(f"xs and ys have different batch sizes: {n} vs {batch_size(as_list(ys))}")
            fy, sy = _raw_unit_rows(ys, kernel, debiased, **kw)
        c = _hsic_normaliser(n, debiased)
        with autocast_off(fx.device):
            cross = (fx @ fy.transpose(0, 1)).double() * sx[:, None] * sy[None, :] / c
            self_x = (fx * fx).sum(1).double() * sx * sx / c
            self_y = self_x if ys is None else (fy * fy).sum(1).double() * sy * sy / c
    return cross, self_x, self_y


def _raw_unit_rows(xs: Layers, kernel: str, debiased: bool, *, rbf_threshold: float, rbf_sigma2,
                   dtype: Optional[torch.dtype]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(rows, norms) in layer order: each centred kernel flattened and normalised to unit
    Frobenius norm, and that norm in raw feature units (float64), so that ``rows[i] * norms[i]``
    is layer i's centred kernel of the raw features."""
    Kc, scale, order = centred_kernels(xs, kernel, debiased, rbf_threshold, rbf_sigma2, dtype)
    with autocast_off(Kc.device):
        flat = Kc.reshape(Kc.shape[0], -1)
        norms = torch.linalg.vector_norm(flat, dim=1, keepdim=True)
        rows = flat / norms.clamp_min(NORM_EPS)
        norms = norms.reshape(-1).double()
        if scale is not None:
            norms = norms / torch.cat(scale).reshape(-1).double() ** 2
        inverse = torch.tensor(inverse_order(order), device=rows.device)
        return rows[inverse], norms[inverse]


def _ratio(cross: torch.Tensor, self_x: torch.Tensor, self_y: torch.Tensor) -> torch.Tensor:
    den = (self_x.clamp_min(0.0)[:, None] * self_y.clamp_min(0.0)[None, :]).sqrt()
    return torch.where(den > 0, cross / den.clamp_min(torch.finfo(den.dtype).tiny),
                       torch.zeros_like(cross))


class CKAAccumulator:
    """Minibatch CKA over many batches (Nguyen, Raghu, Kornblith 2021).

    Each :meth:`update` adds one batch's HSIC estimates — the cross terms for all pairs and every
    layer's self term — in float64; :meth:`matrix` returns
    ``mean_b cross[i, j] / sqrt(mean_b self_x[i] * mean_b self_y[j])`` (each batch weighted
    equally), **not** the mean of per-batch CKA values. ``ys=None`` in every update gives the
    symmetric ``xs`` x ``xs`` matrix (e.g. a teacher's own layer-by-layer matrix).

    Not differentiable (runs under ``no_grad``); meant for analysis. With ``keep_per_batch=True``
    each batch's own CKA matrix is kept in :attr:`per_batch` (float64, CPU) for stability analysis.
    RBF: the median-heuristic bandwidth is per batch and per layer.
    """

    def __init__(self, kernel: str = "linear", debiased: bool = False, *,
                 rbf_threshold: float = 0.5, rbf_sigma2=None,
                 dtype: Optional[torch.dtype] = None, keep_per_batch: bool = False):
        check_kernel(kernel)
        self.kernel = kernel
        self.debiased = debiased
        self.rbf_threshold = rbf_threshold
        self.rbf_sigma2 = rbf_sigma2
        self.dtype = dtype
        self.keep_per_batch = keep_per_batch
        self.reset()

    def reset(self) -> None:
        self.num_batches = 0
        self._cross = self._self_x = self._self_y = None
        self._symmetric: Optional[bool] = None
        self.per_batch: List[torch.Tensor] = []

    def update(self, xs: Layers, ys: Optional[Layers] = None) -> None:
        symmetric = ys is None
        if self._symmetric is not None and symmetric != self._symmetric:
            raise ValueError("CKAAccumulator: mixing updates with and without ys")
        cross, sx, sy = hsic_terms(xs, ys, self.kernel, self.debiased,
                                   rbf_threshold=self.rbf_threshold,
                                   rbf_sigma2=self.rbf_sigma2, dtype=self.dtype)
        if self._cross is None:
            self._cross, self._self_x, self._self_y = cross.clone(), sx.clone(), sy.clone()
            self._symmetric = symmetric
        else:
            if cross.shape != self._cross.shape:
                raise ValueError(f"CKAAccumulator: layer counts changed from "
                                 f"{tuple(self._cross.shape)} to {tuple(cross.shape)}")
            self._cross += cross
            self._self_x += sx
            self._self_y += sy
        self.num_batches += 1
        if self.keep_per_batch:
            self.per_batch.append(_ratio(cross, sx, sy).cpu())

    def hsic(self):
        """Mean HSIC terms so far: ``(cross, self_x, self_y)`` (float64)."""
        if self._cross is None:
            raise RuntimeError("CKAAccumulator: no batch added yet")
        b = float(self.num_batches)
        return self._cross / b, self._self_x / b, self._self_y / b

    def matrix(self) -> torch.Tensor:
        """The pooled CKA matrix (float64, on the updates' device); 0 where a layer was constant in
        every batch."""
        return _ratio(*self.hsic())
