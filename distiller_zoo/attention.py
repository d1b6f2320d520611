"""Attention Transfer (Zagoruyko & Komodakis, ICLR 2017) -- `--distill attention`.

RepDistiller formula, p = 2, on every pair of intermediate maps `feats[1:-1]`:
    a(f) = l2_normalize( mean_c f_c^p  flattened over (H, W) )
    loss_l = mean_{n, hw} (a(f_s) - a(f_t))^2
with the larger map average-pooled to the smaller spatial size first.
"""
from __future__ import annotations

import warnings

import torch.nn.functional as F

from .base import Distiller, DistillContext
from ._common import align_spatial, student_teacher_shapes


def attention_map(f, p: int = 2):
    return F.normalize(f.pow(p).mean(1).reshape(f.shape[0], -1))


def at_loss(f_s, f_t, p: int = 2):
    f_s, f_t = align_spatial(f_s, f_t)
    return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


class AttentionDistiller(Distiller):
    """One term per (student, teacher) pair of `feats[1:-1]`, paired in order (zip)."""

    published_beta = 1000.0
    needs_feats = True
    p = 2

    def __init__(self, ctx: DistillContext):
        super().__init__(ctx)
        s_shapes, t_shapes = student_teacher_shapes(ctx)
        n_s, n_t = len(s_shapes) - 2, len(t_shapes) - 2
        if min(n_s, n_t) < 1:
            raise ValueError("attention transfer needs at least one intermediate feature map")
        if n_s != n_t:
            warnings.warn(f"attention: student has {n_s} intermediate maps, teacher {n_t}; "
                          f"pairing the first {min(n_s, n_t)} in order (published behaviour)")
        self.num_pairs = min(n_s, n_t)

    def forward(self, student_out, teacher_out, batch):
        g_s = student_out.feats[1:-1]
        g_t = teacher_out.feats[1:-1]
        return {f"at{i + 1}": at_loss(f_s, f_t, self.p)
                for i, (f_s, f_t) in enumerate(zip(g_s[:self.num_pairs], g_t[:self.num_pairs]))}
