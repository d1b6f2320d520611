"""Contiguous grouping: exact DP vs brute force, planted structure, splits, stability, JSON."""
import itertools
import json
import math
from collections import Counter

import numpy as np
import pytest
import torch

from cka.grouping import (auto_n_groups, boundary_stability, contiguous_groups, even_split,
                               group_boundaries, grouping_objective, groups_from_sizes,
                               groups_to_json, proportional_split, random_split, silhouette)


def brute_force(S, n, objective):
    """Best objective over all C(L-1, n-1) contiguous partitions (independent of the DP)."""
    L = S.shape[0]
    best = -np.inf
    for cuts in itertools.combinations(range(1, L), n - 1):
        edges = (0,) + cuts + (L,)
        total = 0.0
        for a, b in zip(edges[:-1], edges[1:]):
            blk = S[a:b, a:b]
            m = b - a
            if objective == "kmeans":
                total += blk.sum() / m
            else:
                total += 0.0 if m == 1 else (blk.sum() - np.trace(blk)) / (m - 1)
        best = max(best, total)
    return best


def _check_partition(groups, L, n):
    assert len(groups) == n
    assert [i for g in groups for i in g] == list(range(L))
    assert all(len(g) >= 1 and g == list(range(g[0], g[-1] + 1)) for g in groups)


