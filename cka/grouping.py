"""Contiguous grouping of a layer-by-layer similarity (CKA) matrix.

Pure numpy: this module imports nothing from the project. A grouping of ``L`` layers into ``n``
groups is a list of ``n`` lists of consecutive indices covering ``0..L-1`` in order.

Objectives (maximised exactly by dynamic programming, O(n L^2) with 2-D prefix sums). With
``B_g = sum_{i,j in g} S_ij`` (block sum, diagonal included) and ``tr_g = sum_{i in g} S_ii``:

* ``'kmeans'`` (default): ``sum_g B_g / |g|`` — the kernel k-means form. For a PSD similarity it
  equals the within-group "explained" similarity of kernel k-means; a singleton only scores its
  own diagonal entry, so with unit diagonal and positive off-diagonal similarities, merging
  neighbours pays and singleton groups do not take over (unlike "mean of each diagonal block").
* ``'offdiag'``: ``sum_g |g| * mean_{i != j in g} S_ij = sum_g (B_g - tr_g) / (|g| - 1)`` — every
  layer scores the mean off-diagonal similarity within its group. A singleton has no within-group
  pair and scores 0, so it is only chosen when forced (``L < 2n``) or when a layer's similarity to
  any neighbour is <= 0.

Ties are broken deterministically towards earlier boundaries.

The DP is exact: tests compare it with a brute-force search over all C(L-1, n-1) partitions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

__all__ = [
    "OBJECTIVES",
    "contiguous_groups",
    "grouping_objective",
    "even_split",
    "proportional_split",
    "groups_from_sizes",
    "group_boundaries",
    "validate_groups",
    "silhouette",
    "auto_n_groups",
    "boundary_stability",
    "groups_to_json",
    "PairedGroups",
    "pair_groups",
]

OBJECTIVES = ("kmeans", "offdiag")

Groups = List[List[int]]


def _as_matrix(sim) -> np.ndarray:
    if hasattr(sim, "detach"):  # torch tensor, without importing torch
        sim = sim.detach().cpu().double().numpy()
    S = np.asarray(sim, dtype=np.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"similarity matrix must be square, got shape {S.shape}")
    if not np.all(np.isfinite(S)):
        raise ValueError("similarity matrix has non-finite entries")
    return S


def _check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown grouping objective {objective!r}; valid: {', '.join(OBJECTIVES)}")


def _check_n(n, L: int) -> int:
    if isinstance(n, bool) or int(n) != n:
        raise ValueError(f"number of groups must be an integer, got {n!r}")
    n = int(n)
    if n < 1:
        raise ValueError(f"number of groups must be >= 1, got {n}")
    if n > L:
        raise ValueError(f"cannot split {L} layers into {n} groups: n must be <= the number of layers ({L})")
    return n


def _segment_scores(S: np.ndarray, objective: str) -> np.ndarray:
    """W[a, b] = score of the group [a, b) for 0 <= a < b <= L; -inf elsewhere."""
    L = S.shape[0]
    P = np.zeros((L + 1, L + 1))
    P[1:, 1:] = S.cumsum(0).cumsum(1)
    d = np.diag(P)
    block = d[None, :] - P - P.T + d[:, None]          # block[a, b] = sum over [a,b) x [a,b)
    t = np.concatenate([[0.0], np.cumsum(np.diag(S))])
    trace = t[None, :] - t[:, None]
    idx = np.arange(L + 1)
    size = (idx[None, :] - idx[:, None]).astype(np.float64)
    W = np.full((L + 1, L + 1), -np.inf)
    valid = size >= 1
    if objective == "kmeans":
        W[valid] = block[valid] / size[valid]
    else:
        pair = size >= 2
        W[pair] = (block[pair] - trace[pair]) / (size[pair] - 1.0)
        W[size == 1] = 0.0
    return W


def _group_score(S: np.ndarray, g: Sequence[int], objective: str) -> float:
    blk = S[np.ix_(g, g)]
    m = len(g)
    if objective == "kmeans":
        return float(blk.sum() / m)
    if m == 1:
        return 0.0
    return float((blk.sum() - np.trace(blk)) / (m - 1))


def grouping_objective(sim, groups: Sequence[Sequence[int]], objective: str = "kmeans") -> float:
    """Value of ``objective`` for a given grouping (computed directly from the blocks)."""
    _check_objective(objective)
    S = _as_matrix(sim)
    validate_groups(groups, S.shape[0])
    return float(sum(_group_score(S, list(g), objective) for g in groups))


def contiguous_groups(sim, n: int, objective: str = "kmeans") -> Groups:
    """Exact best split of the L layers of ``sim`` (L x L) into ``n`` contiguous groups.

    Maximises ``objective`` (see module docstring) by dynamic programming in O(n L^2).
    Raises ``ValueError`` for ``n < 1`` or ``n > L``.
    """
    _check_objective(objective)
    S = _as_matrix(sim)
    L = S.shape[0]
    n = _check_n(n, L)
    W = _segment_scores(S, objective)
    best = np.full((n + 1, L + 1), -np.inf)
    best[0, 0] = 0.0
    arg = np.zeros((n + 1, L + 1), dtype=np.int64)
    for k in range(1, n + 1):
        cand = best[k - 1][:, None] + W              # cand[a, b]: last group [a, b)
        arg[k] = np.argmax(cand, axis=0)             # first maximum: earliest boundary
        best[k] = cand[arg[k], np.arange(L + 1)]
    groups: Groups = []
    b = L
    for k in range(n, 0, -1):
        a = int(arg[k, b])
        groups.append(list(range(a, b)))
        b = a
    groups.reverse()
    return groups


def validate_groups(groups: Sequence[Sequence[int]], L: int) -> None:
    """Raise ``ValueError`` unless ``groups`` are non-empty, contiguous and cover 0..L-1 in order."""
    flat = [i for g in groups for i in g]
    if not groups or any(len(g) == 0 for g in groups) or flat != list(range(L)):
        raise ValueError(f"groups must be non-empty contiguous runs covering 0..{L - 1} in order, got {groups}")


def groups_from_sizes(sizes: Sequence[int]) -> Groups:
    """Consecutive index groups with the given sizes."""
    out, start = [], 0
    for s in sizes:
        out.append(list(range(start, start + int(s))))
        start += int(s)
    return out


def group_boundaries(groups: Sequence[Sequence[int]]) -> List[int]:
    """First layer index of every group after the first (a boundary lies just before it)."""
    return [int(g[0]) for g in groups[1:]]


def even_split(L: int, n: int) -> Groups:
    """``n`` contiguous groups of ``L`` layers whose sizes differ by at most 1; the larger groups
    come first (e.g. L=10, n=4 -> sizes 3, 3, 2, 2)."""
    n = _check_n(n, int(L))
    q, r = divmod(int(L), n)
    return groups_from_sizes([q + 1 if i < r else q for i in range(n)])


def random_split(L: int, n: int, seed: int) -> Groups:
    """``n`` contiguous groups of ``L`` layers at random, reproducible from ``seed``: the n-1
    boundaries are n-1 distinct positions drawn from the L-1 gaps between layers, so every one of
    the C(L-1, n-1) contiguous partitions is equally likely (the null for the CKA grouping)."""
    n = _check_n(n, int(L))
    gaps = np.random.default_rng(int(seed)).choice(int(L) - 1, size=n - 1, replace=False)
    starts = [0] + sorted(int(g) + 1 for g in gaps) + [int(L)]
    return groups_from_sizes([b - a for a, b in zip(starts, starts[1:])])


def proportional_split(L_s: int, teacher_groups) -> Groups:
    """Split ``L_s`` student layers into as many contiguous groups as the teacher has, with sizes
    proportional to the teacher's group sizes, each >= 1, summing to ``L_s``.

    ``teacher_groups``: the teacher's groups (lists of indices) or just their sizes. Rounding:
    largest remainder (Hamilton) on the quotas ``L_s * t_g / sum(t)``; floors are raised to 1, and
    if that overshoots, groups are shrunk one at a time where they exceed their quota the most
    (ties: the later group). Remaining layers go to the largest remainders (ties: the earlier group).
    """
    sizes = [len(g) if not isinstance(g, (int, np.integer)) else int(g) for g in teacher_groups]
    n = len(sizes)
    if n == 0 or any(s < 1 for s in sizes):
        raise ValueError(f"teacher groups must be non-empty, got sizes {sizes}")
    L_s = int(L_s)
    _check_n(n, L_s)
    total = float(sum(sizes))
    quota = [L_s * s / total for s in sizes]
    alloc = [max(1, int(math.floor(q + 1e-9))) for q in quota]
    while sum(alloc) > L_s:
        cands = [i for i in range(n) if alloc[i] > 1]
        i = max(cands, key=lambda j: (alloc[j] - quota[j], j))
        alloc[i] -= 1
    while sum(alloc) < L_s:
        i = max(range(n), key=lambda j: (quota[j] - alloc[j], -j))
        alloc[i] += 1
    return groups_from_sizes(alloc)


def silhouette(sim, groups: Sequence[Sequence[int]]) -> float:
    """Mean silhouette of a grouping with dissimilarity ``d = 1 - (S + S^T)/2``.

    Per layer i: ``a`` = mean d to the other members of its group, ``b`` = smallest mean d to
    another group; ``s_i = (b - a) / max(a, b)`` (0 if that is 0, and 0 for a singleton).
    """
    S = _as_matrix(sim)
    L = S.shape[0]
    validate_groups(groups, L)
    if len(groups) < 2:
        return 0.0
    D = 1.0 - 0.5 * (S + S.T)
    total = 0.0
    for gi, g in enumerate(groups):
        if len(g) == 1:
            continue
        for i in g:
            a = (D[i, g].sum() - D[i, i]) / (len(g) - 1)
            b = min(D[i, h].mean() for hj, h in enumerate(groups) if hj != gi)
            m = max(a, b)
            total += 0.0 if m <= 0 else (b - a) / m
    return float(total / L)


def auto_n_groups(sim, max_groups: Optional[int] = None, objective: str = "kmeans",
                  return_scores: bool = False):
    """Choose the number of groups by the silhouette of the DP-optimal groupings.

    Rule: for every n in 2..max_groups (default ``min(L - 1, 10)``), take the optimal contiguous
    grouping for ``objective`` and its mean silhouette (:func:`silhouette`, d = 1 - S); return the
    n with the highest silhouette (ties: the smaller n). Return 1 when ``L < 3`` or when no n has a
    positive silhouette (no group structure). ``return_scores=True``: ``(n, {n: silhouette})``.
    """
    S = _as_matrix(sim)
    L = S.shape[0]
    hi = min(L - 1, 10) if max_groups is None else min(int(max_groups), L - 1)
    scores: Dict[int, float] = {}
    for n in range(2, hi + 1):
        scores[n] = silhouette(S, contiguous_groups(S, n, objective))
    best_n, best_s = 1, 0.0
    for n in sorted(scores):
        if scores[n] > best_s + 1e-12:
            best_n, best_s = n, scores[n]
    return (best_n, scores) if return_scores else best_n


def boundary_stability(sims: Sequence, n: int, pooled=None, objective: str = "kmeans") -> dict:
    """How stable the group boundaries are across batches.

    ``sims``: per-batch L x L matrices (e.g. ``CKAAccumulator(keep_per_batch=True).per_batch``).
    ``pooled``: the matrix whose groups are the reference (e.g. the accumulator's pooled matrix);
    default: the element-wise mean of ``sims``. Returns a JSON-friendly dict:

    * ``groups`` / ``boundaries``: the reference grouping and its boundaries (first index of every
      group after the first);
    * ``boundary_frequency``: length L-1, entry i = fraction of batches whose own optimal grouping
      has a boundary between layers i and i+1;
    * ``agreement``: for each reference boundary, the fraction of batches that have it;
    * ``exact_match``: fraction of batches whose grouping equals the reference;
    * ``num_batches``, ``per_batch_boundaries``.
    """
    mats = [_as_matrix(s) for s in sims]
    if not mats:
        raise ValueError("boundary_stability needs at least one per-batch matrix")
    L = mats[0].shape[0]
    if any(m.shape != (L, L) for m in mats):
        raise ValueError("per-batch matrices must all have the same shape")
    ref_mat = np.mean(mats, axis=0) if pooled is None else _as_matrix(pooled)
    ref = contiguous_groups(ref_mat, n, objective)
    ref_b = group_boundaries(ref)
    per_b = [group_boundaries(contiguous_groups(m, n, objective)) for m in mats]
    B = float(len(mats))
    freq = [sum(1 for bs in per_b if (i + 1) in bs) / B for i in range(L - 1)]
    return {
        "groups": ref,
        "boundaries": ref_b,
        "boundary_frequency": freq,
        "agreement": [freq[b - 1] for b in ref_b],
        "exact_match": sum(1 for bs in per_b if bs == ref_b) / B,
        "num_batches": len(mats),
        "per_batch_boundaries": per_b,
    }


def groups_to_json(layer_names: Sequence[str], matrix, groups: Sequence[Sequence[int]],
                   settings: Optional[dict] = None, stability: Optional[dict] = None) -> dict:
    """JSON-serialisable record: ``{layer_names, matrix, groups, group_names, settings, stability}``.

    ``group_names`` lists each group's layer names; ``settings`` (kernel, debiased, objective,
    n_groups, batches, ...) and ``stability`` (from :func:`boundary_stability`) are passed through.
    """
    S = _as_matrix(matrix)
    L = S.shape[0]
    if len(layer_names) != L:
        raise ValueError(f"{len(layer_names)} layer names for a {L} x {L} matrix")
    validate_groups(groups, L)
    groups = [[int(i) for i in g] for g in groups]
    return {
        "layer_names": [str(s) for s in layer_names],
        "matrix": [[float(v) for v in row] for row in S],
        "groups": groups,
        "group_names": [[str(layer_names[i]) for i in g] for g in groups],
        "settings": dict(settings or {}),
        "stability": stability,
    }


@dataclass
class PairedGroups:
    """Student group k paired with teacher group k (``student[k]``, ``teacher[k]``).

    ``record``: the teacher's grouping as written to cka_groups.json (:func:`groups_to_json`),
    whose ``groups`` are the teacher groups in layer order (``teacher`` may be reordered by the
    pairing).
    """

    student: Groups
    teacher: Groups
    record: dict


def pair_groups(num_student_layers: int, teacher_groups: Sequence[Sequence[int]], student_split: str = "even",
                pairing: str = "forward") -> tuple:
    """``(student_groups, teacher_groups)``: the student's ``num_student_layers`` split into as many
    contiguous groups as the teacher has (``student_split``: ``'even'`` sizes, or
    ``'proportional'`` to the teacher's group sizes), paired in order (``pairing='forward'``) or
    first student group with last teacher group (``'reversed'``)."""
    teacher_groups = [list(g) for g in teacher_groups]
    if student_split == "proportional":
        student_groups = proportional_split(num_student_layers, teacher_groups)
    elif student_split == "even":
        student_groups = even_split(num_student_layers, len(teacher_groups))
    else:
        raise ValueError(f"unknown student split {student_split!r}; valid: even, proportional")
    if pairing == "reversed":
        teacher_groups = teacher_groups[::-1]
    elif pairing != "forward":
        raise ValueError(f"unknown pairing {pairing!r}; valid: forward, reversed")
    return student_groups, teacher_groups
