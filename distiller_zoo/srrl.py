"""Softmax Regression Representation Learning (Yang et al., ICLR 2021) -- `--distill srrl`.

The student's pooled feature `feats[-1]` goes through a connector (1x1 conv on the 1x1 map, i.e.
a bias-free linear map C_s -> C_t, then BN and ReLU); the result h must match the teacher's pooled
feature, and the teacher's (frozen) classifier applied to h must match the teacher's logits:
    loss = MSE(h, f_t[-1]) + MSE(W_t h + b_t, z_t)        (SimKD repo implementation, beta = 1)
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .base import Distiller, DistillContext
from ._common import (SmallBatchSafeBatchNorm2d, frozen_linear, move_to, student_teacher_shapes,
                      teacher_classifier)


class SRRLConnector(nn.Module):
    def __init__(self, s_n: int, t_n: int):
        super().__init__()
        self.conv = nn.Conv2d(s_n, t_n, kernel_size=1, bias=False)
        self.bn = SmallBatchSafeBatchNorm2d(t_n)

    def forward(self, f):
        x = f.reshape(f.shape[0], -1, 1, 1)
        return F.relu(self.bn(self.conv(x))).reshape(f.shape[0], -1)


class SRRLDistiller(Distiller):
    published_beta = 1.0
    needs_feats = True

    def __init__(self, ctx: DistillContext):
        super().__init__(ctx)
        s_shapes, t_shapes = student_teacher_shapes(ctx)
        if len(s_shapes[-1]) != 1 or len(t_shapes[-1]) != 1:
            raise ValueError("srrl needs feats[-1] to be the pooled feature vector of each network")
        s_n, t_n = s_shapes[-1][0], t_shapes[-1][0]
        cls = teacher_classifier(ctx.teacher)
        if cls.in_features != t_n:
            raise ValueError(f"teacher classifier takes {cls.in_features} inputs, "
                             f"teacher feats[-1] has {t_n}")
        self.connector = SRRLConnector(s_n, t_n)
        move_to(self, ctx)

    def forward(self, student_out, teacher_out, batch):
        h = self.connector(student_out.feats[-1])
        pred = frozen_linear(h, teacher_classifier(self.teacher))
        return {
            "srrl_feat": F.mse_loss(h, teacher_out.feats[-1].reshape(h.shape[0], -1)),
            "srrl_logit": F.mse_loss(pred, teacher_out.logits),
        }
