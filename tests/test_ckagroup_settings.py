"""--distill ckagroup end to end under each setting (biased, RBF, stages, proportional split, auto
groups, min/max reduce, sum/weighted aggregate), against independent expectations.

Every run trains on exactly one batch per epoch (30 synthetic images, batch 30) with
--cka_batches 1, so the teacher matrix is the CKA of the whole training set (CKA ignores sample
order): a float64 numpy reference recomputes it from the teacher's layer outputs. The teacher
groups are checked against a brute-force search of every contiguous grouping (and, for `auto`, of
every group count by the documented silhouette rule); the logged group values against the reduce
of the logged matrix's blocks, and the logged loss against the aggregate of 1 - group values.
"""
import itertools
import json

import numpy as np
import pytest
import torch

from conftest import save_teacher
from dataset import build_datasets
from models.taps import FeatureTap
from helper.train import run_student
from test_cka import ref_matrix

TINY = ['--dataset', 'synthetic', '--train_per_class', '3', '--val_per_class', '1', '--batch_size', '30',
        '--num_workers', '0', '--device', 'cpu', '--learning_rate', '0.02', '--skip-validation', '--epochs', '1',
        '--cka_batches', '1', '--no-cka_monitor', '--model_s', 'resnet8', '--distill', 'ckagroup', '-b', '1']
TEACHER = 'resnet14'  # stem + 6 blocks; is_feat: stem + 3 stages
NUM_LAYERS = {('resnet14', 'blocks'): 7, ('resnet14', 'stages'): 4, ('resnet8', 'blocks'): 4, ('resnet8', 'stages'): 4}


@pytest.fixture(scope='module')
def teacher(tmp_path_factory):
    path, model = save_teacher(tmp_path_factory.mktemp('teacher'), TEACHER)
    return path, model.eval()


def teacher_layer_outputs(model, layers):
    train = build_datasets('synthetic', train_per_class=3, augment=False).train
    images = torch.stack([train[i][0] for i in range(len(train))])
    with torch.no_grad():
        if layers == 'stages':
            feats, _ = model(images, is_feat=True)
            return [f.double().numpy() for f in feats[:-1]]
        with FeatureTap(model, model.block_layer_names()) as tap:
            model(images)
            return [f.double().numpy() for f in tap.outputs]


def compositions(total, parts):
    """Every split of range(total) into `parts` contiguous non-empty groups."""
    for cuts in itertools.combinations(range(1, total), parts - 1):
        bounds = (0,) + cuts + (total,)
        yield [list(range(a, b)) for a, b in zip(bounds[:-1], bounds[1:])]


def best_grouping(S, n):
    """Brute force of the kernel k-means objective sum_g (sum of the block) / |g|; ties: earliest."""
    best, best_score = None, -np.inf
    for groups in compositions(len(S), n):
        score = sum(S[np.ix_(g, g)].sum() / len(g) for g in groups)
        if score > best_score + 1e-12:
            best, best_score = groups, score
    return best


def mean_silhouette(S, groups):
    D = 1.0 - 0.5 * (S + S.T)
    values = []
    for gi, g in enumerate(groups):
        for i in g:
            if len(g) == 1:
                values.append(0.0)
                continue
            a = np.mean([D[i, j] for j in g if j != i])
            b = min(np.mean(D[i, h]) for hj, h in enumerate(groups) if hj != gi)
            values.append(0.0 if max(a, b) <= 0 else (b - a) / max(a, b))
    return float(np.mean(values))


def auto_count(S, max_groups):
    best_n, best_s = 1, 0.0
    for n in range(2, min(len(S) - 1, max_groups) + 1):
        score = mean_silhouette(S, best_grouping(S, n))
        if score > best_s + 1e-12:
            best_n, best_s = n, score
    return best_n


def reduce_block(matrix, rows, cols, how):
    block = np.asarray(matrix)[np.ix_(rows, cols)]
    return {'mean': block.mean(), 'min': block.min(), 'max': block.max()}[how]


