"""FitNets: Hints for Thin Deep Nets (Romero et al., ICLR 2015) -- `--distill hint`.

A convolutional regressor maps the student's `feats[hint_layer]` onto the teacher's, and the loss
is the mean squared error between the two (RepDistiller `HintLoss` + `ConvReg`).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .base import Distiller, DistillContext
from ._common import move_to, pool_to, require_map, student_teacher_shapes


class ConvReg(nn.Module):
    """conv -> BN -> ReLU regressor from a student map (C_s, H_s, W_s) to a teacher map (C_t, H_t, W_t).

    H_s == 2 H_t: 3x3 stride-2 conv; 2 H_s == H_t: 4x4 stride-2 transposed conv; H_s >= H_t:
    conv with kernel (1 + H_s - H_t, 1 + W_s - W_t); otherwise (student map smaller, not by 2x):
    3x3 same-size conv and the teacher map is average-pooled to the student's size (SemCKD/SimKD).
    """

    def __init__(self, s_shape, t_shape, use_relu: bool = True):
        super().__init__()
        s_c, s_h, s_w = s_shape
        t_c, t_h, t_w = t_shape
        self.use_relu = use_relu
        self.pool_teacher_to = None
        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif 2 * s_h == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h and s_w >= t_w:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=1, padding=1)
            self.pool_teacher_to = (s_h, s_w)
        self.bn = nn.BatchNorm2d(t_c)

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.relu(x) if self.use_relu else x

    def target(self, f_t):
        return f_t if self.pool_teacher_to is None else pool_to(f_t, self.pool_teacher_to)


class HintDistiller(Distiller):
    """loss = MSE(ConvReg(f_s[hint_layer]), f_t[hint_layer])."""

    published_beta = 100.0
    needs_feats = True

    @classmethod
    def add_options(cls, parser) -> None:
        parser.add_argument('--hint_layer', default=1, type=int, choices=[0, 1, 2, 3, 4])

    def __init__(self, ctx: DistillContext):
        super().__init__(ctx)
        self.hint_layer = int(ctx.opt.hint_layer)
        s_shapes, t_shapes = student_teacher_shapes(ctx)
        n = min(len(s_shapes), len(t_shapes))
        if not -n <= self.hint_layer < n:
            raise ValueError(f"--hint_layer {self.hint_layer} out of range: the student has "
                             f"{len(s_shapes)} features, the teacher {len(t_shapes)}")
        require_map(s_shapes[self.hint_layer], f"student feats[{self.hint_layer}] (--hint_layer)")
        require_map(t_shapes[self.hint_layer], f"teacher feats[{self.hint_layer}] (--hint_layer)")
        self.regressor = ConvReg(s_shapes[self.hint_layer], t_shapes[self.hint_layer])
        move_to(self, ctx)

    def forward(self, student_out, teacher_out, batch):
        f_s = self.regressor(student_out.feats[self.hint_layer])
        f_t = self.regressor.target(teacher_out.feats[self.hint_layer])
        return {"hint": F.mse_loss(f_s, f_t)}
