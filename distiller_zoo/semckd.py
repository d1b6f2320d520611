"""Cross-Layer Distillation with Semantic Calibration (Chen et al., AAAI 2021) -- `--distill semckd`.

Every student map of `feats[1:-1]` is matched to every teacher map of `feats[1:-1]`:
  * value: Proj_ij (1x1 conv-BN-ReLU-3x3 conv-BN-ReLU-1x1 conv, no biases) of the student map,
    compared with the teacher map after pooling the larger of the two to the smaller size;
    per-sample loss l[n, i, j] = mean_{c,h,w} (Proj_ij(s_i) - t_j)^2
  * weight: per-sample attention alpha[n, i, :] = softmax_j(<q_i(n), k_j(n)> / soft), where
    q_i = MLP_i(row n of S_i S_i^T), k_j = MLP_j(row n of T_j T_j^T) (Gram matrices of the
    flattened maps over the batch), MLP = Linear(B, 2B/4)-ReLU-Linear(2B/4, B/4)-L2norm, B the
    configured --batch_size.
  * loss = sum_{n,i,j} alpha[n,i,j] l[n,i,j] / (b * num_student_maps)

`-s/--soft` is the attention temperature (SimKD repo: "attention scale of SemCKD", default 1.0).

Short batches: the reference code skipped any batch smaller than --batch_size because the query/key
MLPs take a Gram-matrix row of length B. Here a batch of b < B samples is computed with its own
b x b Gram matrices, whose rows are zero-padded to length B (equivalently, only the first b input
columns of the MLPs' first layers are used); the loss is normalised by the actual b. A batch larger
than --batch_size is an error.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Distiller, DistillContext
from ._common import align_spatial, move_to, require_map, student_teacher_shapes


class MLPEmbed(nn.Module):
    """Linear -> ReLU -> Linear -> L2 normalisation."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear1 = nn.Linear(dim_in, 2 * dim_out)
        self.linear2 = nn.Linear(2 * dim_out, dim_out)

    def forward(self, x):
        x = F.relu(self.linear1(x.reshape(x.shape[0], -1)))
        return F.normalize(self.linear2(x), dim=1)


class Proj(nn.Module):
    """Channel alignment: 1x1 conv (C_s -> 2C_t) BN ReLU, 3x3 conv BN ReLU, 1x1 conv (-> C_t)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        mid = 2 * c_out
        self.regressor = nn.Sequential(
            nn.Conv2d(c_in, mid, kernel_size=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, c_out, kernel_size=1, bias=False),
        )

    def forward(self, x):
        return self.regressor(x)


def gram_rows(f: torch.Tensor, width: int) -> torch.Tensor:
    """b x b Gram matrix of the flattened maps, rows zero-padded to `width` columns.

    At least float32, also under --amp: bf16 sums over tens of thousands of features lose most
    digits (and torch's CPU bf16 GEMM crashed with SIGFPE on a 24 x 65536 operand)."""
    b = f.shape[0]
    with torch.autocast(device_type=f.device.type, enabled=False):
        flat = f.reshape(b, -1)
        flat = flat.to(torch.promote_types(flat.dtype, torch.float32))  # float64 stays float64
        gram = flat @ flat.t()
    if width > b:
        gram = F.pad(gram, (0, width - b))
    return gram


class SemCKDDistiller(Distiller):
    """The attention MLPs are sized by --batch_size (as in the SemCKD code)."""

    published_beta = 400.0
    needs_feats = True
    factor = 4

    @classmethod
    def add_options(cls, parser) -> None:
        parser.add_argument('-s', '--soft', type=float, default=1.0, help='attention scale of SemCKD')

    def __init__(self, ctx: DistillContext):
        super().__init__(ctx)
        self.batch_size = int(ctx.opt.batch_size)
        self.soft = float(ctx.opt.soft)
        if self.batch_size < self.factor:
            raise ValueError(f"semckd needs --batch_size >= {self.factor}, got {self.batch_size}")
        s_shapes, t_shapes = student_teacher_shapes(ctx)
        s_maps, t_maps = s_shapes[1:-1], t_shapes[1:-1]
        if not s_maps or not t_maps:
            raise ValueError("semckd needs at least one intermediate feature map per network")
        for i, s in enumerate(s_maps):
            require_map(s, f"student feats[{i + 1}]")
        for j, t in enumerate(t_maps):
            require_map(t, f"teacher feats[{j + 1}]")
        self.s_len, self.t_len = len(s_maps), len(t_maps)
        dim = self.batch_size
        self.query = nn.ModuleList([MLPEmbed(dim, dim // self.factor) for _ in s_maps])
        self.key = nn.ModuleList([MLPEmbed(dim, dim // self.factor) for _ in t_maps])
        self.proj = nn.ModuleList([
            nn.ModuleList([Proj(s[0], t[0]) for t in t_maps]) for s in s_maps])
        move_to(self, ctx)

    def attention(self, g_s, g_t):
        b = g_s[0].shape[0]
        if b > self.batch_size:
            raise ValueError(f"semckd: batch of {b} exceeds --batch_size {self.batch_size} "
                             "that sizes its attention layers")
        q = torch.stack([m(gram_rows(f, self.batch_size)) for m, f in zip(self.query, g_s)], 1)
        k = torch.stack([m(gram_rows(f, self.batch_size)) for m, f in zip(self.key, g_t)], 2)
        return F.softmax(torch.bmm(q, k) / self.soft, dim=-1)  # (b, s_len, t_len)

    def forward(self, student_out, teacher_out, batch):
        g_s = student_out.feats[1:-1]
        g_t = teacher_out.feats[1:-1]
        b = g_s[0].shape[0]
        weight = self.attention(g_s, g_t)
        rows = []
        for i, f_s in enumerate(g_s):
            cols = []
            for j, f_t in enumerate(g_t):
                src, tgt = align_spatial(f_s, f_t)
                diff = self.proj[i][j](src) - tgt
                cols.append(diff.pow(2).reshape(b, -1).mean(1))
            rows.append(torch.stack(cols, 1))
        ind_loss = torch.stack(rows, 1)  # (b, s_len, t_len)
        return {"semckd": (weight * ind_loss).sum() / (b * self.s_len)}