CASES = {
    'biased_min': dict(args=['--cka_estimator', 'biased', '--cka_reduce', 'min', '--cka_groups', '3'],
                       layers='blocks', kernel='linear', debiased=False, reduce='min', agg='mean'),
    'rbf_debiased_max_sum': dict(args=['--cka_kernel', 'rbf', '--cka_reduce', 'max', '--cka_agg', 'sum',
                                       '--cka_groups', '2'],
                                 layers='blocks', kernel='rbf', debiased=True, reduce='max', agg='sum'),
    'rbf_biased_weighted': dict(args=['--cka_kernel', 'rbf', '--cka_estimator', 'biased', '--cka_groups', '2',
                                      '--cka_agg', 'weighted', '--cka_weights', '2,0.5'],
                                layers='blocks', kernel='rbf', debiased=False, reduce='mean', agg=[2.0, 0.5]),
    'stages': dict(args=['--cka_layers', 'stages', '--cka_groups', '2'],
                   layers='stages', kernel='linear', debiased=True, reduce='mean', agg='mean'),
    'auto_biased': dict(args=['--cka_groups', 'auto', '--cka_estimator', 'biased'],
                        layers='blocks', kernel='linear', debiased=False, reduce='mean', agg='mean'),
}


@pytest.mark.parametrize('case', sorted(CASES))
def test_ckagroup_setting_end_to_end(teacher, tmp_path, case):
    spec = CASES[case]
    path_t, model = teacher
    run_student(TINY + ['--path_t', str(path_t), '--save_dir', str(tmp_path)] + spec['args'])
    (run_dir,) = (tmp_path / 'students').iterdir()
    record = json.loads((run_dir / 'cka_groups.json').read_text())
    num_t, num_s = NUM_LAYERS[(TEACHER, spec['layers'])], NUM_LAYERS[('resnet8', spec['layers'])]
    assert record['settings']['kernel'] == spec['kernel'] and record['settings']['layers'] == spec['layers']
    assert record['settings']['estimator'] == ('debiased' if spec['debiased'] else 'biased')
    # the teacher matrix: CKA of the whole training set, recomputed in float64
    expected = ref_matrix(teacher_layer_outputs(model, spec['layers']), teacher_layer_outputs(model, spec['layers']),
                          spec['kernel'], spec['debiased'])
    assert expected.shape == (num_t, num_t)
    np.testing.assert_allclose(record['matrix'], expected, atol=2e-4)
    n = auto_count(expected, num_s) if case.startswith('auto') else len(record['groups'])
    assert record['groups'] == best_grouping(expected, n)
    # the epoch's group values and loss from the logged student x teacher matrix (one batch)
    (epoch,) = json.loads((run_dir / 'cka_matrices.json').read_text())
    matrix = np.asarray(epoch['matrix'])
    assert matrix.shape == (num_s, num_t) and epoch['teacher_groups'] == record['groups']
    assert [len(g) for g in epoch['student_groups']] == [num_s // n + (i < num_s % n) for i in range(n)]
    values = [reduce_block(matrix, gs, gt, spec['reduce'])
              for gs, gt in zip(epoch['student_groups'], epoch['teacher_groups'])]
    np.testing.assert_allclose(epoch['group_cka'], values, atol=1e-6)
    distance = 1.0 - np.asarray(values)
    loss = {'mean': distance.mean, 'sum': distance.sum}[spec['agg']]() if isinstance(spec['agg'], str) \
        else float(np.dot(spec['agg'], distance))
    (metrics,) = json.loads((run_dir / 'metrics.json').read_text())
    assert metrics['train/loss_ckagroup'] == pytest.approx(loss, abs=1e-5)


@pytest.mark.parametrize('teacher_sizes, student_groups', [
    # 4 student layers, quotas 4 * size / 7 rounded by largest remainder, every group at least 1
    ([1, 4, 2], [[0], [1, 2], [3]]),
    ([5, 1, 1], [[0, 1], [2], [3]]),
])
def test_proportional_student_split_end_to_end(teacher, tmp_path, teacher_sizes, student_groups):
    path_t, model = teacher
    names = model.block_layer_names()
    bounds = np.cumsum([0] + teacher_sizes)
    groups = [list(range(a, b)) for a, b in zip(bounds[:-1], bounds[1:])]
    group_file = tmp_path / 'groups.json'
    group_file.write_text(json.dumps({'layer_names': names, 'matrix': np.eye(len(names)).tolist(),
                                      'groups': groups, 'settings': {}}))
    run_student(TINY + ['--path_t', str(path_t), '--save_dir', str(tmp_path / 'save'), '--cka_group_file',
                        str(group_file), '--cka_student_split', 'proportional'])
    (run_dir,) = (tmp_path / 'save' / 'students').iterdir()
    (epoch,) = json.loads((run_dir / 'cka_matrices.json').read_text())
    assert epoch['teacher_groups'] == groups and epoch['student_groups'] == student_groups
