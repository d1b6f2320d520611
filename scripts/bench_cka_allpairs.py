"""Time the all-pairs CKA matrix (one S @ T^T product) against a per-pair loop.

    python scripts/bench_cka_allpairs.py [--batch 64] [--teacher resnet32x4] [--student resnet8x4]

Features: block-level outputs (``model.block_layer_names()``, via ``models.taps.FeatureTap``) of
untrained models on random inputs, computed once under ``no_grad``. Timed: the student x teacher
CKA matrix for each estimator, (a) with ``cka.estimators.cka_matrix`` (each layer's Gram computed once,
equal-shape layers in one batched product, all pairs in one matrix product) and (b) with the
per-pair loop below, which recomputes both Grams for every pair (the baseline). Fastest of
``--repeats`` interleaved runs after one warm-up. Both must agree to 1e-4.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import models  # noqa: E402
from models.taps import FeatureTap  # noqa: E402
from cka.estimators import cka_matrix  # noqa: E402


# ------------------------------------------------------------------ baseline: one pair at a time
def _kernel(x: torch.Tensor, kernel: str, t: float = 0.5) -> torch.Tensor:
    x = x.reshape(x.shape[0], -1).float()
    x = x - x.mean(dim=0, keepdim=True)
    k = x @ x.T
    if kernel == "linear":
        return k
    sq = k.diagonal()
    d = (sq[:, None] + sq[None, :] - 2 * k).clamp_min(0)
    d.fill_diagonal_(0)
    iu = torch.triu_indices(d.shape[0], d.shape[0], 1)
    sigma2 = t ** 2 * torch.quantile(d[iu[0], iu[1]], 0.5)
    return torch.exp(-d / (2 * sigma2))


def _centre(k: torch.Tensor, debiased: bool) -> torch.Tensor:
    n = k.shape[0]
    if not debiased:
        h = torch.eye(n) - 1.0 / n
        return h @ k @ h
    k = k.clone()
    k.fill_diagonal_(0)
    u = k - k.sum(1, keepdim=True) / (n - 2) - k.sum(0, keepdim=True) / (n - 2) \
        + k.sum() / ((n - 1) * (n - 2))
    u.fill_diagonal_(0)
    return u


def cka_pair(x: torch.Tensor, y: torch.Tensor, kernel: str, debiased: bool) -> torch.Tensor:
    kx = _centre(_kernel(x, kernel), debiased)
    ky = _centre(_kernel(y, kernel), debiased)
    return (kx * ky).sum() / ((kx * kx).sum() * (ky * ky).sum()).sqrt()


def per_pair_matrix(xs, ys, kernel, debiased):
    out = torch.empty(len(xs), len(ys))
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            out[i, j] = cka_pair(x, y, kernel, debiased)
    return out


# ------------------------------------------------------------------ timing
def _time_pair(fast, slow, repeats):
    """Fastest of ``repeats`` runs of each, interleaved (so load changes hit both alike)."""
    fast(), slow()  # warm-up
    t_fast, t_slow = [], []
    for _ in range(repeats):
        for fn, out in ((slow, t_slow), (fast, t_fast), (fast, t_fast)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return min(t_fast), min(t_slow)


def block_features(name, num_classes, x):
    model = models.build_model(name, num_classes=num_classes).eval()
    names = model.block_layer_names()
    with torch.no_grad(), FeatureTap(model, names) as tap:
        model(x)
        feats = [f.detach() for f in tap.outputs]
    return names, feats


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default="resnet32x4")
    p.add_argument("--student", default="resnet8x4")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--num_classes", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    x = torch.randn(args.batch, 3, 32, 32)
    t_names, t_feats = block_features(args.teacher, args.num_classes, x)
    s_names, s_feats = block_features(args.student, args.num_classes, x)
    print(f"teacher {args.teacher}: {len(t_feats)} block layers; student {args.student}: "
          f"{len(s_feats)}; batch {args.batch}; CPU threads {args.threads}")
    print(f"teacher shapes: {[tuple(f.shape[1:]) for f in t_feats]}")
    print(f"student shapes: {[tuple(f.shape[1:]) for f in s_feats]}")

    rows = []
    with torch.no_grad():
        for kernel, debiased in (("linear", False), ("linear", True), ("rbf", False)):
            fast = lambda: cka_matrix(s_feats, t_feats, kernel, debiased)
            slow = lambda: per_pair_matrix(s_feats, t_feats, kernel, debiased)
            diff = float((fast() - slow()).abs().max())
            assert diff < 1e-4, f"all-pairs and per-pair disagree by {diff}"
            t_fast, t_slow = _time_pair(fast, slow, args.repeats)
            label = f"{kernel}{' debiased' if debiased else ' biased'}"
            rows.append((label, t_slow, t_fast, diff))

    shape = f"{len(s_feats)}x{len(t_feats)}"
    print(f"\n{'estimator':<16} {'matrix':>7} {'per-pair ms':>12} {'all-pairs ms':>13} {'speed-up':>9} {'max |diff|':>11}")
    for label, t_slow, t_fast, diff in rows:
        print(f"{label:<16} {shape:>7} {t_slow * 1e3:12.1f} {t_fast * 1e3:13.1f} "
              f"{t_slow / t_fast:8.1f}x {diff:11.1e}")
    total_slow = sum(r[1] for r in rows)
    total_fast = sum(r[2] for r in rows)
    print(f"\nratio (per-pair / all-pairs, all estimators): {total_slow / total_fast:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
