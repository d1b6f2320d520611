"""--distill ckagroup: the loss against an independent float64 reference, training behaviour,
end-to-end runs across model families, TensorBoard contents, and bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import models
from cka import block_masks, group_values
from conftest import ROOT, distillation, save_teacher, student_options, tiny_argv
from distiller_zoo.base import Batch
from distiller_zoo.ckagroup import CKAGroupDistiller, CKAGroupLoss
from helper.checkpoint import freeze
from helper.loops import model_outputs
from helper.train import main, run_student

TINY = tiny_argv(12, 5, 24, 5, 0.02, '--skip-validation', '--cka_batches', '2')


def debiased_cka_reference(x, y):
    """Unbiased HSIC (Song et al. 2012) with explicit sums, float64 numpy."""
    def hsic(K, L):
        n = K.shape[0]
        K, L = K.copy(), L.copy()
        np.fill_diagonal(K, 0)
        np.fill_diagonal(L, 0)
        ones = np.ones(n)
        return (np.trace(K @ L) + ones @ K @ ones * (ones @ L @ ones) / ((n - 1) * (n - 2))
                - 2.0 / (n - 2) * ones @ K @ L @ ones) / (n * (n - 3))
    x = x.reshape(len(x), -1).astype(np.float64)
    y = y.reshape(len(y), -1).astype(np.float64)
    K, L = x @ x.T, y @ y.T
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def test_group_values_match_float64_reference():
    torch.manual_seed(0)
    n = 12
    student = [torch.randn(n, 4, 3, 3), torch.randn(n, 10), torch.randn(n, 2, 5)]
    base = torch.randn(n, 6)
    teacher = [torch.randn(n, 8), base + 0.1 * torch.randn(n, 6), base, torch.randn(n, 3, 2, 2)]
    s_groups, t_groups = [[0, 1], [2]], [[0], [1, 2, 3]]
    ref = np.array([[debiased_cka_reference(s.numpy(), t.numpy()) for t in teacher] for s in student])
    expected_mean = [ref[0:2, 0:1].mean(), ref[2:3, 1:4].mean()]
    for reduce, expected in [('mean', expected_mean), ('min', [ref[0:2, 0:1].min(), ref[2:3, 1:4].min()]),
                             ('max', [ref[0:2, 0:1].max(), ref[2:3, 1:4].max()])]:
        loss, values, matrix = CKAGroupLoss(s_groups, t_groups, reduce=reduce)(student, teacher)
        np.testing.assert_allclose(values.numpy(), expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(matrix.numpy(), ref, rtol=1e-4, atol=1e-5)
    loss, _, _ = CKAGroupLoss(s_groups, t_groups, agg='sum')(student, teacher)
    assert loss.item() == pytest.approx(sum(1 - v for v in expected_mean), rel=1e-4)
    loss, _, _ = CKAGroupLoss(s_groups, t_groups, agg='weighted', weights=[2.0, 0.5])(student, teacher)
    assert loss.item() == pytest.approx(2 * (1 - expected_mean[0]) + 0.5 * (1 - expected_mean[1]), rel=1e-4)
    assert CKAGroupLoss(s_groups, t_groups)([s[:3] for s in student], [t[:3] for t in teacher]) is None


def _distillation(student, teacher, **opts):
    values = dict(distill='ckagroup', beta=1.0, cka_groups='2', cka_batches=2, batch_size=16, seed=0)
    values.update(opts)
    data = torch.utils.data.TensorDataset(torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,)))
    return distillation(student, teacher, student_options(**values), train_set=data)


def _distiller(student, teacher, **opts) -> CKAGroupDistiller:
    return _distillation(student, teacher, **opts).distiller


def test_optimising_the_cka_term_raises_every_group_and_spares_the_teacher():
    torch.manual_seed(1)
    teacher, student = models.build_model('resnet14', 10), models.build_model('vgg8', 10)
    freeze(teacher)
    distiller = _distiller(student, teacher, cka_groups='3')
    images = torch.randn(16, 3, 32, 32)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    student.train()

    def step():
        with torch.no_grad():
            teacher_out = model_outputs(teacher, images, distiller)
        student_out = model_outputs(student, images, distiller)
        return distiller.loss(distiller.layers(student_out), distiller.layers(teacher_out))[:2]

    _, first_values = step()
    for index in range(25):
        loss, _ = step()
        optimizer.zero_grad()
        loss.backward()
        if index == 0:
            assert all(p.grad is None for p in teacher.parameters())
            assert all(p.grad is not None for p in student.parameters() if p.requires_grad
                       and p is not student.get_classifier().weight and p is not student.get_classifier().bias)
        optimizer.step()
    _, final_values = step()
    assert torch.all(final_values > first_values + 0.01), (first_values, final_values)


def _save_teacher(tmp_path, arch):
    return save_teacher(tmp_path, arch, record_arch=True)[0]


@pytest.mark.parametrize('teacher, student', [('vgg8', 'MobileNetV2'), ('resnet8', 'ShuffleV2'),
                                              ('wrn_16_1', 'vgg8')])
def test_end_to_end_cross_family(tmp_path, teacher, student):
    path_t = _save_teacher(tmp_path, teacher)
    save = tmp_path / 'save'
    summary = run_student(TINY + ['--path_t', str(path_t), '--model_s', student, '--distill', 'ckagroup',
                                  '-b', '1', '--epochs', '2', '--cka_groups', '3', '--save_dir', str(save)])
    assert summary['epochs'] == 2
    (run_dir,) = (save / 'students').iterdir()
    groups = json.loads((run_dir / 'cka_groups.json').read_text())
    assert len(groups['groups']) == 3
    assert groups['layer_names'] == models.build_model(teacher, 10).block_layer_names()
    matrices = json.loads((run_dir / 'cka_matrices.json').read_text())
    num_s = len(models.build_model(student, 10).block_layer_names())
    assert [m['epoch'] for m in matrices] == [1, 2]
    assert np.asarray(matrices[-1]['matrix']).shape == (num_s, len(groups['layer_names']))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir), size_guidance={'scalars': 0, 'images': 0})
    events.Reload()
    tags = events.Tags()
    for tag in ('cka/group_0', 'cka/group_2', 'train/loss_ckagroup', 'train/loss_cls', 'train/loss_div'):
        assert tag in tags['scalars'], tag
    assert {'cka/teacher', 'cka/student_x_teacher'} <= set(tags['images'])
    group0 = [e.value for e in events.Scalars('cka/group_0')]
    assert group0 == pytest.approx([m['group_cka'][0] for m in matrices], abs=1e-5)
    assert len(events.Images('cka/student_x_teacher')) == 2


@pytest.mark.parametrize('teacher, student', [('resnet32x4', 'resnet8x4'), ('vgg13', 'MobileNetV2'),
                                              ('resnet32x4', 'ShuffleV2'), ('wrn_40_2', 'wrn_16_2'),
                                              ('ResNet50', 'vgg8')])
def test_every_listed_pair_takes_a_step(teacher, student):
    torch.manual_seed(0)
    t_model, s_model = models.build_model(teacher, 10), models.build_model(student, 10)
    freeze(t_model)
    distiller = _distiller(s_model, t_model, cka_groups='4', batch_size=8, cka_batches=1)
    images = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        t_out = model_outputs(t_model, images, distiller)
    s_out = model_outputs(s_model, images, distiller)
    # the layer outputs of that same pass
    s_feats = [f.detach().double().numpy() for f in s_out.blocks]
    t_feats = [f.double().numpy() for f in t_out.blocks]
    with torch.no_grad():
        t_out = distiller.prepare_teacher(t_out)   # as the loop does: only the teacher's Grams go on
    assert t_out.blocks is None and t_out.prepared is not None
    loss = distiller(s_out, t_out, Batch(images, torch.zeros(8, dtype=torch.long)))['ckagroup']
    loss.backward()
    s_groups, t_groups = distiller.student_groups, distiller.teacher_groups
    assert len(t_groups) == len(s_groups) == 4
    num_s = len(s_model.block_layer_names())
    assert [len(g) for g in s_groups] == [num_s // 4 + (i < num_s % 4) for i in range(4)]  # even, larger first
    ref = np.array([[debiased_cka_reference(x, y) for y in t_feats] for x in s_feats])
    expected = np.mean([1.0 - ref[np.ix_(gs, gt)].mean() for gs, gt in zip(s_groups, t_groups)])
    assert loss.item() == pytest.approx(expected, abs=2e-4)
    grads = [p.grad for p in s_model.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0


def test_bad_inputs_fail_before_training(tmp_path, capsys):
    path_t = _save_teacher(tmp_path, 'resnet8')
    wrong_file = tmp_path / 'groups.json'
    wrong_file.write_text(json.dumps({'layer_names': ['a', 'b'], 'groups': [[0], [1]],
                                      'matrix': [[1.0, 0.5], [0.5, 1.0]], 'settings': {}}))
    base = TINY + ['--path_t', str(path_t), '--model_s', 'resnet8', '--distill', 'ckagroup', '--epochs', '1',
                   '--save_dir', str(tmp_path / 'save')]
    cases = [(['--cka_groups', '9'], 'exceeds'),  # resnet8 has stem + 3 blocks
             (['--cka_group_file', str(wrong_file)], 'do not match'),
             (['--cka_groups', '2', '--cka_agg', 'weighted', '--cka_weights', '1,2,3'], 'exactly 2'),
             (['--cka_groups', 'many'], 'auto')]
    for extra, words in cases:
        assert main(run_student, base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert not list((tmp_path / 'save').rglob('*.pth'))


def test_group_file_from_cli_is_accepted(tmp_path):
    path_t = _save_teacher(tmp_path, 'resnet8')
    out = tmp_path / 'groups'
    result = subprocess.run([sys.executable, 'scripts/cka_groups.py', '--path_t', str(path_t),
                             '--dataset', 'synthetic', '--train_per_class', '12', '--cka_groups', '2',
                             '--cka_batches', '3', '--batch_size', '16', '--out', str(out), '--device', 'cpu'],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    record = json.loads((out / 'cka_groups.json').read_text())
    assert record['layer_names'] == models.build_model('resnet8', 10).block_layer_names()
    assert [i for g in record['groups'] for i in g] == list(range(4)) and len(record['groups']) == 2
    assert record['stability']['num_batches'] == 3 and record['settings']['estimator'] == 'debiased'
    from PIL import Image
    assert Image.open(out / 'cka_groups.png').format == 'PNG'
    summary = run_student(TINY + ['--path_t', str(path_t), '--model_s', 'vgg8', '--distill', 'ckagroup',
                                  '--cka_group_file', str(out / 'cka_groups.json'), '--epochs', '1',
                                  '--save_dir', str(tmp_path / 'save')])
    assert summary['epochs'] == 1


def test_each_cka_flag_is_declared_once_and_the_group_command_takes_train_students():
    """Every --cka_* flag of train_student.py has one declaration in the project's sources, in
    distiller_zoo/ckagroup/settings.py; scripts/cka_groups.py's grouping flags are train_student.py's
    own (names, defaults, types, choices)."""
    import ast
    import importlib.util
    import os
    from helper.options import student_parser
    from test_layers import python_files
    student = {a.option_strings[0]: a for a in student_parser()._actions if a.option_strings[0].startswith('--cka_')}
    assert len(student) == 16
    declared = {}
    for relpath in python_files(ROOT):
        for node in ast.walk(ast.parse(open(os.path.join(ROOT, relpath), encoding='utf-8').read())):
            if (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                    and str(node.args[0].value).startswith('--cka_')
                    and getattr(node.func, 'id', getattr(node.func, 'attr', None)) in ('add', 'add_argument')):
                declared.setdefault(node.args[0].value, []).append(relpath)
    assert declared == {flag: [os.path.join('distiller_zoo', 'ckagroup', 'settings.py')] for flag in student}
    spec = importlib.util.spec_from_file_location('cka_groups', os.path.join(ROOT, 'scripts', 'cka_groups.py'))
    command = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(command)
    grouping = {a.option_strings[0]: a for a in command.parser()._actions if a.option_strings[0].startswith('--cka_')}
    assert sorted(grouping) == ['--cka_batches', '--cka_estimator', '--cka_groups', '--cka_kernel', '--cka_layers']
    for flag, action in grouping.items():
        theirs = student[flag]
        assert (action.option_strings, action.default, action.type, action.choices) == \
            (theirs.option_strings, theirs.default, theirs.type, theirs.choices), flag


def test_ablations_even_teacher_groups_and_reversed_pairing():
    torch.manual_seed(0)
    teacher, student = models.build_model('resnet20', 10), models.build_model('resnet8', 10)
    freeze(teacher)
    base = _distiller(student, teacher, cka_groups='2')
    even = _distiller(student, teacher, cka_groups='2', cka_teacher_split='even')
    assert even.teacher_groups == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]  # resnet20: stem + 9 blocks
    assert even.student_groups == base.student_groups == [[0, 1], [2, 3]]
    reversed_ = _distiller(student, teacher, cka_groups='2', cka_pairing='reversed')
    assert reversed_.teacher_groups == base.teacher_groups[::-1]
    matrix = torch.arange(40, dtype=torch.float32).reshape(4, 10) / 40
    first, last = base.teacher_groups
    expected = [matrix[0:2, last[0]:last[-1] + 1].mean(), matrix[2:4, first[0]:first[-1] + 1].mean()]
    torch.testing.assert_close(group_values(matrix, block_masks(reversed_.student_groups, reversed_.teacher_groups)),
                               torch.stack(expected))


def test_taps_are_open_only_around_each_training_forward():
    """Block hooks exist while the loop's training forward runs, and at no other time: not after
    the distiller is built, not between steps, not while the deployed student predicts."""
    torch.manual_seed(0)
    teacher, student = models.build_model('resnet8', 10), models.build_model('resnet8', 10)
    freeze(teacher)
    wired = _distillation(student, teacher)
    distiller = wired.distiller

    def hooks(model):
        return sum(len(m._forward_hooks) for m in model.modules())

    seen = []
    student.register_forward_pre_hook(lambda module, args: seen.append(hooks(student)))
    assert hooks(student) == hooks(teacher) == 0
    objective = wired.objective
    objective.train()
    images = torch.randn(8, 3, 32, 32)
    loss, terms, _ = objective(Batch(images, torch.zeros(8, dtype=torch.long)))
    assert 'loss_ckagroup' in terms and seen == [len(student.block_layer_names())]
    assert hooks(student) == hooks(teacher) == 0
    with torch.no_grad():
        distiller.predict(student, images)
    assert seen[-1] == 0 and hooks(student) == 0


def test_resume_reads_the_run_folders_groups_instead_of_grouping_again(tmp_path):
    from distiller_zoo.ckagroup import CKASettings, pair_teacher_groups
    from runtime.errors import ConfigError
    teacher, student = models.build_model('resnet20', 10), models.build_model('resnet8', 10)
    names = teacher.block_layer_names()
    saved = {'layer_names': names, 'matrix': np.eye(len(names)).tolist(),
             'groups': [[0], list(range(1, len(names)))], 'settings': {'n_groups': 2}}
    path = tmp_path / 'cka_groups.json'
    path.write_text(json.dumps(saved))

    def no_data():
        raise AssertionError('the teacher was grouped again')

    settings = CKASettings.from_options(student_options(distill='ckagroup', cka_groups='2'))

    def resumed():  # what the run folder holds
        return json.loads(path.read_text())

    groups = pair_teacher_groups(settings, student, teacher, (3, 32, 32), no_data, torch.device('cpu'),
                                 batch_size=64, seed=0, teacher_name='resnet20', resumed_record=resumed)
    assert groups.record == saved and groups.teacher == saved['groups'] and groups.student == [[0, 1], [2, 3]]
    fewer = len(names) - 1
    path.write_text(json.dumps(dict(saved, layer_names=names[:-1], matrix=np.eye(fewer).tolist(),
                                    groups=[[0], list(range(1, fewer))])))
    with pytest.raises(ConfigError, match="run folder's .* do not match the teacher's"):
        pair_teacher_groups(settings, student, teacher, (3, 32, 32), no_data, torch.device('cpu'),
                            batch_size=64, seed=0, teacher_name='resnet20', resumed_record=resumed)


def test_random_teacher_groups_follow_the_seed_and_are_recorded():
    torch.manual_seed(0)
    teacher, student = models.build_model('resnet20', 10), models.build_model('resnet8', 10)
    freeze(teacher)
    wired = {seed: _distillation(student, teacher, cka_groups='3', cka_teacher_split='random', seed=seed)
             for seed in (0, 1, 2)}
    runs = {seed: w.distiller for seed, w in wired.items()}
    for seed, distiller in runs.items():
        groups, record = distiller.teacher_groups, wired[seed].groups.record
        assert len(groups) == 3 and [i for g in groups for i in g] == list(range(10))  # resnet20: 10 taps
        assert record['groups'] == groups
        assert record['settings']['teacher_split'] == 'random'
        assert record['settings']['split_seed'] == seed
        assert distiller.student_groups == [[0, 1], [2], [3]]  # the student keeps its even split
    again = _distiller(student, teacher, cka_groups='3', cka_teacher_split='random', seed=1)
    assert again.teacher_groups == runs[1].teacher_groups
    assert len({tuple(map(tuple, d.teacher_groups)) for d in runs.values()}) > 1
