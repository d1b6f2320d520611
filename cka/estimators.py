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
  offset of 1e4 it gives nonsense). A linear-kernel layer keeps its raw Gram only when
  ``trace(K) <= 16 trace(HKH)`` (offset at most ~4x the spread; a trained CIFAR resnet32's block
  outputs measured 1.4-2.3), which costs no copy of the features; any other layer is shifted per column
  **before** the Gram (by a reference built from the first rows: exact zeros for constant
  columns, exact subtractions under a large common offset). The n x n Gram is then double-centred
  (or U-centred) exactly. The compute dtype is at least float32: float32 for float32 or narrower
  (bf16/fp16) inputs, float64 when an input is float64 (or ``dtype=`` forces one), always outside
  autocast. Gram backward: one product, ``(dG + dG^T) Y``. On CPU a wide layer's Gram is summed
  over column chunks (one ``bmm``, see :func:`_gram_product`).
* Each layer's Gram is normalised by its (detached) trace; features so huge or tiny that their
  Gram would overflow or underflow are first rescaled by a detached power of two. CKA is scale
  invariant, so gradients through detached scales are exact.
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
    "cka_from_grams",
    "cka_matrix",
    "cka",
    "hsic_terms",
    "CKAAccumulator",
    "min_cka_samples",
]

KERNELS = ("linear", "rbf")

# Squared-Frobenius floor for a centred, trace-normalised Gram (for non-constant layers that norm
# is of order 1/n or more, so this floor only ever acts on degenerate layers).
_NORM_SQ_EPS = 1e-20
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


# Rows averaged for the per-column shift applied before the Gram (see _shift_reference).
_SHIFT_ROWS = 8


def _compute_dtype(layers: Sequence[torch.Tensor], dtype: Optional[torch.dtype]) -> torch.dtype:
    """``dtype`` when given, else at least float32: float64 inputs stay float64 (as SemCKD's Gram)."""
    if dtype is not None:
        return dtype
    result = torch.float32
    for x in layers:
        if x.is_floating_point():
            result = torch.promote_types(result, x.dtype)
    return result


# Column-chunk width of the CPU Gram product (see _gram_product).
_GRAM_CHUNK = 2048


