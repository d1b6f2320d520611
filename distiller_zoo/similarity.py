"""Similarity-Preserving KD (Tung & Mori, ICCV 2019) -- `--distill similarity`.

On the last stage map `feats[-2]` (flattened per sample):
    G = F F^T (b x b), each row L2-normalised,
    loss = ||G_t - G_s||_F^2 / b^2
"""
from __future__ import annotations

import torch.nn.functional as F

from .base import Distiller, DistillContext


def sp_loss(f_s, f_t):
    b = f_s.shape[0]
    f_s = f_s.reshape(b, -1)
    f_t = f_t.reshape(b, -1)
    g_s = F.normalize(f_s @ f_s.t())
    g_t = F.normalize(f_t @ f_t.t())
    return (g_t - g_s).pow(2).sum() / (b * b)


class SimilarityDistiller(Distiller):
    published_beta = 3000.0
    needs_feats = True

    def __init__(self, ctx: DistillContext):
        super().__init__(ctx)

    def forward(self, student_out, teacher_out, batch):
        return {"sp": sp_loss(student_out.feats[-2], teacher_out.feats[-2])}
