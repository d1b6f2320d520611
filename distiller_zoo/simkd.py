"""Knowledge Distillation with the Reused Teacher Classifier (Chen et al., CVPR 2022) -- `--distill simkd`.

The student's last stage map `feats[-2]` is aligned to the teacher's (the larger map is average-
pooled to the smaller spatial size), projected by a bottleneck
    1x1 conv (C_s -> C_t/f) BN ReLU, 3x3 conv (C_t/f -> C_t/f) BN ReLU, 1x1 conv (-> C_t) BN ReLU
(no conv biases, f = -f/--factor, default 2), and trained with loss = MSE(proj, teacher map).
The student's logits are the teacher's (frozen) classifier applied to the global average of the
projection: `student_logits` is overridden, so CE/KD, accuracy and `predict` all use that head.
Published setting: `-c 0 -d 0 -b 1` (the loss above only).

A SimKD student is therefore (student backbone, projector, teacher classifier):
`simkd_inference_state(distiller)` returns the projector and classifier weights with the shapes
needed to rebuild them, and `load_simkd_inference(student, state)` turns a student plus that
state into a standalone module whose `forward(x)` returns the deployed logits.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .base import Distiller, DistillContext
from ._common import (align_spatial, frozen_linear, move_to, pool_to, require_map,
                      student_teacher_shapes, teacher_classifier)


class SimKDProjector(nn.Module):
    def __init__(self, s_n: int, t_n: int, factor: int = 2):
        super().__init__()
        mid = t_n // factor
        if mid < 1:
            raise ValueError(f"simkd: teacher channels {t_n} // factor {factor} is 0")
        self.transfer = nn.Sequential(
            nn.Conv2d(s_n, mid, kernel_size=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, t_n, kernel_size=1, bias=False),
            nn.BatchNorm2d(t_n),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.transfer(x)


def _head(proj: torch.Tensor, classifier) -> torch.Tensor:
    pooled = F.adaptive_avg_pool2d(proj, 1).flatten(1)
    return classifier(pooled)


class SimKDDistiller(Distiller):
    needs_feats = True
    feat_index = -2

    @classmethod
    def add_options(cls, parser) -> None:
        parser.add_argument('-f', '--factor', type=int, default=2, help='factor size of SimKD')

    def __init__(self, ctx: DistillContext):
        super().__init__(ctx)
        self.factor = int(ctx.opt.factor)
        s_shapes, t_shapes = student_teacher_shapes(ctx)
        s_map, t_map = s_shapes[self.feat_index], t_shapes[self.feat_index]
        require_map(s_map, "student feats[-2]")
        require_map(t_map, "teacher feats[-2]")
        cls = teacher_classifier(ctx.teacher)
        if cls.in_features != t_map[0]:
            raise ValueError(f"teacher classifier takes {cls.in_features} inputs, teacher feats[-2] "
                             f"has {t_map[0]} channels")
        self.s_n, self.t_n = int(s_map[0]), int(t_map[0])
        self.target_hw: Tuple[int, int] = (min(s_map[1], t_map[1]), min(s_map[2], t_map[2]))
        self.projector = SimKDProjector(self.s_n, self.t_n, self.factor)
        self._cache: Optional[tuple] = None
        move_to(self, ctx)

    # -- projection, computed once per student forward (BN statistics must not update twice) --
    def _project(self, f_s: torch.Tensor) -> torch.Tensor:
        key = (torch.is_grad_enabled(), self.training)
        c = self._cache
        if c is not None and c[0] is f_s and c[1] == key:
            return c[2]
        out = self.projector(pool_to(f_s, self.target_hw))
        self._cache = (f_s, key, out)
        return out

    def __getstate__(self):  # keep the per-batch cache out of copies / pickles
        state = self.__dict__.copy()
        state["_cache"] = None
        return state

    def classifier(self, pooled: torch.Tensor) -> torch.Tensor:
        return frozen_linear(pooled, teacher_classifier(self.teacher))

    def student_logits(self, student_out):
        return _head(self._project(student_out.feats[self.feat_index]), self.classifier)

    def deploy_state(self) -> dict:
        return simkd_inference_state(self)

    def family_checkpoint_entries(self) -> dict:
        """The SimKD repo's student checkpoints hold the projector's state_dict as 'proj' (same
        keys: transfer.0.weight, ...), which its evaluation code reads."""
        return {'proj': self.projector.state_dict()}

    def forward(self, student_out, teacher_out, batch):
        f_s = student_out.feats[self.feat_index]
        f_t = teacher_out.feats[self.feat_index]
        _, target = align_spatial(f_s, f_t)
        return {"simkd": F.mse_loss(self._project(f_s), target)}


def simkd_inference_state(distiller: SimKDDistiller) -> dict:
    """Everything besides the student's own weights that a SimKD student needs at inference
    (CPU tensors; put it in the checkpoint next to the student's state_dict)."""
    cls = teacher_classifier(distiller.teacher)
    return {
        "method": "simkd",
        "feat_index": distiller.feat_index,
        "s_n": distiller.s_n,
        "t_n": distiller.t_n,
        "factor": distiller.factor,
        "target_hw": list(distiller.target_hw),
        "projector": {k: v.detach().cpu().clone() for k, v in distiller.projector.state_dict().items()},
        "classifier": {
            "weight": cls.weight.detach().cpu().clone(),
            "bias": None if cls.bias is None else cls.bias.detach().cpu().clone(),
        },
    }


class SimKDStudent(nn.Module):
    """Deployed SimKD student: backbone -> feats[-2] -> projector -> avg pool -> teacher classifier."""

    def __init__(self, student: nn.Module, state: dict):
        super().__init__()
        if state.get("method") != "simkd":
            raise ValueError("not a SimKD inference state")
        self.student = student
        self.feat_index = int(state["feat_index"])
        self.target_hw = tuple(state["target_hw"])
        self.projector = SimKDProjector(state["s_n"], state["t_n"], state["factor"])
        self.projector.load_state_dict(state["projector"])
        w, b = state["classifier"]["weight"], state["classifier"]["bias"]
        self.classifier = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
        with torch.no_grad():
            self.classifier.weight.copy_(w)
            if b is not None:
                self.classifier.bias.copy_(b)
        param = next(student.parameters(), None)
        if param is not None:
            self.projector.to(param.device)
            self.classifier.to(param.device)

    def forward(self, x):
        feats, _ = self.student(x, is_feat=True)
        proj = self.projector(pool_to(feats[self.feat_index], self.target_hw))
        return _head(proj, self.classifier)


def load_simkd_inference(student: nn.Module, state: dict) -> SimKDStudent:
    return SimKDStudent(student, state)
