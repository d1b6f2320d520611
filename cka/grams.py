"""The Gram products under every CKA value: ``Y Y^T`` of each layer's shifted, scaled features,
one batched product per group of equal-width layers.

Pure torch: this module imports nothing from the project.

A layer's output for a batch of ``n`` samples is flattened per sample to ``X`` (n x p).

* Large common offsets: "Gram of raw features, then centre" cancels digits in float32 (with an
  offset of 1e4 it gives nonsense). Every layer is therefore shifted per column **before** its
  Gram, by a reference built from its first rows (exact zeros for constant columns, exact
  subtractions under a large common offset), and scaled by a power of two so that its largest
  entry among the first rows is of order 1 (no Gram overflow or underflow, whatever the features'
  magnitude; exact). Shift and scale are detached and decided on the device, with no host read or
  data-dependent branch, so a training step never waits for the device and compiles as one
  graph; both fuse with the float32 copy that the Gram product needs anyway (bf16 features are
  upcast in the same pass). The n x n Gram is then centred exactly (`cka.kernels`): a per-column
  shift does not change it.
* The compute dtype is at least float32: float32 for float32 or narrower (bf16/fp16) inputs,
  float64 when an input is float64 (or ``dtype=`` forces one).
* Layers of equal flattened width share one batched Gram product (:func:`width_groups`). Gram
  backward: one product, ``s (dG + dG^T) Y``, with ``Y`` rebuilt from the saved inputs (no float
  copy of the features is kept for the backward).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch

__all__ = ["Layers", "as_list", "compute_dtype", "flatten_features", "width_groups", "group_gram"]

Layers = Union[torch.Tensor, Sequence[torch.Tensor]]

# Rows whose spread around the reference row sets a layer's power-of-two scale (see _scale_and_offset).
_SCALE_ROWS = 8


def as_list(xs: Layers) -> List[torch.Tensor]:
    """One tensor or a non-empty sequence of them, as a list."""
    if isinstance(xs, torch.Tensor):
        return [xs]
    xs = list(xs)
    if not xs:
        raise ValueError("CKA needs at least one layer")
    return xs


def compute_dtype(layers: Sequence[torch.Tensor], dtype: Optional[torch.dtype]) -> torch.dtype:
    """``dtype`` when given, else at least float32: float64 inputs stay float64 (as SemCKD's Gram)."""
    if dtype is not None:
        return dtype
    return torch.float64 if any(x.dtype == torch.float64 for x in layers) else torch.float32


def flatten_features(x: torch.Tensor, n: int) -> torch.Tensor:
    """(n, p) features of a layer, flattened in memory order. CKA does not depend on the order of
    a layer's features, and a channels_last map (--channels_last) flattened in NCHW order would
    be a transposing copy (it cost more than the Gram itself); in memory order it is a view."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        x = x.permute(0, 2, 3, 1)
    return x.reshape(n, -1)


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
    Gram, which a per-column shift does not change. ``s = 2^-e``, ``e`` the binary exponent of the
    layer's largest magnitude among its first rows, keeps the Gram far from float overflow and
    underflow whatever the features' magnitude. Both are detached and decided on the device (no
    host read, no branch); ``s`` is a power of two, so scaling is exact, and CKA is scale
    invariant, so gradients through them are exact too.
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


def group_gram(xs: Sequence[torch.Tensor], dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """(Grams (k, n, n) in ``dtype``, scales (k, 1, 1)) of k flattened (n, p) layers of equal
    width: the Gram of each layer's shifted features times its power-of-two scale (the Gram of the
    raw, column-centred features is ``G / scale^2``). A graph of its own only when a layer needs
    gradients (a teacher's, under no_grad, takes the plain forward)."""
    if torch.is_grad_enabled() and any(x.requires_grad for x in xs):
        return _GroupGram.apply(dtype, *xs)
    with torch.no_grad():
        negated, scale, _ = _negated_stack(xs, dtype)
        return torch.bmm(negated, negated.transpose(1, 2)), scale
