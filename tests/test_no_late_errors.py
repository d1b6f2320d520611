"""Odd-but-legal settings run through, bad ones stop before training with one line, and a rejected
command leaves the run folder byte for byte as it was."""
import hashlib
import json

import numpy as np
import pytest
import torch

import models
from conftest import save_teacher
from dataset import build_datasets
from distiller_zoo.ckagroup import CKAGroupLoss
from helper.train import main, run_student
from test_ckagroup import debiased_cka_reference

# synthetic: 3 training images per class (30), 2 test images per class (20)
TINY = ['--dataset', 'synthetic', '--train_per_class', '3', '--val_per_class', '2', '--num_workers', '0',
        '--device', 'cpu', '--print_freq', '5', '--learning_rate', '0.02', '--skip-validation',
        '--cka_batches', '1', '--epochs', '1']


@pytest.fixture(scope='module')
def path_t(tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp('teacher'), 'resnet14')[0]


def folder_digest(folder) -> str:
    """Every file's relative path, size, modification time and bytes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob('*') if p.is_file()):
        stat = path.stat()
        digest.update(f'{path.relative_to(folder)} {stat.st_size} {stat.st_mtime_ns}\n'.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def one_line_error(capsys, *words):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: '), err
    for word in words:
        assert word in err[0], err[0]
    return err[0]


# ---------------------------------------------------------------- item 1
def test_monitor_measures_a_test_set_smaller_than_one_batch(path_t, tmp_path):
    """20 test images, batch 24: the monitor measures all 20 (one batch) instead of failing."""
    run_student(TINY + ['--path_t', str(path_t), '--model_s', 'resnet8', '--batch_size', '24',
                        '--distill', 'kd', '--cka_groups', '2', '--save_dir', str(tmp_path)])
    (run_dir,) = (tmp_path / 'students').iterdir()
    (record,) = json.loads((run_dir / 'cka_monitor.json').read_text())
    # independent expectation: the final student and the teacher on all 20 test images
    student = models.build_model('resnet8', 10)
    student.load_state_dict(torch.load(run_dir / 'ckpt_last.pth', weights_only=True)['model'])
    teacher = models.build_model('resnet14', 10)
    teacher.load_state_dict(torch.load(path_t, weights_only=True)['model'])
    val = build_datasets('synthetic', val_per_class=2).val
    images = torch.stack([val[i][0] for i in range(len(val))])
    with torch.no_grad():
        s_feats = models.layer_outputs(student.eval(), images, 'blocks')
        t_feats = models.layer_outputs(teacher.eval(), images, 'blocks')
    expected = [[debiased_cka_reference(s.numpy(), t.numpy()) for t in t_feats] for s in s_feats]
    np.testing.assert_allclose(record['matrix'], expected, atol=2e-4)


def test_monitor_off_with_a_reason_when_the_test_set_is_too_small(capsys):
    """3 test images: too few for the debiased estimator, said before training (2 suffice biased)."""
    from conftest import student_options
    from distiller_zoo.ckagroup import CKASettings, pair_teacher_groups
    from helper.monitor import build_monitor, monitor_wanted
    torch.manual_seed(0)
    student, teacher = models.build_model('resnet8', 10), models.build_model('resnet8', 10)
    val = torch.utils.data.TensorDataset(torch.randn(3, 3, 32, 32), torch.zeros(3, dtype=torch.long))
    train = torch.utils.data.TensorDataset(torch.randn(32, 3, 32, 32), torch.zeros(32, dtype=torch.long))
    cpu = torch.device('cpu')
    for estimator, built in (('debiased', False), ('biased', True)):
        settings = CKASettings.from_options(student_options(cka_groups='2', cka_estimator=estimator, cka_batches=1,
                                                            cka_monitor_batches=1))
        assert monitor_wanted(val, settings, 16) == built
        if built:
            groups = pair_teacher_groups(settings, student, teacher, (3, 32, 32), lambda: train, cpu, batch_size=16,
                                         seed=0, teacher_name='resnet8')
            monitor = build_monitor(student, teacher, groups, val, settings, batch_size=16, seed=0,
                                    input_shape=(3, 32, 32), device=cpu)
            matrix, _ = monitor.measure()
            assert np.isfinite(matrix).all()
        else:
            assert 'the test set holds 3 images' in capsys.readouterr().out


def test_monitor_off_with_a_reason_when_batches_are_too_small(path_t, tmp_path, capsys):
    """kd with batches of 3: no debiased CKA on them, said before training; the run goes on."""
    summary = run_student(TINY + ['--path_t', str(path_t), '--model_s', 'resnet8', '--batch_size', '3',
                                  '--train_per_class', '1', '--save_dir', str(tmp_path)])
    assert summary['epochs'] == 1
    assert '--batch_size is 3' in capsys.readouterr().out


# ---------------------------------------------------------------- item 2
def test_biased_ckagroup_skips_a_last_batch_of_one(path_t, tmp_path):
    """30 images in batches of 29 leave a last batch of 1: no CKA term there, the run goes on."""
    summary = run_student(TINY + ['--path_t', str(path_t), '--model_s', 'resnet8', '--batch_size', '29',
                                  '--distill', 'ckagroup', '-b', '1', '--cka_estimator', 'biased',
                                  '--cka_groups', '2', '--no-cka_monitor', '--save_dir', str(tmp_path)])
    assert summary['epochs'] == 1
    (run_dir,) = (tmp_path / 'students').iterdir()
    (record,) = json.loads((run_dir / 'metrics.json').read_text())
    assert np.isfinite(record['train/loss_ckagroup'])


def test_cka_loss_has_no_term_below_the_estimators_sample_count():
    torch.manual_seed(0)
    feats = [torch.randn(3, 5), torch.randn(3, 6)]
    for debiased, smallest in ((False, 2), (True, 4)):
        loss = CKAGroupLoss([[0, 1]], [[0, 1]], debiased=debiased)
        assert loss([f[:smallest - 1] for f in feats], [f[:smallest - 1] for f in feats]) is None
        batch = [torch.randn(smallest, 5), torch.randn(smallest, 6)]
        value, _, _ = loss(batch, batch)
        assert torch.isfinite(value)


# ---------------------------------------------------------------- item 3
def _group_record():
    names = models.build_model('resnet14', 10).block_layer_names()  # stem + 6 blocks
    return {'layer_names': names, 'matrix': np.eye(len(names)).tolist(), 'groups': [[0, 1, 2], [3, 4, 5, 6]],
            'settings': {}}


@pytest.mark.parametrize('change, words', [
    (lambda r: r.pop('matrix'), "'matrix'"),
    (lambda r: r.pop('settings'), "'settings'"),
    (lambda r: r.pop('groups'), "'groups'"),
    (lambda r: r.__setitem__('matrix', r['matrix'][:-1]), '7 x 7'),
    (lambda r: r['matrix'][2].__setitem__(1, 'x'), 'finite numbers'),
    (lambda r: r.__setitem__('groups', [[0, 2], [1, 3, 4, 5, 6]]), 'contiguous'),
    (lambda r: r.__setitem__('groups', [['0', '1'], [2, 3, 4, 5, 6]]), 'layer indices'),
    (lambda r: r.__setitem__('layer_names', r['layer_names'][::-1]), 'do not match'),
    (lambda r: r.__setitem__('settings', []), "'settings'"),
])
def test_group_file_checked_whole_before_training(path_t, tmp_path, capsys, change, words):
    record = _group_record()
    change(record)
    group_file = tmp_path / 'groups.json'
    group_file.write_text(json.dumps(record))
    save = tmp_path / 'save'
    args = TINY + ['--path_t', str(path_t), '--model_s', 'resnet8', '--batch_size', '16', '--distill', 'ckagroup',
                   '--cka_group_file', str(group_file), '--cka_teacher_split', 'even', '--save_dir', str(save)]
    assert main(run_student, args) == 2
    one_line_error(capsys, '--cka_group_file', words)
    assert not save.exists()


# ---------------------------------------------------------------- items 4 and 5
def test_resume_reuses_the_saved_groups_and_refuses_other_cka_options(path_t, tmp_path, capsys):
    args = TINY + ['--path_t', str(path_t), '--model_s', 'resnet8', '--batch_size', '16', '--distill', 'ckagroup',
                   '-b', '1', '--cka_groups', '2', '--save_dir', str(tmp_path)]
    run_student(args)
    (run_dir,) = (tmp_path / 'students').iterdir()
    saved = json.loads((run_dir / 'cka_groups.json').read_text())
    # groups that the teacher pass cannot give now: resume must read them, not recompute them
    edited = [[0], [1, 2, 3, 4, 5, 6]] if saved['groups'] != [[0], [1, 2, 3, 4, 5, 6]] else [[0, 1, 2, 3, 4, 5], [6]]
    saved['groups'] = edited
    (run_dir / 'cka_groups.json').write_text(json.dumps(saved))
    before = folder_digest(run_dir)
    refused = [(['--resume', '--cka_estimator', 'biased'], '--cka_estimator'),
               (['--resume', '--cka_layers', 'stages'], '--cka_layers'),
               (['--resume', '--cka_groups', '3'], '--cka_groups'),
               (['--resume', str(tmp_path / 'missing.pth')], 'no checkpoint'),
               (['--resume', str(path_t)], 'checkpoint')]
    for extra, words in refused:
        capsys.readouterr()
        assert main(run_student, args + ['--epochs', '2'] + extra) == 2, extra
        one_line_error(capsys, words)
        assert folder_digest(run_dir) == before, extra
    capsys.readouterr()
    # another batch size (other teacher batches) is fine: the groups are the saved ones
    run_student(args + ['--epochs', '2', '--resume', '--batch_size', '10'])
    out = capsys.readouterr().out
    assert sum('read from' in line and 'cka_groups.json' in line for line in out.splitlines()) == 1, out
    matrices = json.loads((run_dir / 'cka_matrices.json').read_text())
    assert [m['epoch'] for m in matrices] == [1, 2] and matrices[1]['teacher_groups'] == edited


def test_rejected_resume_of_a_teacher_run_touches_nothing(tmp_path, capsys):
    from helper.train import run_teacher
    args = ['--dataset', 'synthetic', '--train_per_class', '3', '--val_per_class', '1', '--num_workers', '0',
            '--device', 'cpu', '--batch_size', '16', '--model', 'resnet8', '--epochs', '1', '--save_dir', str(tmp_path)]
    run_teacher(args)
    (run_dir,) = (tmp_path / 'teachers').iterdir()
    before = folder_digest(run_dir)
    assert main(run_teacher, args + ['--resume', str(tmp_path / 'nothing.pth')]) == 2
    one_line_error(capsys, 'no checkpoint')
    assert folder_digest(run_dir) == before


# ---------------------------------------------------------------- item 6
@pytest.mark.parametrize('extra, words', [
    (['--cka_batches', '0'], '--cka_batches 0'),
    (['--cka_monitor_batches', '0'], '--cka_monitor_batches 0'),
    (['--cka_groups', '0'], '--cka_groups 0'),
    (['--cka_groups', 'four'], "'auto'"),
    (['--cka_agg', 'weighted'], '--cka_weights'),
    (['--cka_agg', 'weighted', '--cka_weights', '1,2'], 'exactly 4'),
    (['--cka_agg', 'weighted', '--cka_groups', 'auto', '--cka_weights', '1,x'], 'numbers'),
    (['--cka_agg', 'weighted', '--cka_groups', '2', '--cka_weights', '1,nan'], 'finite'),
    (['--cka_agg', 'weighted', '--cka_groups', '2', '--cka_weights', '1,-1'], 'non-negative'),
    (['--cka_weights', '1,1,1,1'], 'only used with --cka_agg weighted'),
    (['--cka_group_file', 'no/such/file.json'], ('--cka_group_file', 'does not exist')),
    (['--distill', 'ckagroup', '--batch_size', '3'], '--batch_size 3'),
    (['--distill', 'ckagroup', '--batch_size', '1', '--cka_estimator', 'biased'], '--batch_size 1'),
])
def test_every_cka_flag_checked_when_parsed(tmp_path, capsys, extra, words):
    """Checked before the teacher is even looked for (its path does not exist here)."""
    args = TINY + ['--path_t', str(tmp_path / 'absent.pth'), '--save_dir', str(tmp_path / 'save')] + extra
    assert main(run_student, args) == 2
    one_line_error(capsys, *(words if isinstance(words, tuple) else (words,)))
    assert not (tmp_path / 'save').exists()


def test_too_many_groups_suggests_blocks_only_for_stages(path_t, tmp_path, capsys):
    base = TINY + ['--path_t', str(path_t), '--model_s', 'resnet8', '--batch_size', '16', '--distill', 'ckagroup',
                   '--save_dir', str(tmp_path / 'save')]
    assert main(run_student, base + ['--cka_groups', '9']) == 2  # resnet8: stem + 3 blocks
    line = one_line_error(capsys, 'exceeds the 4 block-level layers', 'at most 4')
    assert '--cka_layers' not in line
    assert main(run_student, base + ['--cka_groups', '5', '--cka_layers', 'stages']) == 2
    one_line_error(capsys, 'stage-level', '--cka_layers blocks')


@pytest.mark.parametrize('extra, words', [(['--cka_batches', '0'], '--cka_batches 0'),
                                          (['--batch_size', '3'], '--batch_size 3'),
                                          (['--cka_groups', '0'], '--cka_groups 0')])
def test_group_command_checks_its_flags_first(tmp_path, capsys, extra, words):
    """scripts/cka_groups.py takes train_student.py's grouping flags and refuses their bad values
    alike, before the teacher is looked for."""
    import importlib.util
    import os
    from conftest import ROOT
    spec = importlib.util.spec_from_file_location('cka_groups', os.path.join(ROOT, 'scripts', 'cka_groups.py'))
    command = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(command)
    args = ['--path_t', str(tmp_path / 'absent.pth'), '--dataset', 'synthetic', '--out', str(tmp_path / 'out'),
            '--device', 'cpu'] + extra
    assert main(command.run, args) == 2
    one_line_error(capsys, words)
    assert not (tmp_path / 'out').exists()
