"""Centred kernel alignment (CKA) between every pair of layers, in one matrix product.

Pure torch: this module imports nothing from the project.

Notation: a layer's output for a batch of ``n`` samples is flattened per sample to ``X`` (n x p).
``K`` is its n x n kernel (Gram) matrix, ``H = I - 11^T/n`` the centring matrix.

Estimators (``kernel`` x ``debiased``):

* ``kernel='linear', debiased=False``: biased HSIC, ``tr(K H L H) / (n-1)^2`` with ``K = X X^T``.
* ``kernel='linear', debiased=True``: unbiased HSIC of Song et al. (2012). Computed by
  "U-centring" each Gram (zero the diagonal, subtract row/column sums / (n-2), add the grand sum /
  ((n-1)(n-2)), zero the diagonal again); the Frobenius inner product of two U-centred Grams is
  ``n(n-3)`` times the unbiased HSIC. Needs ``n >= 4``; the value can be negative.
* ``kernel='rbf'``: ``K_ij = exp(-||x_i - x_j||^2 / (2 sigma^2))`` with the median heuristic
  ``sigma^2 = t^2 * median_{i<j} ||x_i - x_j||^2`` (``t = rbf_threshold``, default 0.5; the median
  is taken over the n(n-1)/2 distinct pairs, the mean of the two middle values for an even count,
  like ``numpy.median``). The bandwidth is computed per layer and per batch and is **detached**:
  gradients treat it as a constant. ``rbf_sigma2`` fixes the bandwidth instead (raw feature units).
  Either biased (``debiased=False``) or U-centring (``debiased=True``).

CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)). With every layer's centred Gram normalised to
unit Frobenius norm and flattened (``normalized_grams``, an ``L x n^2`` matrix), the whole CKA
matrix between two lists of layers is ``S @ T.T`` — one matrix product.

Numerics (see docs in the project's CKA notes):

* Large common offsets: "Gram of raw features, then centre" cancels digits in float32 (with an
  offset of 1e4 it gives nonsense). Every layer is therefore shifted per column **before** its
  Gram, by a reference built from its first rows (exact zeros for constant columns, exact
  subtractions under a large common offset), and scaled by a power of two so that its largest entry among the first rows is
  of order 1 (no Gram overflow or underflow, whatever the features' magnitude; exact). Shift and
  scale are detached and decided on the device, with no host read or data-dependent branch, so a
  training step never waits for the device and compiles as one graph; both fuse with the float32
  copy that the Gram product needs anyway (bf16 features are upcast in the same pass). The n x n
  Gram is then double-centred (or U-centred) exactly: a per-column shift does not change it. The
  compute dtype is at least float32: float32 for float32 or narrower (bf16/fp16) inputs, float64
  when an input is float64 (or ``dtype=`` forces one), always outside autocast.
* Layers of equal flattened width share one batched Gram product (:func:`width_groups`); the
  Grams are kept in that group order (:func:`grouped_normalized_grams`), so a loss needs no
  per-layer select or stack. Gram backward: one product, ``s (dG + dG^T) Y``, with ``Y`` rebuilt
  from the saved inputs (no float copy of the features is kept for the backward).
* A layer that is constant over the batch (its shifted features are exactly zero) has CKA 0 with
  everything (itself included); values and gradients stay finite (denominators are clamped, no
  ``sqrt`` at 0).
* RBF squared distances come from the Gram (``|x_i|^2 + |x_j|^2 - 2 x_i.x_j``): with extreme
  outlier samples float32 loses digits there; pass ``dtype=torch.float64`` for such data.
* Nothing here detaches the inputs: differentiable w.r.t. ``xs`` and ``ys`` wherever they require
  grad. Compute a frozen teacher's Grams under ``torch.no_grad()`` and reuse them.
"""
from __future__ import annotations

import contextlib
from typing import List, Optional, Sequence, Tuple, Union

import torch

__all__ = [
    "KERNELS",
    "normalized_grams",
    "grouped_normalized_grams",
    "width_groups",
    "cka_from_grams",
    "cka_matrix",
    "cka",
    "hsic_terms",
    "CKAAccumulator",
    "min_cka_samples",
]

