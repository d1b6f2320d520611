"""CRD loss (Tian et al., ICLR 2020): embeddings + memory bank + NCE objective (Eq. 18)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .memory import ContrastMemory

EPS = 1e-7


class Embed(nn.Module):
    """Linear projection to `dim_out`, then L2 normalisation."""

    def __init__(self, dim_in: int, dim_out: int = 128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x):
        return F.normalize(self.linear(x.reshape(x.shape[0], -1)), dim=1)


def contrast_loss(x: torch.Tensor, n_data: int) -> torch.Tensor:
    """NCE loss for x = (b, K+1) normalised scores, positive in column 0, noise P_n = 1/n_data:
        -(1/b) * sum_n [ log(P_pos / (P_pos + K P_n)) + sum_j log(K P_n / (P_neg_j + K P_n)) ]
    """
    b, m = x.shape[0], x.shape[1] - 1
    mpn = m / float(n_data)
    p_pos = x[:, 0]
    p_neg = x[:, 1:]
    log_d1 = torch.log(p_pos / (p_pos + mpn + EPS))
    log_d0 = torch.log(mpn / (p_neg + mpn + EPS))
    return -(log_d1.sum() + log_d0.sum()) / b


class CRDLoss(nn.Module):
    """Both symmetric halves: student anchor against the teacher memory and vice versa."""

    def __init__(self, s_dim: int, t_dim: int, feat_dim: int, n_data: int, nce_k: int,
                 nce_t: float = 0.07, nce_m: float = 0.5):
        super().__init__()
        self.n_data = int(n_data)
        self.embed_s = Embed(s_dim, feat_dim)
        self.embed_t = Embed(t_dim, feat_dim)
        self.contrast = ContrastMemory(feat_dim, n_data, nce_k, nce_t, nce_m)

    def forward(self, f_s, f_t, idx, contrast_idx: Optional[torch.Tensor] = None):
        v_s = self.embed_s(f_s)
        v_t = self.embed_t(f_t)
        out_s, out_t = self.contrast(v_s, v_t, idx, contrast_idx)
        return contrast_loss(out_s, self.n_data) + contrast_loss(out_t, self.n_data)