@pytest.mark.parametrize("objective", ["kmeans", "offdiag"])
def test_dp_equals_brute_force(objective):
    rng = np.random.default_rng(0)
    for L in (1, 2, 3, 5, 7, 10):
        for _ in range(3):
            A = rng.uniform(-0.3, 1.0, size=(L, L))
            S = (A + A.T) / 2
            np.fill_diagonal(S, 1.0)
            for n in sorted({1, 2, 3, L // 2, L - 1, L} & set(range(1, L + 1))):
                groups = contiguous_groups(S, n, objective)
                _check_partition(groups, L, n)
                assert grouping_objective(S, groups, objective) == pytest.approx(
                    brute_force(S, n, objective), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("objective", ["kmeans", "offdiag"])
def test_planted_blocks_recovered(objective):
    rng = np.random.default_rng(1)
    sizes = [3, 5, 2, 6]
    L = sum(sizes)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    S = np.where(labels[:, None] == labels[None, :], 0.85, 0.2) + rng.uniform(-0.05, 0.05, (L, L))
    S = (S + S.T) / 2
    np.fill_diagonal(S, 1.0)
    assert contiguous_groups(S, 4, objective) == groups_from_sizes(sizes)
    assert auto_n_groups(S, objective=objective) == 4
    # torch input accepted
    assert contiguous_groups(torch.tensor(S), 4, objective) == groups_from_sizes(sizes)


@pytest.mark.parametrize("objective", ["kmeans", "offdiag"])
def test_no_singletons_on_smooth_decay(objective):
    for L, n in ((16, 4), (8, 4), (12, 3), (20, 6)):
        idx = np.arange(L)
        S = np.exp(-np.abs(idx[:, None] - idx[None, :]) / 5.0)
        groups = contiguous_groups(S, n, objective)
        _check_partition(groups, L, n)
        assert min(len(g) for g in groups) >= 2, groups


def test_group_count_errors():
    S = np.eye(5)
    with pytest.raises(ValueError, match=r"number of layers \(5\)"):
        contiguous_groups(S, 6)
    with pytest.raises(ValueError, match=">= 1"):
        contiguous_groups(S, 0)
    with pytest.raises(ValueError, match="objective"):
        contiguous_groups(S, 2, objective="mean")
    with pytest.raises(ValueError, match="square"):
        contiguous_groups(np.ones((3, 4)), 2)
    with pytest.raises(ValueError, match="number of layers"):
        even_split(3, 4)
    with pytest.raises(ValueError, match="number of layers"):
        proportional_split(2, [[0], [1], [2]])


def test_even_split():
    for L in range(1, 30):
        for n in range(1, L + 1):
            groups = even_split(L, n)
            _check_partition(groups, L, n)
            sizes = [len(g) for g in groups]
            assert max(sizes) - min(sizes) <= 1
            assert sizes == sorted(sizes, reverse=True)
    assert [len(g) for g in even_split(10, 4)] == [3, 3, 2, 2]


def test_proportional_split():
    # exact proportions are reproduced
    assert [len(g) for g in proportional_split(8, [2, 4, 6, 4])] == [1, 2, 3, 2]
    assert [len(g) for g in proportional_split(4, groups_from_sizes([2, 4, 6, 4]))] == [1, 1, 1, 1]
    # largest remainder: quotas 10*[3,3,4]/10 = exact; 7*[3,3,4]/10 = 2.1, 2.1, 2.8 -> 2, 2, 3
    assert [len(g) for g in proportional_split(7, [3, 3, 4])] == [2, 2, 3]
    # minimum one layer per group even for a tiny teacher group
    assert [len(g) for g in proportional_split(4, [1, 14, 1])] == [1, 2, 1]
    rng = np.random.default_rng(2)
    for _ in range(200):
        t = list(rng.integers(1, 8, size=rng.integers(1, 6)))
        Ls = int(rng.integers(len(t), 25))
        groups = proportional_split(Ls, t)
        _check_partition(groups, Ls, len(t))
        sizes = np.array([len(g) for g in groups])
        quota = Ls * np.array(t) / sum(t)
        # each size within one layer of its quota unless lifted to the minimum of 1
        assert np.all((np.abs(sizes - quota) < 1.0 + 1e-9) | (sizes == 1))


def test_silhouette_and_auto_rule():
    L = 12
    S = np.full((L, L), 0.9)                    # no structure at all
    assert auto_n_groups(S) == 1
    n, scores = auto_n_groups(np.eye(3) * 0.5 + 0.5, return_scores=True)
    assert set(scores) == {2}
    labels = np.repeat([0, 1, 2], [4, 4, 4])
    S = np.where(labels[:, None] == labels[None, :], 0.9, 0.1)
    assert silhouette(S, groups_from_sizes([4, 4, 4])) > silhouette(S, groups_from_sizes([6, 6]))
    assert auto_n_groups(S, max_groups=2) == 2
    assert auto_n_groups(S) == 3
    assert auto_n_groups(np.ones((2, 2))) == 1


def test_boundary_stability():
    rng = np.random.default_rng(3)
    sizes = [4, 4, 4]
    labels = np.repeat([0, 1, 2], sizes)
    base = np.where(labels[:, None] == labels[None, :], 0.8, 0.3)
    sims = []
    for _ in range(5):
        A = base + rng.uniform(-0.05, 0.05, base.shape)
        sims.append((A + A.T) / 2)
    out = boundary_stability(sims, 3)
    assert out["groups"] == groups_from_sizes(sizes)
    assert out["boundaries"] == [4, 8] == group_boundaries(out["groups"])
    assert out["exact_match"] == 1.0 and out["agreement"] == [1.0, 1.0]
    assert len(out["boundary_frequency"]) == 11
    assert out["boundary_frequency"][3] == 1.0 and out["boundary_frequency"][7] == 1.0
    assert sum(out["boundary_frequency"]) == 2.0
    # one batch disagrees: its boundary shows up with frequency 1/6
    odd = np.where(np.repeat([0, 1, 2], [2, 6, 4])[:, None] == np.repeat([0, 1, 2], [2, 6, 4])[None, :],
                   0.95, 0.1)
    out = boundary_stability(sims + [odd], 3, pooled=np.mean(sims, axis=0))
    assert out["boundaries"] == [4, 8]
    assert out["agreement"][0] == pytest.approx(5 / 6) and out["agreement"][1] == 1.0
    assert out["boundary_frequency"][1] == pytest.approx(1 / 6)
    assert out["exact_match"] == pytest.approx(5 / 6)
    json.dumps(out)


def test_groups_to_json():
    S = np.eye(4) * 0.5 + 0.5
    names = ["conv1", "layer1.0", "layer2.0", "layer3.0"]
    groups = contiguous_groups(S, 2)
    rec = groups_to_json(names, torch.tensor(S), groups, settings={"kernel": "linear", "n_groups": 2},
                         stability=boundary_stability([S, S], 2))
    text = json.dumps(rec)
    back = json.loads(text)
    assert back["layer_names"] == names and back["groups"] == groups
    assert back["group_names"] == [[names[i] for i in g] for g in groups]
    assert np.allclose(back["matrix"], S)
    assert back["settings"]["n_groups"] == 2 and back["stability"]["exact_match"] == 1.0
    with pytest.raises(ValueError):
        groups_to_json(names[:3], S, groups)
    with pytest.raises(ValueError):
        groups_to_json(names, S, [[0, 1], [3]])


def test_pipeline_accumulator_to_groups():
    """Teacher-like layers from two latent sources -> pooled minibatch CKA -> groups, stability."""
    from cka import CKAAccumulator
    g = torch.Generator().manual_seed(5)
    acc = CKAAccumulator("linear", debiased=True, keep_per_batch=True)
    for _ in range(3):
        a = torch.randn(32, 20, generator=g)
        b = torch.randn(32, 20, generator=g)
        layers = [a + 0.3 * torch.randn(32, 20, generator=g) for _ in range(3)] + \
                 [(b + 0.3 * torch.randn(32, 20, generator=g)).reshape(32, 5, 2, 2) for _ in range(3)]
        acc.update(layers)
    pooled = acc.matrix()
    assert contiguous_groups(pooled, 2) == [[0, 1, 2], [3, 4, 5]]
    stab = boundary_stability(acc.per_batch, 2, pooled=pooled)
    assert stab["exact_match"] == 1.0 and stab["boundaries"] == [3]
    json.dumps(groups_to_json([f"l{i}" for i in range(6)], pooled, stab["groups"], stability=stab))


# --- random contiguous teacher groups (the null of --cka_teacher_split random) ---



def _all_contiguous_partitions(L, n):
    """Brute-force oracle: every way to cut 0..L-1 into n non-empty runs (C(L-1, n-1) of them)."""
    out = []
    for cuts in itertools.combinations(range(1, L), n - 1):
        bounds = (0,) + cuts + (L,)
        out.append(tuple(tuple(range(a, b)) for a, b in zip(bounds, bounds[1:])))
    return out


@pytest.mark.parametrize("L,n", [(28, 4), (10, 1), (7, 7), (5, 2)])
def test_random_split_is_contiguous_covers_every_layer_once_with_n_groups(L, n):
    for seed in range(20):
        groups = random_split(L, n, seed)
        assert len(groups) == n and all(len(g) >= 1 for g in groups)
        assert [i for g in groups for i in g] == list(range(L))  # every layer once, in order
        assert all(g == list(range(g[0], g[-1] + 1)) for g in groups)  # contiguous


def test_random_split_is_reproducible_from_the_seed_and_varies_across_seeds():
    assert random_split(28, 4, 3) == random_split(28, 4, 3)
    partitions = {tuple(map(tuple, random_split(28, 4, seed))) for seed in range(5)}
    assert len(partitions) == 5  # C(27, 3) = 2925 partitions: five seeds, five different draws


def test_random_split_is_uniform_over_contiguous_partitions():
    L, n, draws = 6, 3, 5000
    oracle = _all_contiguous_partitions(L, n)
    assert len(oracle) == math.comb(L - 1, n - 1) == 10
    counts = Counter(tuple(map(tuple, random_split(L, n, seed))) for seed in range(draws))
    assert set(counts) == set(oracle)
    expected = draws / len(oracle)
    chi2 = sum((counts[p] - expected) ** 2 / expected for p in oracle)
    assert chi2 < 21.67  # chi-square, 9 degrees of freedom, 99th percentile


def test_random_split_rejects_more_groups_than_layers():
    with pytest.raises(ValueError, match="n must be <="):
        random_split(3, 4, 0)


def test_group_values_reduce_each_paired_block():
    """Each paired block's mean, min and max, against numpy on the block cut out by hand; the
    same with the block sizes given; the plan order's masks on a permuted matrix give the same."""
    from cka import block_masks, group_values, inverse_order
    rng = np.random.default_rng(7)
    matrix = rng.uniform(-0.2, 1.0, size=(5, 6))
    student, teacher = [[0, 1], [2], [3, 4]], [[0], [1, 2, 3], [4, 5]]
    masks = block_masks(student, teacher)
    assert masks.shape == (3, 5, 6) and masks.sum().item() == 2 * 1 + 1 * 3 + 2 * 2
    blocks = [matrix[np.ix_(s, t)] for s, t in zip(student, teacher)]
    expected = {'mean': [b.mean() for b in blocks], 'min': [b.min() for b in blocks], 'max': [b.max() for b in blocks]}
    tensor = torch.tensor(matrix)
    for reduce, values in expected.items():
        np.testing.assert_allclose(group_values(tensor, masks, reduce).numpy(), values, rtol=1e-12)
    sizes = masks.sum(dim=(1, 2)).double()
    np.testing.assert_allclose(group_values(tensor, masks, 'mean', sizes=sizes).numpy(), expected['mean'], rtol=1e-12)
    rows, cols = [4, 0, 2, 1, 3], [5, 3, 0, 1, 4, 2]
    assert [rows[j] for j in inverse_order(rows)] == [0, 1, 2, 3, 4]
    permuted = group_values(tensor[rows][:, cols], masks[:, rows][:, :, cols], 'max')
    np.testing.assert_allclose(permuted.numpy(), expected['max'], rtol=1e-12)
    with pytest.raises(ValueError, match='2 student groups for 3 teacher groups'):
        block_masks(student[:2], teacher)
    with pytest.raises(ValueError, match='unknown reduce'):
        group_values(tensor, masks, 'median')
