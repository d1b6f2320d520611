"""Centred kernels of every layer, from the Gram products of `cka.grams`, kept in width-group
order.

Pure torch: this module imports nothing from the project.

* Linear kernel: the Gram itself, double-centred (``H K H``, ``H = I - 11^T/n``) or, for the
  unbiased HSIC, U-centred (zero the diagonal, subtract row/column sums / (n-2), add the grand sum
  / ((n-1)(n-2)), zero the diagonal again).
* RBF: ``K_ij = exp(-||x_i - x_j||^2 / (2 sigma^2))`` with squared distances from the Gram
  (``|x_i|^2 + |x_j|^2 - 2 x_i.x_j``; with extreme outlier samples float32 loses digits there:
  pass ``dtype=torch.float64`` for such data) and the median heuristic, detached.
* A layer that is constant over the batch (its shifted features are exactly zero) has a zero
  kernel, hence CKA 0 with everything (itself included); values and gradients stay finite
  (denominators are clamped, no ``sqrt`` at 0).
"""
from __future__ import annotations

import contextlib
from typing import List, Optional, Sequence, Tuple

import torch

from cka.grams import Layers, as_list, compute_dtype, flatten_features, group_gram, width_groups

__all__ = ["KERNELS", "NORM_EPS", "autocast_off", "batch_size", "centre_gram", "centred_kernels", "check_kernel",
           "inverse_order", "min_cka_samples", "unit_rows"]

KERNELS = ("linear", "rbf")

# Frobenius-norm floor of a centred kernel. Linear: the features are scaled to a largest entry of
# order 1 first, so a live layer's norm is of order 1 or more; RBF kernel values are at most 1.
# Only a constant layer (a zero kernel) meets the floor, and stays zero.
NORM_EPS = 1e-10
# Floor for the RBF bandwidth in trace-normalised units (squared distances there average ~2/n).
_SIGMA2_EPS = 1e-12


def min_cka_samples(estimator: str) -> int:
    """Samples one batch needs for a CKA value: the unbiased HSIC divides by n - 3, the biased by n - 1."""
    return 4 if estimator == 'debiased' else 2


def autocast_off(device: torch.device):
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except Exception:  # device type without autocast support
        return contextlib.nullcontext()


def check_kernel(kernel: str) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"unknown CKA kernel {kernel!r}; valid: {', '.join(KERNELS)}")


def _check_args(kernel: str, n: int, debiased: bool) -> None:
    check_kernel(kernel)
    needed = min_cka_samples('debiased' if debiased else 'biased')
    if n < needed:
        raise ValueError(f"{'debiased ' if debiased else ''}CKA needs at least {needed} samples per batch, got n={n}")


def batch_size(xs: List[torch.Tensor]) -> int:
    """The layers' common batch size (first dimension)."""
    n = xs[0].shape[0] if xs[0].dim() > 0 else 0
    for x in xs:
        if x.dim() == 0 or x.shape[0] != n:
            shapes = [tuple(t.shape) for t in xs]
            raise ValueError(f"all layers must share the batch size (first dim); got shapes {shapes}")
    return n


def centre_gram(K: torch.Tensor, debiased: bool) -> torch.Tensor:
    """Double-centre (H K H) or U-centre a stack of Grams (L, n, n)."""
    n = K.shape[-1]
    if not debiased:
        return (K - K.mean(dim=2, keepdim=True) - K.mean(dim=1, keepdim=True)
                + K.mean(dim=(1, 2), keepdim=True))
    off = 1.0 - torch.eye(n, dtype=K.dtype, device=K.device)
    K = K * off
    rows = K.sum(dim=2, keepdim=True) / (n - 2)
    cols = K.sum(dim=1, keepdim=True) / (n - 2)
    total = K.sum(dim=(1, 2), keepdim=True) / ((n - 1) * (n - 2))
    return (K - rows - cols + total) * off


