"""End to end, tiny budgets on the synthetic set: the SimKD repo's result files and TensorBoard
names read back from our run folders (their format from tests/fixtures/family_flags.json), and
seeds that follow --trial (two trials differ, a trial reproduces)."""
import json
import os
import time

import pytest
import torch

import models
from runtime.errors import ConfigError
from helper.train import run_student, run_teacher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILY = json.load(open(os.path.join(ROOT, 'tests', 'fixtures', 'family_flags.json')))
FILES = FAMILY['files']
TINY = ['--dataset', 'synthetic', '--train_per_class', '10', '--val_per_class', '5', '--batch_size', '25',
        '--num_workers', '0', '--device', 'cpu', '--print_freq', '100', '--learning_rate', '0.02']


def _family_scalars(run_dir) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir), size_guidance={'scalars': 0})
    events.Reload()
    return {name: [(e.step, e.value) for e in events.Scalars(name)]
            for name in FILES['tensorboard_scalars']['names'] if name in events.Tags()['scalars']}


@pytest.fixture(scope='module')
def teacher_run(tmp_path_factory):
    save = tmp_path_factory.mktemp('save')
    started = time.time()
    run_teacher(TINY + ['--model', 'resnet8', '--epochs', '2', '--save_dir', str(save)])
    hours = (time.time() - started) / 3600
    # the family's default trial of train_teacher.py names the folder
    trial = next(e['default'] for e in FAMILY['scripts']['train_teacher.py']['flags'] if '--trial' in e['flags'])
    return save / 'teachers' / f'resnet8_vanilla_synthetic_lr_0.02_decay_0.0005_trial_{trial}', hours


def test_teacher_writes_the_familys_files(teacher_run):
    run_dir, hours = teacher_run
    history = json.loads((run_dir / 'metrics.json').read_text())
    options = json.loads((run_dir / 'options.json').read_text())
    best = max(history, key=lambda r: r['test/top1'])  # the first of equal bests, as `>` keeps it
    two = lambda x: float('%.2f' % x)
    spec = FILES['test_best_metrics.json']
    metrics = json.loads((run_dir / 'test_best_metrics.json').read_text())
    assert list(metrics) == spec['keys'] and spec['rounded']['train_teacher.py']
    assert metrics == {'test_loss': two(best['test/loss']), 'test_acc': two(best['test/top1']),
                       'test_acc_top5': two(best['test/top5']), 'epoch': best['epoch']}
    params = json.loads((run_dir / 'parameters.json').read_text())
    spec = FILES['parameters.json']
    assert list(params)[-2:] == spec['added_keys'] and list(params)[:-2] == sorted(options)
    assert {k: params[k] for k in options} == options
    expected_params = sum(p.numel() for p in models.build_model('resnet8', num_classes=10).parameters()) / 1e6
    assert params['Total params'] == pytest.approx(expected_params, rel=1e-12)
    assert params['Total time'] == two(params['Total time']) and 0 <= params['Total time'] <= two(hours) + 0.01
    ckpt = torch.load(run_dir / 'resnet8_best.pth', weights_only=True)
    assert set(FILES['best_checkpoint']['keys']) <= set(ckpt) and ckpt['epoch'] == best['epoch']
    assert ckpt['seed'] == options['seed'] == 0  # trial '0'


def test_teacher_logs_the_familys_scalar_names(teacher_run):
    run_dir, _ = teacher_run
    history = json.loads((run_dir / 'metrics.json').read_text())
    ours = {'train_acc': 'train/top1', 'train_loss': 'train/loss', 'test_acc': 'test/top1',
            'test_acc_top5': 'test/top5', 'test_loss': 'test/loss'}
    scalars = _family_scalars(run_dir)
    assert set(scalars) == set(FILES['tensorboard_scalars']['names']) == set(ours)
    for name, key in ours.items():
        assert [s for s, _ in scalars[name]] == [r['epoch'] for r in history]
        assert [v for _, v in scalars[name]] == pytest.approx([r[key] for r in history], abs=1e-4)


def _student(teacher, save, *extra):
    run_student(TINY + ['--path_t', str(teacher), '--model_s', 'resnet8', '--distill', 'kd', '--epochs', '1',
                        '--skip-validation', '--deterministic', '--no-cka_monitor', '--save_dir', str(save)]
                + list(extra))
    (run_dir,) = (save / 'students').iterdir()
    return run_dir, torch.load(run_dir / 'ckpt_last.pth', weights_only=True)


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _without_timings(history: list) -> list:
    return [{k: v for k, v in record.items() if k not in ('time', 'train/images_per_s')} for record in history]


@pytest.fixture(scope='module')
def trial_runs(teacher_run, tmp_path_factory):
    """Students of trials 0 and 1, trial 1 again, and trial 'x' with --seed 1 (all --deterministic)."""
    teacher = teacher_run[0] / 'resnet8_best.pth'
    save = tmp_path_factory.mktemp('students')
    runs = {name: _student(teacher, save / name, *args) for name, args in (
        ('0', ['--trial', '0']), ('1', ['--trial', '1']), ('1 again', ['--trial', '1']),
        ('x seed 1', ['--trial', 'x', '--seed', '1']))}
    return teacher, runs


def test_trials_differ_and_a_trial_reproduces(trial_runs):
    _, runs = trial_runs
    trial0, trial1, again1, named = (runs[k][1] for k in ('0', '1', '1 again', 'x seed 1'))
    assert not _same_weights(trial0['model'], trial1['model'])
    assert trial0['history'][0]['train/loss'] != trial1['history'][0]['train/loss']
    assert _same_weights(trial1['model'], again1['model'])
    assert _without_timings(trial1['history']) == _without_timings(again1['history'])
    # --seed overrides the trial: another trial name with seed 1 trains trial 1's student
    assert _same_weights(trial1['model'], named['model'])
    for key, seed in (('0', 0), ('1', 1), ('x seed 1', 1)):
        run_dir, ckpt = runs[key]
        assert json.loads((run_dir / 'options.json').read_text())['seed'] == seed
        assert json.loads((run_dir / 'parameters.json').read_text())['seed'] == seed
        assert ckpt['seed'] == ckpt['opt']['seed'] == seed


def test_student_writes_the_familys_files_unrounded(trial_runs):
    run_dir, ckpt = trial_runs[1]['1']
    history = json.loads((run_dir / 'metrics.json').read_text())
    assert not FILES['test_best_metrics.json']['rounded']['train_student.py']
    assert json.loads((run_dir / 'test_best_metrics.json').read_text()) == {
        'test_loss': history[0]['test/loss'], 'test_acc': history[0]['test/top1'],
        'test_acc_top5': history[0]['test/top5'], 'epoch': 1}
    params = json.loads((run_dir / 'parameters.json').read_text())
    assert params['Total params'] == pytest.approx(
        sum(p.numel() for p in models.build_model('resnet8', num_classes=10).parameters()) / 1e6, rel=1e-12)
    assert 0 < params['Total time'] < 1 and params['Total time'] != float('%.2f' % params['Total time'])
    assert set(_family_scalars(run_dir)) == set(FILES['tensorboard_scalars']['names'])


def test_resume_with_another_seed_is_refused(trial_runs):
    teacher, runs = trial_runs
    run_dir, _ = runs['0']
    before = (run_dir / 'ckpt_last.pth').read_bytes()
    with pytest.raises(ConfigError, match='trained with seed 0.*pass --seed 0'):
        _student(teacher, run_dir.parent.parent, '--trial', '0', '--seed', '5', '--resume', '--epochs', '2')
    assert (run_dir / 'ckpt_last.pth').read_bytes() == before
