"""Centred kernel alignment (CKA) between every pair of layers, in one matrix product.

Pure torch: this module imports nothing from the project.

Notation: a layer's output for a batch of ``n`` samples is flattened per sample to ``X`` (n x p).
``K`` is its n x n kernel (Gram) matrix, ``H = I - 11^T/n`` the centring matrix.

Estimators (``kernel`` x ``debiased``):

* ``kernel='linear', debiased=False``: biased HSIC, ``tr(K H L H) / (n-1)^2`` with ``K = X X^T``.
* ``kernel='linear', debiased=True``: unbiased HSIC of Song et al. (2012), from U-centred Grams;
  the Frobenius inner product of two U-centred Grams is ``n(n-3)`` times the unbiased HSIC. Needs
  ``n >= 4``; the value can be negative.
* ``kernel='rbf'``: ``K_ij = exp(-||x_i - x_j||^2 / (2 sigma^2))`` with the median heuristic
  ``sigma^2 = t^2 * median_{i<j} ||x_i - x_j||^2`` (``t = rbf_threshold``, default 0.5), per layer
  and per batch, **detached**: gradients treat it as a constant. ``rbf_sigma2`` fixes the
  bandwidth instead (raw feature units). Either biased (``debiased=False``) or U-centring
  (``debiased=True``).

CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)). With every layer's centred Gram normalised to
unit Frobenius norm and flattened (``normalized_grams``, an ``L x n^2`` matrix), the whole CKA
matrix between two lists of layers is ``S @ T.T`` — one matrix product. The numerics of the Grams
are `cka.grams`' (shift, power-of-two scale, float32 at least, one batched product per width) and
`cka.kernels`' (exact centring, constant layers, RBF distances); everything runs outside autocast.
Nothing here detaches the inputs: differentiable w.r.t. ``xs`` and ``ys`` wherever they require
grad. Compute a frozen teacher's Grams under ``torch.no_grad()`` and reuse them.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from cka.grams import Layers, as_list, compute_dtype
from cka.kernels import autocast_off, centred_kernels, inverse_order, unit_rows

__all__ = ["normalized_grams", "grouped_normalized_grams", "cka_from_grams", "cka_matrix", "cka"]


def grouped_normalized_grams(xs: Layers, kernel: str = "linear", debiased: bool = False, *,
                             groups: Optional[Sequence[Sequence[int]]] = None, rbf_threshold: float = 0.5,
                             rbf_sigma2=None, dtype: Optional[torch.dtype] = None,
                             release: bool = False) -> Tuple[torch.Tensor, List[int]]:
    """:func:`normalized_grams` in width-group order, as a training step wants them: ``(rows,
    order)`` with row ``j`` that of layer ``order[j]`` (``groups``: see `cka.width_groups`).
    One batched Gram product per width group, no per-layer select or scatter, no host read.
    ``release``: empty the list ``xs``, dropping each layer once its Gram is taken (a frozen
    teacher's outputs, freed group by group)."""
    Kc, _, order = centred_kernels(xs, kernel, debiased, rbf_threshold, rbf_sigma2, dtype, groups, release)
    with autocast_off(Kc.device):
        return unit_rows(Kc), order


def normalized_grams(xs: Layers, kernel: str = "linear", debiased: bool = False, *,
                     rbf_threshold: float = 0.5, rbf_sigma2=None,
                     dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Centred (``debiased=True``: U-centred) kernels, Frobenius-normalised, flattened.

    ``xs``: one batch-first tensor or a list of them (any shapes, same batch size n), each
    flattened per sample. Returns an ``(L, n*n)`` tensor in ``dtype`` (default: float32, or float64
    for float64 inputs), in layer order; a constant layer's row is zero. The CKA between layers
    ``i`` of ``S`` and ``j`` of ``T`` is ``(S @ T.T)[i, j]``.
    """
    rows, order = grouped_normalized_grams(xs, kernel, debiased, rbf_threshold=rbf_threshold,
                                           rbf_sigma2=rbf_sigma2, dtype=dtype)
    if order == sorted(order):
        return rows
    return rows[torch.tensor(inverse_order(order), device=rows.device)]


def cka_from_grams(S: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """CKA matrix from two outputs of :func:`normalized_grams` (same n, estimator, dtype)."""
    if S.shape[1] != T.shape[1]:
        raise ValueError(f"Grams of different batch sizes: {S.shape[1]} vs {T.shape[1]} entries")
    with autocast_off(S.device):
        return S @ T.transpose(0, 1)


def cka_matrix(xs: Layers, ys: Optional[Layers] = None, kernel: str = "linear",
               debiased: bool = False, *, rbf_threshold: float = 0.5, rbf_sigma2=None,
               dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``len(xs) x len(ys)`` CKA matrix (``ys=None``: the symmetric ``xs`` x ``xs`` matrix).

    Differentiable w.r.t. every input that requires grad. ``rbf_sigma2`` (RBF only): a fixed
    squared bandwidth (scalar, or one per layer; same value used for ``ys``) instead of the
    detached median heuristic.
    """
    dtype = compute_dtype(as_list(xs) + ([] if ys is None else as_list(ys)), dtype)
    kw = dict(rbf_threshold=rbf_threshold, rbf_sigma2=rbf_sigma2, dtype=dtype)
    S = normalized_grams(xs, kernel, debiased, **kw)
    T = S if ys is None else normalized_grams(ys, kernel, debiased, **kw)
    return cka_from_grams(S, T)


def cka(x: torch.Tensor, y: torch.Tensor, kernel: str = "linear", debiased: bool = False,
        **kw) -> torch.Tensor:
    """CKA between two single layers (a 0-d tensor)."""
    return cka_matrix([x], [y], kernel, debiased, **kw)[0, 0]
