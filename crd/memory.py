"""Memory bank of CRD (Tian et al., ICLR 2020): one L2-normalised embedding per training sample
for each view (student, teacher), updated with momentum; supplies the K negatives of the NCE loss.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from runtime import collectives


class ContrastMemory(nn.Module):
    """Non-parametric memory of `n_data` x `feat_dim` embeddings per view.

    forward(v_s, v_t, idx, contrast_idx) returns (out_s, out_t), each (b, K+1):
        out_s[n, j] = exp(<memory_t[contrast_idx[n, j]], v_s[n]> / T) / Z_s   (student anchor)
        out_t[n, j] = exp(<memory_s[contrast_idx[n, j]], v_t[n]> / T) / Z_t   (teacher anchor)
    Column 0 of `contrast_idx` is the positive. Z_s, Z_t are fixed from the first batch
    (mean(exp(.)) * n_data, as in the reference code) and kept in buffers, so they are saved.
    In training mode the rows `idx` of both memories are then replaced by
    normalise(m * memory[idx] + (1 - m) * v).

    Distributed (DDP): every rank keeps the whole bank and applies every rank's update. The
    embeddings and indices of all ranks are all-gathered (no gradient) before the momentum update
    (a sample present twice in one global step, from DistributedSampler's padding, is updated
    once, from its first occurrence in rank order), and Z is fixed from the first global batch;
    so the banks stay bitwise identical on every rank, as in one process on the global batch.
    """

    def __init__(self, feat_dim: int, n_data: int, k: int, t: float = 0.07, momentum: float = 0.5):
        super().__init__()
        self.n_data = int(n_data)
        self.k = int(k)
        self.t = float(t)
        self.momentum = float(momentum)
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_s", torch.rand(n_data, feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_t", torch.rand(n_data, feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("z_s", torch.tensor(-1.0))
        self.register_buffer("z_t", torch.tensor(-1.0))

    def sample(self, idx: torch.Tensor) -> torch.Tensor:
        """(b, K+1) indices: the positive `idx` then K uniform draws over the memory."""
        neg = torch.randint(0, self.n_data, (idx.shape[0], self.k), device=idx.device)
        return torch.cat([idx.view(-1, 1), neg], dim=1)

    def forward(self, v_s: torch.Tensor, v_t: torch.Tensor, idx: torch.Tensor,
                contrast_idx: Optional[torch.Tensor] = None):
        device = self.memory_s.device
        idx = idx.to(device=device, dtype=torch.long).view(-1)
        b = v_s.shape[0]
        if idx.shape[0] != b:
            raise ValueError(f"CRD: {idx.shape[0]} sample indices for a batch of {b}")
        if contrast_idx is None:
            contrast_idx = self.sample(idx)
        contrast_idx = contrast_idx.to(device=device, dtype=torch.long)
        if contrast_idx.shape != (b, self.k + 1):
            raise ValueError(f"CRD: contrast indices must be (batch, nce_k + 1) = ({b}, {self.k + 1}) "
                             f"with the positive in column 0, got {tuple(contrast_idx.shape)}")
        flat = contrast_idx.reshape(-1)
        d = self.memory_s.shape[1]
        w_t = self.memory_t.index_select(0, flat).detach().view(b, self.k + 1, d)
        w_s = self.memory_s.index_select(0, flat).detach().view(b, self.k + 1, d)
        out_s = torch.exp(torch.bmm(w_t, v_s.view(b, d, 1)).squeeze(2) / self.t)
        out_t = torch.exp(torch.bmm(w_s, v_t.view(b, d, 1)).squeeze(2) / self.t)

        if self.z_s.item() < 0:
            self.z_s.fill_(_global_mean(out_s) * self.n_data)
        if self.z_t.item() < 0:
            self.z_t.fill_(_global_mean(out_t) * self.n_data)
        out_s = out_s / self.z_s
        out_t = out_t / self.z_t

        if self.training:
            with torch.no_grad():
                if collectives.world_size() > 1:
                    v_s, v_t, idx = _gather_updates(v_s, v_t, idx)
                self._update(self.memory_s, v_s, idx)
                self._update(self.memory_t, v_t, idx)
        return out_s, out_t

    def _update(self, memory: torch.Tensor, v: torch.Tensor, idx: torch.Tensor) -> None:
        pos = memory.index_select(0, idx) * self.momentum + v.detach().to(memory.dtype) * (1 - self.momentum)
        memory.index_copy_(0, idx, pos / pos.norm(dim=1, keepdim=True))


def _global_mean(out: torch.Tensor) -> float:
    """Mean of `out` over every rank's batch (the local mean in one process)."""
    out = out.detach()
    if collectives.world_size() == 1:
        return out.mean().item()
    totals = torch.stack([out.sum().double(), torch.tensor(float(out.numel()), dtype=torch.float64,
                                                           device=out.device)])
    collectives.all_reduce_sum(totals)
    return (totals[0] / totals[1]).item()


def _gather_updates(v_s: torch.Tensor, v_t: torch.Tensor, idx: torch.Tensor):
    """Every rank's (v_s, v_t, idx), concatenated in rank order, each index kept once."""
    v_s, v_t, idx = collectives.gather_rows([v_s.detach(), v_t.detach(), idx])
    unique, inverse = torch.unique(idx, return_inverse=True)
    positions = torch.arange(idx.shape[0], device=idx.device)
    first = torch.full_like(unique, idx.shape[0]).scatter_reduce_(0, inverse, positions, reduce='amin')
    return v_s[first], v_t[first], idx[first]
