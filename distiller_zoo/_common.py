"""Small helpers shared by the feature-based distillers (private to distiller_zoo)."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

import models


def feature_shapes(model: nn.Module, input_shape: Sequence[int]) -> List[Tuple[int, ...]]:
    """Per-sample shapes (no batch dimension) of `model(x, is_feat=True)` features
    (`models.feature_shapes`: eval mode, no_grad, train/eval mode restored)."""
    shapes = [tuple(int(d) for d in s) for s in models.feature_shapes(model, tuple(input_shape))]
    if not shapes:
        raise ValueError("model returned no features with is_feat=True")
    return shapes


def student_teacher_shapes(ctx):
    return feature_shapes(ctx.student, ctx.input_shape), feature_shapes(ctx.teacher, ctx.input_shape)


def pool_to(f: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    return f if tuple(f.shape[2:]) == tuple(hw) else F.adaptive_avg_pool2d(f, hw)


def align_spatial(f_s: torch.Tensor, f_t: torch.Tensor):
    """Average-pool the larger of two feature maps down to the smaller's spatial size
    (the RepDistiller / SemCKD / SimKD convention for AT, VID, SemCKD, SimKD)."""
    hw = (min(f_s.shape[2], f_t.shape[2]), min(f_s.shape[3], f_t.shape[3]))
    return pool_to(f_s, hw), pool_to(f_t, hw)


def frozen_linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """Apply the teacher's classifier without letting gradients reach its parameters."""
    bias = layer.bias.detach() if layer.bias is not None else None
    return F.linear(x, layer.weight.detach(), bias)


def teacher_classifier(teacher: nn.Module) -> nn.Linear:
    getter = getattr(teacher, "get_classifier", None)
    if getter is None:
        raise TypeError(f"teacher {type(teacher).__name__} has no get_classifier(); "
                        "SRRL/SimKD reuse the teacher's classifier")
    return getter()


def require_map(shape, what: str):
    if len(shape) != 3:
        raise ValueError(f"{what} must be a (C, H, W) feature map, got per-sample shape {tuple(shape)}")


def move_to(module: nn.Module, ctx) -> None:
    device = getattr(ctx, "device", None)
    if device is not None:
        module.to(device)


class SmallBatchSafeBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, in training mode, falls back to its running statistics (without updating
    them) when a batch has a single value per channel (batch of 1 on a 1x1 map), where plain
    BatchNorm raises. Identical to nn.BatchNorm2d otherwise; same state-dict keys."""

    def forward(self, x):
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        return super().forward(x)


class _CompiledOrEager:
    """`fn` compiled as one graph (`torch.compile(fullgraph=True)`, static shapes), and `fn` itself
    for the rest of the run once compiling fails, at the first call or at a recompile (a short
    last batch has other shapes): one line says so, and training goes on with the same values."""

    def __init__(self, fn, what: str):
        self.fn, self.what = fn, what
        self.compiled = torch.compile(fn, fullgraph=True, dynamic=False)

    def __call__(self, *args):
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as exc:  # any compiler failure; a genuine error recurs below, eagerly
                reason = (str(exc).strip().splitlines() or [''])[0][:200]
                print(f'note: {self.what} could not be compiled ({type(exc).__name__}: {reason}); '
                      'it runs eagerly for the rest of the run', flush=True)
                self.compiled = None
        return self.fn(*args)


def compiled_or_eager(fn, enabled: bool, what: str):
    """`fn` compiled with an eager fallback (`_CompiledOrEager`) when `enabled`, else `fn`."""
    return _CompiledOrEager(fn, what) if enabled else fn