KERNELS = ("linear", "rbf")

# Frobenius-norm floor of a centred kernel. Linear: the features are scaled to a largest entry of
# order 1 first, so a live layer's norm is of order 1 or more; RBF kernel values are at most 1.
# Only a constant layer (a zero kernel) meets the floor, and stays zero.
_NORM_EPS = 1e-10
# Floor for the RBF bandwidth in trace-normalised units (squared distances there average ~2/n).
_SIGMA2_EPS = 1e-12

Layers = Union[torch.Tensor, Sequence[torch.Tensor]]


def _as_list(xs: Layers) -> List[torch.Tensor]:
    if isinstance(xs, torch.Tensor):
        return [xs]
    xs = list(xs)
    if not xs:
        raise ValueError("CKA needs at least one layer")
    return xs


def _autocast_off(device: torch.device):
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except Exception:  # device type without autocast support
        return contextlib.nullcontext()


def _check_args(kernel: str, n: int, debiased: bool) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"unknown CKA kernel {kernel!r}; valid: {', '.join(KERNELS)}")
    if debiased and n < 4:
        raise ValueError(f"debiased CKA needs at least 4 samples per batch, got n={n}")
    if n < 2:
        raise ValueError(f"CKA needs at least 2 samples per batch, got n={n}")


def _batch_size(xs: List[torch.Tensor]) -> int:
    n = xs[0].shape[0] if xs[0].dim() > 0 else 0
    for x in xs:
        if x.dim() == 0 or x.shape[0] != n:
            shapes = [tuple(t.shape) for t in xs]
            raise ValueError(f"all layers must share the batch size (first dim); got shapes {shapes}")
    return n


def _centre_gram(K: torch.Tensor, debiased: bool) -> torch.Tensor:
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