def _gram_product(y: torch.Tensor) -> torch.Tensor:
    """``y @ y^T`` for (n, p) or (k, n, p) features.

    On CPU a wide 2-D ``y`` (n x p with p >> n, e.g. 64 x 65,536) is cut into ~2048-column
    chunks whose Grams one ``bmm`` computes and a sum adds: the BLAS handles that shape better than
    one n x n output with a very long inner dimension, and the chunked sum is no less accurate
    (shorter running sums). Other shapes and devices take the plain product.
    """
    if y.dim() != 2 or y.device.type != "cpu" or not y.is_contiguous():
        return y @ y.transpose(-1, -2)
    n, p = y.shape
    chunks = p // _GRAM_CHUNK
    while chunks > 1 and p % chunks:
        chunks -= 1
    if chunks < 2:
        return y @ y.transpose(-1, -2)
    blocks = y.view(n, chunks, p // chunks).transpose(0, 1)      # (chunks, n, w), a view
    return torch.bmm(blocks, blocks.transpose(1, 2)).sum(0)


def _shift_reference(x: torch.Tensor) -> torch.Tensor:
    """Per-column shift for (..., n, p) features: ``x_0 + mean_{r < 8}(x_r - x_0)``, (..., 1, p).

    For a constant column it is exactly ``x_0`` (the shifted column is exactly 0), and under a
    large common offset every subtraction is exact (Sterbenz), so the Gram is built from
    offset-free numbers. The exact centring follows on the n x n Gram (double- or U-centring),
    which a per-column shift does not change.
    """
    x0 = x[..., :1, :]
    m = min(_SHIFT_ROWS, x.shape[-2])
    return x0 + (x[..., :m, :] - x0).mean(dim=-2, keepdim=True)


class _Gram(torch.autograd.Function):
    """``Y Y^T`` for (..., n, p) features, with a one-product backward ``(dG + dG^T) Y``.

    Autograd's own backward of ``Y @ Y.T`` treats the two factors as unrelated and takes two
    n x n x p products; this one takes one (the student's CKA backward is mostly this product).
    """

    @staticmethod
    def forward(ctx, y: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(y)
        return _gram_product(y)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return (grad + grad.transpose(-1, -2)) @ y


def _group_grams(flat: List[torch.Tensor], idx: List[int], dtype: torch.dtype, batched: bool,
                 shift: bool = True, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Grams (k, n, n) of the features of the equal-width layers ``idx``.

    ``shift``: subtract the per-column reference of :func:`_shift_reference` first (the safe
    float32 form under a large common offset; it costs one copy of the features). Without it the
    Gram is taken of the raw features, which the caller accepts only when their offset is small.
    ``batched``: stack the group and take one ``bmm`` (few kernel launches: the choice on
    accelerators). Otherwise one ``mm`` per layer (on CPU the batched product gains nothing, and
    stacking costs an extra pass over freshly allocated memory).
    ``scale``: optional (k,) detached factors applied to the (shifted) features.
    """
    if batched:
        Y = torch.stack([flat[i].to(dtype) for i in idx])
        if shift:
            Y = Y.sub_(_shift_reference(Y))     # in place on the fresh stack (no saved values)
        if scale is not None:
            Y = Y * scale.to(dtype)[:, None, None]
        return _Gram.apply(Y)
    grams = []
    for j, i in enumerate(idx):
        y = flat[i].to(dtype)
        if shift:
            y = y - _shift_reference(y)
        if scale is not None:
            y = y * scale[j].to(dtype)
        grams.append(_Gram.apply(y))
    return torch.stack(grams)


def _group_amax(flat: List[torch.Tensor], idx: List[int], dtype: torch.dtype) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([(x - _shift_reference(x)).abs().amax()
                            for x in (flat[i].to(dtype) for i in idx)])


def _in_range(tr: torch.Tensor) -> torch.Tensor:
    """Which Gram traces are far from float overflow/underflow. A zero trace is not: it may be a
    constant layer or an underflow, which the caller tells apart from the features' max-abs."""
    fi = torch.finfo(tr.dtype)
    lo, hi = fi.tiny ** 0.5, fi.max ** 0.75
    return (tr > lo) & (tr < hi)


# A layer's raw ("Gram, then centre") Gram is kept only where trace(K) <= this x trace(HKH), i.e.
# where the features' common offset is at most ~4x their spread: centring then cancels at most
# 4 bits. Measured float32 CKA errors against float64 on the same inputs: 1e-7 to 2e-7 below a
# ratio of 30, up to 1.8e-6 at 50 (debiased, a small CKA value); a trained CIFAR resnet32's block
# outputs have ratios 1.4-2.3, untrained networks in eval mode up to 50. Larger offsets are shifted.
_RAW_OFFSET_MAX = 16.0


def _prepared_grams(xs: Layers, kernel: str, debiased: bool, rbf_threshold: float,
                    rbf_sigma2, dtype: Optional[torch.dtype],
                    batched: Optional[bool] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Centred (or U-centred) kernels of every layer in trace-normalised units.

    Returns ``(Kc, scale2)``: ``Kc`` is (L, n, n) in ``dtype``; ``scale2`` (L,) float64, detached,
    such that the centred kernel of the raw features is ``Kc * scale2`` (linear; 1 for RBF, whose
    kernel values carry no feature scale; 0 for a constant layer).
    """
    xs = _as_list(xs)
    n = _batch_size(xs)
    _check_args(kernel, n, debiased)
    L = len(xs)
    device = xs[0].device
    dtype = _compute_dtype(xs, dtype)
    with _autocast_off(device):
        flat = [_flatten(x, n) for x in xs]
        # Layers with the same flattened width share one batched Gram product.
        by_width: dict = {}
        for i, f in enumerate(flat):
            by_width.setdefault(f.shape[1], []).append(i)
        grams: List[Optional[torch.Tensor]] = [None] * L
        scales: List[Optional[torch.Tensor]] = [None] * L
        if batched is None:
            batched = device.type != "cpu"

        def keep(idx, G, tr, inv_c2):
            # normalise to trace 1 (detached: CKA is scale invariant, so gradients stay exact);
            # a constant layer (trace exactly 0) is divided by 1 and stays exactly 0
            G = G / torch.where(tr > 0, tr, torch.ones_like(tr))[:, None, None]
            s2 = tr.double() * inv_c2
            for j, i in enumerate(idx):
                if i is not None:
                    grams[i], scales[i] = G[j], s2[j]

        for idx in by_width.values():
            if kernel == "linear":
                # the raw Gram needs no shifted copy of the features (the costly part on CPU);
                # centring removes any offset exactly in exact arithmetic, so only the
                # cancellation decides whether a layer's raw Gram may be kept
                G = _group_grams(flat, idx, dtype, batched, shift=False)
                tr = G.detach().diagonal(dim1=1, dim2=2).sum(-1)
                centred_tr = tr - G.detach().sum(dim=(1, 2)) / n
                ok = (_in_range(tr) & (tr <= _RAW_OFFSET_MAX * centred_tr)).tolist()
                keep([i if good else None for i, good in zip(idx, ok)], G, tr,
                     torch.ones_like(tr, dtype=torch.float64))
                idx = [i for i, good in zip(idx, ok) if not good]
                if not idx:
                    continue
            G = _group_grams(flat, idx, dtype, batched)          # (k, n, n), shifted features
            tr = G.detach().diagonal(dim1=1, dim2=2).sum(-1)
            inv_c2 = torch.ones_like(tr, dtype=torch.float64)
            if not bool(_in_range(tr).all()):
                # extreme feature scale (or a constant layer): rescale by a detached power of two
                # (exact) and redo; a constant layer keeps factor 1 and trace 0
                amax = _group_amax(flat, idx, dtype).double()
                e = torch.where(amax > 0, torch.round(torch.log2(amax)), torch.zeros_like(amax))
                G = _group_grams(flat, idx, dtype, batched, scale=torch.pow(2.0, -e))
                tr = G.detach().diagonal(dim1=1, dim2=2).sum(-1)
                inv_c2 = torch.pow(2.0, 2.0 * e)
            keep(idx, G, tr, inv_c2)
        G = torch.stack(grams)                       # (L, n, n), trace 1 (0 if constant)
        scale2 = torch.stack(scales)                 # (L,) float64
        live = (scale2 > 0).to(dtype)                # 0 for constant layers
        if kernel == "rbf":
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
                sigma2 = (raw / scale2.clamp_min(torch.finfo(torch.float64).tiny)).to(dtype)
            sigma2 = sigma2.clamp_min(_SIGMA2_EPS)
            K = torch.exp(-D / (2.0 * sigma2[:, None, None]))
            scale2 = torch.ones_like(scale2)
        else:
            K = G
        Kc = _centre_gram(K, debiased) * live[:, None, None]
    return Kc, scale2 * (live > 0)


def normalized_grams(xs: Layers, kernel: str = "linear", debiased: bool = False, *,
                     rbf_threshold: float = 0.5, rbf_sigma2=None,
                     dtype: Optional[torch.dtype] = None,
                     batched: Optional[bool] = None) -> torch.Tensor:
    """Centred (``debiased=True``: U-centred) kernels, Frobenius-normalised, flattened.

    ``xs``: one batch-first tensor or a list of them (any shapes, same batch size n), each
    flattened per sample. Returns an ``(L, n*n)`` tensor in ``dtype`` (default: float32, or float64
    for float64 inputs); a constant layer's row is
    zero. The CKA between layers ``i`` of ``S`` and ``j`` of ``T`` is ``(S @ T.T)[i, j]``.

    ``batched``: Grams of equal-width layers in one ``bmm`` (default: off the CPU) or one ``mm``
    per layer (default on CPU, where it is faster: no stacking copy). Same values either way.
    """
    Kc, _ = _prepared_grams(xs, kernel, debiased, rbf_threshold, rbf_sigma2, dtype, batched)
    with _autocast_off(Kc.device):
        flat = Kc.reshape(Kc.shape[0], -1)
        norm = (flat * flat).sum(dim=1).clamp_min(_NORM_SQ_EPS).sqrt()
        return flat / norm[:, None]


def cka_from_grams(S: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """CKA matrix from two outputs of :func:`normalized_grams` (same n, estimator, dtype)."""
    if S.shape[1] != T.shape[1]:
        raise ValueError(f"Grams of different batch sizes: {S.shape[1]} vs {T.shape[1]} entries")
    with _autocast_off(S.device):
        return S @ T.transpose(0, 1)


def cka_matrix(xs: Layers, ys: Optional[Layers] = None, kernel: str = "linear",
               debiased: bool = False, *, rbf_threshold: float = 0.5, rbf_sigma2=None,
               dtype: Optional[torch.dtype] = None, batched: Optional[bool] = None) -> torch.Tensor:
    """``len(xs) x len(ys)`` CKA matrix (``ys=None``: the symmetric ``xs`` x ``xs`` matrix).

    Differentiable w.r.t. every input that requires grad. ``rbf_sigma2`` (RBF only): a fixed
    squared bandwidth (scalar, or one per layer; same value used for ``ys``) instead of the
    detached median heuristic. ``batched``: see :func:`normalized_grams`.
    """
    dtype = _compute_dtype(_as_list(xs) + ([] if ys is None else _as_list(ys)), dtype)
    kw = dict(rbf_threshold=rbf_threshold, rbf_sigma2=rbf_sigma2, dtype=dtype, batched=batched)
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
        Kx, sx = _prepared_grams(xs, kernel, debiased, **kw)
        n = Kx.shape[-1]
        fx = Kx.reshape(Kx.shape[0], -1)
        if ys is None:
            fy, sy = fx, sx
        else:
            Ky, sy = _prepared_grams(ys, kernel, debiased, **kw)
            if Ky.shape[-1] != n:
                raise ValueError(f"xs and ys have different batch sizes: {n} vs {Ky.shape[-1]}")
            fy = Ky.reshape(Ky.shape[0], -1)
        c = _hsic_normaliser(n, debiased)
        with _autocast_off(fx.device):
            cross = (fx @ fy.transpose(0, 1)).double() * sx[:, None] * sy[None, :] / c
            self_x = (fx * fx).sum(1).double() * sx * sx / c
            self_y = self_x if ys is None else (fy * fy).sum(1).double() * sy * sy / c
    return cross, self_x, self_y


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