def _median_offdiag(D: torch.Tensor) -> torch.Tensor:
    """numpy-style median of the strictly-upper-triangular entries of each (n, n) matrix."""
    n = D.shape[-1]
    iu = torch.triu_indices(n, n, offset=1, device=D.device)
    vals = D[:, iu[0], iu[1]].sort(dim=1).values
    m = vals.shape[1]
    return 0.5 * (vals[:, (m - 1) // 2] + vals[:, m // 2])


def centred_kernels(xs: Layers, kernel: str, debiased: bool, rbf_threshold: float, rbf_sigma2,
                    dtype: Optional[torch.dtype], groups: Optional[Sequence[Sequence[int]]] = None,
                    release: bool = False) -> Tuple[torch.Tensor, Optional[List[torch.Tensor]], List[int]]:
    """Centred (or U-centred) kernels of every layer, in width-group order, with no host read.

    Returns ``(Kc, scales, order)``: ``Kc`` (L, n, n) in ``dtype``, row ``j`` that of layer
    ``order[j]`` (``groups``, default :func:`width_groups` of the layers, concatenated);
    ``scales`` one (k, 1, 1) tensor per group, detached, the power of two each layer's features
    were multiplied by (the centred kernel of the raw features is ``Kc / scale^2``), or None for
    RBF, whose values carry no feature scale. A constant layer's kernel is 0.
    RBF bandwidth: ``sigma^2 = rbf_threshold^2 * median_{i<j} ||x_i - x_j||^2`` per layer and
    batch (the median of the n(n-1)/2 distinct pairs, the mean of the two middle values for an
    even count, like ``numpy.median``), detached; ``rbf_sigma2`` (raw feature units, a scalar or
    one per layer) fixes it instead.
    ``release`` (``xs`` a list): the list is emptied and each layer dropped once its group's Gram
    is taken, so that layers no one else holds are freed group by group.
    """
    owned = as_list(xs)
    if release:
        xs.clear()
    xs = owned
    n = batch_size(xs)
    _check_args(kernel, n, debiased)
    device = xs[0].device
    dtype = compute_dtype(xs, dtype)
    with autocast_off(device):
        flat = [flatten_features(x, n) for x in xs]
        if groups is None:
            groups = width_groups([f.shape[1] for f in flat])
        grams, scales = [], []
        for g in groups:
            gram, scale = group_gram([flat[i] for i in g], dtype)
            grams.append(gram)
            scales.append(scale)
            if release:
                for i in g:
                    flat[i] = xs[i] = None
        order = [i for g in groups for i in g]
        G = grams[0] if len(grams) == 1 else torch.cat(grams)       # (L, n, n)
        if kernel == "linear":
            # a constant layer's shifted features are exactly 0: so are its Gram and kernel
            return centre_gram(G, debiased), scales, order
        scale = scales[0] if len(scales) == 1 else torch.cat(scales)  # (L, 1, 1)
        L = G.shape[0]
        # RBF: distances from the Gram in trace-normalised units (the trace is detached; a
        # constant layer has trace 0 and keeps a zero kernel through `live`)
        tr = G.detach().diagonal(dim1=1, dim2=2).sum(-1)
        live = (tr > 0).to(dtype)
        G = G / torch.where(tr > 0, tr, torch.ones_like(tr))[:, None, None]
        sq = G.diagonal(dim1=1, dim2=2)
        off = 1.0 - torch.eye(n, dtype=dtype, device=device)
        D = (sq[:, :, None] + sq[:, None, :] - 2.0 * G).clamp_min(0.0) * off
        if rbf_sigma2 is None:
            sigma2 = (rbf_threshold ** 2) * _median_offdiag(D.detach())
        else:
            raw = torch.as_tensor(rbf_sigma2, dtype=torch.float64, device=device)
            raw = raw.expand(L) if raw.dim() == 0 else raw
            if raw.shape != (L,):
                raise ValueError(f"rbf_sigma2 must be a scalar or one value per layer ({L})")
            if bool((raw <= 0).any()):
                raise ValueError("rbf_sigma2 must be positive")
            # raw units -> trace-normalised units of this layer (order: the layers' row order)
            units = tr.double() / scale.reshape(-1).double() ** 2
            sigma2 = (raw[order] / units.clamp_min(torch.finfo(torch.float64).tiny)).to(dtype)
        sigma2 = sigma2.clamp_min(_SIGMA2_EPS)
        K = torch.exp(-D / (2.0 * sigma2[:, None, None]))
        return centre_gram(K, debiased) * live[:, None, None], None, order


def unit_rows(Kc: torch.Tensor) -> torch.Tensor:
    """(L, n*n): each kernel flattened and Frobenius-normalised (a zero kernel stays zero)."""
    flat = Kc.reshape(Kc.shape[0], -1)
    return flat / torch.linalg.vector_norm(flat, dim=1, keepdim=True).clamp_min(NORM_EPS)


def inverse_order(order: Sequence[int]) -> List[int]:
    """The positions of layers 0, 1, ... in ``order`` (row ``j`` holds layer ``order[j]``): the
    index that puts rows kept in that order back in layer order."""
    inverse = [0] * len(order)
    for position, layer in enumerate(order):
        inverse[layer] = position
    return inverse