def _flatten(x: torch.Tensor, n: int) -> torch.Tensor:
    """(n, p) features of a layer, flattened in memory order. CKA does not depend on the order of
    a layer's features, and a channels_last map (--channels_last) flattened in NCHW order would
    be a transposing copy (it cost more than the Gram itself); in memory order it is a view."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        x = x.permute(0, 2, 3, 1)
    return x.reshape(n, -1)


def _compute_dtype(layers: Sequence[torch.Tensor], dtype: Optional[torch.dtype]) -> torch.dtype:
    """``dtype`` when given, else at least float32: float64 inputs stay float64 (as SemCKD's Gram)."""
    if dtype is not None:
        return dtype
    return torch.float64 if any(x.dtype == torch.float64 for x in layers) else torch.float32


# Rows whose spread around the reference row sets a layer's power-of-two scale (see _shift_and_scale).
_SCALE_ROWS = 8


def width_groups(widths: Sequence[int]) -> List[List[int]]:
    """Layer indices grouped by flattened width, the layers whose Grams one batched product
    computes: layers in order within a group, groups from the smallest total size to the largest
    (so that, when the layers are released group by group, the largest group's stacked copy is
    made when the fewest others are still alive). Depends on the shapes only, so a model's
    grouping is the same at every step."""
    groups: dict = {}
    for i, width in enumerate(widths):
        groups.setdefault(int(width), []).append(i)
    return sorted(groups.values(), key=lambda g: (int(widths[g[0]]) * len(g), g[0]))


def _stacked(xs: Sequence[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """(k, n, p) from k flattened (n, p) layers: for k > 1 one concatenation straight into a fresh
    ``dtype`` tensor (bf16 features upcast on the way, no bf16 copy in between); for k = 1 a view
    of the layer itself."""
    if len(xs) == 1:
        return xs[0].unsqueeze(0)
    (n, p), k = xs[0].shape, len(xs)
    if xs[0].dtype == dtype:
        return torch.cat(list(xs)).view(k, n, p)
    out = torch.empty((k * n, p), dtype=dtype, device=xs[0].device)
    return torch.cat(list(xs), out=out).view(k, n, p)


def _negated_stack(xs: Sequence[torch.Tensor], dtype: torch.dtype, scale=None, offset=None):
    """:func:`_negated_features` of the stacked layers, ``(-Y, s, r s)``, in place on the fresh
    concatenation (no second k x n x p buffer). ``scale`` and ``offset`` given (the backward): the
    forward's values, rebuilt bit for bit."""
    X = _stacked(xs, dtype)
    if scale is None:
        scale, offset = _scale_and_offset(X, dtype)
    if len(xs) > 1:
        return _negated_features(X, scale, offset, out=X), scale, offset
    return _negated_features(X, scale, offset), scale, offset


def _scale_and_offset(X: torch.Tensor, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """The scales ``s`` (k, 1, 1) and shifts in scaled units ``r s`` (k, 1, p) of stacked layers
    (k, n, p), such that ``Y = (X - r) s`` is what each layer's Gram is taken of.

    ``r = x_0 + mean_{i < 8}(x_i - x_0)``, built from the first rows: a constant column becomes
    exactly 0, under a large common offset every subtraction is exact (Sterbenz), and the shifted
    features are nearly centred (less cancellation in the centring than with the first sample
    alone), so the Gram is built from offset-free numbers. The exact centring follows on the n x n
    Gram, which a per-column shift does not change. ``s = 2^-e``, ``e`` the binary exponent of the layer's largest magnitude among its first
    rows, keeps the Gram far from float overflow and underflow whatever the features' magnitude.
    Both are detached and decided on the device (no host read, no branch); ``s`` is a power of two,
    so scaling is exact, and CKA is scale invariant, so gradients through them are exact too.
    """
    with torch.no_grad():
        head = X.narrow(1, 0, min(_SCALE_ROWS, X.shape[1]))
        amax = torch.linalg.vector_norm(head, ord=float('inf'), dim=(1, 2), keepdim=True)
        exponent = torch.frexp(amax).exponent.neg_()
        scale = torch.exp2(exponent if dtype != torch.float64 else exponent.to(dtype))
        first = head.narrow(1, 0, 1)
        reference = first + (head - first).mean(dim=1, keepdim=True)
        return scale, reference * scale


def _negated_features(X: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, out=None) -> torch.Tensor:
    """``-Y = r s - X s`` in one fused pass (it also upcasts bf16 features; ``out=X``: in place on a
    fresh stack); a Gram does not see the sign."""
    return torch.addcmul(offset, X, scale, value=-1, out=out)


class _GroupGram(torch.autograd.Function):
    """Grams (k, n, n) of the shifted, scaled features of k equal-width layers, and their scales.

    Saves only its inputs, the (k, 1, 1) scales and the (k, 1, p) shifts: no float copy of the
    features lives until the backward, which rebuilds ``Y`` (for bf16 features a float32 copy
    would be twice their size). Backward: one batched product, ``s (dG + dG^T) Y``; autograd's own
    backward of ``Y @ Y^T`` would take two.
    """

    @staticmethod
    def forward(ctx, dtype: torch.dtype, *xs: torch.Tensor):
        negated, scale, offset = _negated_stack(xs, dtype)
        ctx.save_for_backward(scale, offset, *xs)
        ctx.mark_non_differentiable(scale)
        ctx.set_materialize_grads(False)
        return torch.bmm(negated, negated.transpose(1, 2)), scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _scale_grad):
        scale, offset, *xs = ctx.saved_tensors
        if grad is None:  # the Grams were not used
            return (None,) * (1 + len(xs))
        negated, _, _ = _negated_stack(xs, offset.dtype, scale, offset)   # the forward's, bit for bit
        # dL/dX = s (dG + dG^T) Y = -(s (dG + dG^T)) (-Y): the factor s on the small n x n side,
        # never s^2 (which overflows for features of magnitude 1e-30)
        grad_x = torch.baddbmm(negated, (grad + grad.transpose(1, 2)) * scale, negated, beta=0, alpha=-1)
        if grad_x.dtype != xs[0].dtype:
            grad_x = grad_x.to(xs[0].dtype)
        return (None, *grad_x.unbind(0))


def _group_gram(xs: Sequence[torch.Tensor], dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """(Grams (k, n, n), scales (k, 1, 1)) of equal-width layers; a graph of its own only when a
    layer needs gradients (a teacher's, under no_grad, takes the plain forward)."""
    if torch.is_grad_enabled() and any(x.requires_grad for x in xs):
        return _GroupGram.apply(dtype, *xs)
    with torch.no_grad():
        negated, scale, _ = _negated_stack(xs, dtype)
        return torch.bmm(negated, negated.transpose(1, 2)), scale


def _centred_kernels(xs: Layers, kernel: str, debiased: bool, rbf_threshold: float, rbf_sigma2,
                     dtype: Optional[torch.dtype], groups: Optional[Sequence[Sequence[int]]] = None,
                     release: bool = False) -> Tuple[torch.Tensor, torch.Tensor, List[int]]:
    """Centred (or U-centred) kernels of every layer, in width-group order, with no host read.

    Returns ``(Kc, scales, order)``: ``Kc`` (L, n, n) in ``dtype``, row ``j`` that of layer
    ``order[j]`` (``groups``, default :func:`width_groups` of the layers, concatenated);
    ``scales`` one (k, 1, 1) tensor per group, detached, the power of two each layer's features
    were multiplied by (the centred kernel of the raw features is ``Kc / scale^2``), or None for
    RBF, whose values carry no feature scale. A constant layer's kernel is 0.
    ``release`` (``xs`` a list): the list is emptied and each layer dropped once its group's Gram
    is taken, so that layers no one else holds are freed group by group.
    """
    owned = _as_list(xs)
    if release:
        xs.clear()
    xs = owned
    n = _batch_size(xs)
    _check_args(kernel, n, debiased)
    device = xs[0].device
    dtype = _compute_dtype(xs, dtype)
    with _autocast_off(device):
        flat = [_flatten(x, n) for x in xs]
        if groups is None:
            groups = width_groups([f.shape[1] for f in flat])
        grams, scales = [], []
        for g in groups:
            gram, scale = _group_gram([flat[i] for i in g], dtype)
            grams.append(gram)
            scales.append(scale)
            if release:
                for i in g:
                    flat[i] = xs[i] = None
        order = [i for g in groups for i in g]
        G = grams[0] if len(grams) == 1 else torch.cat(grams)       # (L, n, n)
        if kernel == "linear":
            # a constant layer's shifted features are exactly 0: so are its Gram and kernel
            return _centre_gram(G, debiased), scales, order
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
        return _centre_gram(K, debiased) * live[:, None, None], None, order


def _unit_rows(Kc: torch.Tensor) -> torch.Tensor:
    """(L, n*n): each kernel flattened and Frobenius-normalised (a zero kernel stays zero)."""
    flat = Kc.reshape(Kc.shape[0], -1)
    return flat / torch.linalg.vector_norm(flat, dim=1, keepdim=True).clamp_min(_NORM_EPS)


def grouped_normalized_grams(xs: Layers, kernel: str = "linear", debiased: bool = False, *,
                             groups: Optional[Sequence[Sequence[int]]] = None, rbf_threshold: float = 0.5,
                             rbf_sigma2=None, dtype: Optional[torch.dtype] = None,
                             release: bool = False) -> Tuple[torch.Tensor, List[int]]:
    """:func:`normalized_grams` in width-group order, as a training step wants them: ``(rows,
    order)`` with row ``j`` that of layer ``order[j]`` (``groups``: see :func:`width_groups`).
    One batched Gram product per width group, no per-layer select or scatter, no host read.
    ``release``: empty the list ``xs``, dropping each layer once its Gram is taken (a frozen
    teacher's outputs, freed group by group)."""
    Kc, _, order = _centred_kernels(xs, kernel, debiased, rbf_threshold, rbf_sigma2, dtype, groups, release)
    with _autocast_off(Kc.device):
        return _unit_rows(Kc), order


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
    return rows[torch.tensor(_inverse(order), device=rows.device)]


def _inverse(order: Sequence[int]) -> List[int]:
    inverse = [0] * len(order)
    for j, i in enumerate(order):
        inverse[i] = j
    return inverse


def cka_from_grams(S: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """CKA matrix from two outputs of :func:`normalized_grams` (same n, estimator, dtype)."""
    if S.shape[1] != T.shape[1]:
        raise ValueError(f"Grams of different batch sizes: {S.shape[1]} vs {T.shape[1]} entries")
    with _autocast_off(S.device):
        return S @ T.transpose(0, 1)


def cka_matrix(xs: Layers, ys: Optional[Layers] = None, kernel: str = "linear",
               debiased: bool = False, *, rbf_threshold: float = 0.5, rbf_sigma2=None,
               dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``len(xs) x len(ys)`` CKA matrix (``ys=None``: the symmetric ``xs`` x ``xs`` matrix).

    Differentiable w.r.t. every input that requires grad. ``rbf_sigma2`` (RBF only): a fixed
    squared bandwidth (scalar, or one per layer; same value used for ``ys``) instead of the
    detached median heuristic.
    """
    dtype = _compute_dtype(_as_list(xs) + ([] if ys is None else _as_list(ys)), dtype)
    kw = dict(rbf_threshold=rbf_threshold, rbf_sigma2=rbf_sigma2, dtype=dtype)
    S = normalized_grams(xs, kernel, debiased, **kw)
    T = S if ys is None else normalized_grams(ys, kernel, debiased, **kw)
    return cka_from_grams(S, T)


def cka(x: torch.Tensor, y: torch.Tensor, kernel: str = "linear", debiased: bool = False,
        **kw) -> torch.Tensor:
    """CKA between two single layers (a 0-d tensor)."""
    return cka_matrix([x], [y], kernel, debiased, **kw)[0, 0]


def min_cka_samples(estimator: str) -> int:
    """Samples one batch needs for a CKA value: the unbiased HSIC divides by n - 3, the biased by n - 1."""
    return 4 if estimator == 'debiased' else 2


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
    dtype = _compute_dtype(_as_list(xs) + ([] if ys is None else _as_list(ys)), dtype)
    kw = dict(rbf_threshold=rbf_threshold, rbf_sigma2=rbf_sigma2, dtype=dtype)
    with torch.no_grad():
        fx, sx = _raw_unit_rows(xs, kernel, debiased, **kw)
        n = _batch_size(_as_list(xs))
        if ys is None:
            fy, sy = fx, sx
        else:
            if _batch_size(_as_list(ys)) != n:
                raise ValueError(f"xs and ys have different batch sizes: {n} vs {_batch_size(_as_list(ys))}")
            fy, sy = _raw_unit_rows(ys, kernel, debiased, **kw)
        c = _hsic_normaliser(n, debiased)
        with _autocast_off(fx.device):
            cross = (fx @ fy.transpose(0, 1)).double() * sx[:, None] * sy[None, :] / c
            self_x = (fx * fx).sum(1).double() * sx * sx / c
            self_y = self_x if ys is None else (fy * fy).sum(1).double() * sy * sy / c
    return cross, self_x, self_y


def _raw_unit_rows(xs: Layers, kernel: str, debiased: bool, *, rbf_threshold: float, rbf_sigma2,
                   dtype: Optional[torch.dtype]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(rows, norms) in layer order: each centred kernel flattened and normalised to unit
    Frobenius norm, and that norm in raw feature units (float64), so that ``rows[i] * norms[i]``
    is layer i's centred kernel of the raw features."""
    Kc, scale, order = _centred_kernels(xs, kernel, debiased, rbf_threshold, rbf_sigma2, dtype)
    with _autocast_off(Kc.device):
        flat = Kc.reshape(Kc.shape[0], -1)
        norms = torch.linalg.vector_norm(flat, dim=1, keepdim=True)
        rows = flat / norms.clamp_min(_NORM_EPS)
        norms = norms.reshape(-1).double()
        if scale is not None:
            norms = norms / torch.cat(scale).reshape(-1).double() ** 2
        inverse = torch.tensor(_inverse(order), device=rows.device)
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
        if kernel not in KERNELS:
            raise ValueError(f"unknown CKA kernel {kernel!r}; valid: {', '.join(KERNELS)}")
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
