"""Variational Information Distillation (Ahn et al., CVPR 2019) -- `--distill vid`.

For every pair of intermediate maps `feats[1:-1]` (larger map average-pooled to the smaller):
    mu = 1x1conv -> ReLU -> 1x1conv -> ReLU -> 1x1conv (C_s -> C_t -> C_t -> C_t, no bias)
    sigma^2_c = softplus(alpha_c) + eps,   alpha initialised so that sigma^2 = init_pred_var
    loss = mean_{n,c,h,w} 0.5 * ((mu - t)^2 / sigma^2_c + log sigma^2_c)
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .base import Distiller, DistillContext
from ._common import align_spatial, move_to, require_map, student_teacher_shapes


def _conv1x1(c_in, c_out):
    return nn.Conv2d(c_in, c_out, kernel_size=1, bias=False)


class VIDRegressor(nn.Module):
    def __init__(self, c_in: int, c_mid: int, c_out: int, init_pred_var: float = 5.0, eps: float = 1e-5):
        super().__init__()
        self.regressor = nn.Sequential(
            _conv1x1(c_in, c_mid), nn.ReLU(),
            _conv1x1(c_mid, c_mid), nn.ReLU(),
            _conv1x1(c_mid, c_out),
        )
        # inverse softplus of (init_pred_var - eps)
        self.log_scale = nn.Parameter(
            torch.full((c_out,), math.log(math.expm1(init_pred_var - eps))))
        self.eps = eps

    def pred_var(self):
        return F.softplus(self.log_scale) + self.eps

    def forward(self, f_s, f_t):
        f_s, f_t = align_spatial(f_s, f_t)
        mean = self.regressor(f_s)
        var = self.pred_var().view(1, -1, 1, 1)
        return (0.5 * ((mean - f_t).pow(2) / var + torch.log(var))).mean()


class VIDDistiller(Distiller):
    published_beta = 1.0
    needs_feats = True
    init_pred_var = 5.0
    eps = 1e-5

    def __init__(self, ctx: DistillContext):
        super().__init__(ctx)
        s_shapes, t_shapes = student_teacher_shapes(ctx)
        s_maps, t_maps = s_shapes[1:-1], t_shapes[1:-1]
        if min(len(s_maps), len(t_maps)) < 1:
            raise ValueError("VID needs at least one intermediate feature map")
        if len(s_maps) != len(t_maps):
            warnings.warn(f"vid: student has {len(s_maps)} intermediate maps, teacher {len(t_maps)}; "
                          f"pairing the first {min(len(s_maps), len(t_maps))} in order (published behaviour)")
        regs = []
        for i, (s, t) in enumerate(zip(s_maps, t_maps)):
            require_map(s, f"student feats[{i + 1}]")
            require_map(t, f"teacher feats[{i + 1}]")
            regs.append(VIDRegressor(s[0], t[0], t[0], self.init_pred_var, self.eps))
        self.regressors = nn.ModuleList(regs)
        move_to(self, ctx)

    def forward(self, student_out, teacher_out, batch):
        g_s = student_out.feats[1:-1]
        g_t = teacher_out.feats[1:-1]
        return {f"vid{i + 1}": reg(f_s, f_t)
                for i, (reg, f_s, f_t) in enumerate(zip(self.regressors, g_s, g_t))}
