"""End-to-end runs of train_teacher.py / train_student.py on the synthetic set (tiny budgets)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, tiny_argv
from helper.train import main, run_student, run_teacher

# Tiny budget: 20 images per class, 1-2 epochs, batch 32, in-process loading.
TINY = tiny_argv(20, 10, 32, 2, 0.02)


def read_scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(run_dir, size_guidance={'scalars': 0, 'images': 0})
    acc.Reload()
    return acc


@pytest.fixture(scope='module')
def teacher_ckpt(tmp_path_factory):
    save = tmp_path_factory.mktemp('save')
    summary = run_teacher(TINY + ['--model', 'resnet8', '--epochs', '2', '--save_dir', str(save)])
    run_dir = save / 'teachers' / 'resnet8_vanilla_synthetic_lr_0.02_decay_0.0005_trial_0'
    assert summary['epochs'] == 2
    return run_dir / 'resnet8_best.pth'


def test_teacher_run_folder(teacher_ckpt):
    run_dir = teacher_ckpt.parent
    for name in ('options.json', 'metrics.json', 'summary.json', 'ckpt_last.pth'):
        assert (run_dir / name).exists(), name
    history = json.loads((run_dir / 'metrics.json').read_text())
    assert [r['epoch'] for r in history] == [1, 2]
    for key in ('train/top1', 'train/top5', 'train/loss_cls', 'test/top1', 'test/top5', 'lr', 'time'):
        assert key in history[0]
    ckpt = torch.load(teacher_ckpt, weights_only=True)
    assert ckpt['arch'] == 'resnet8' and ckpt['num_classes'] == 10 and ckpt['dataset'] == 'synthetic'
    events = read_scalars(str(run_dir))
    test_top1 = [e.value for e in events.Scalars('test/top1')]
    assert test_top1 == pytest.approx([r['test/top1'] for r in history], abs=1e-4)


def test_student_kd_and_resume_equals_uninterrupted(teacher_ckpt, tmp_path):
    common = TINY + ['--path_t', str(teacher_ckpt), '--model_s', 'resnet8', '--distill', 'kd',
                     '--deterministic', '--skip-validation']
    full = run_student(common + ['--epochs', '2', '--save_dir', str(tmp_path / 'a')])
    run_student(common + ['--epochs', '1', '--save_dir', str(tmp_path / 'b')])
    resumed = run_student(common + ['--epochs', '2', '--save_dir', str(tmp_path / 'b'), '--resume'])
    name = 'S-resnet8_T-resnet8_synthetic_kd_r-1.0_a-1.0_b-0.0_1'
    last_a = torch.load(tmp_path / 'a' / 'students' / name / 'ckpt_last.pth', weights_only=True)
    last_b = torch.load(tmp_path / 'b' / 'students' / name / 'ckpt_last.pth', weights_only=True)
    assert last_b['epoch'] == 2 and len(last_b['history']) == 2
    for key, value in last_a['model'].items():
        assert torch.equal(value, last_b['model'][key]), key
    assert resumed['last_top1'] == full['last_top1']
    history = json.loads((tmp_path / 'a' / 'students' / name / 'metrics.json').read_text())
    assert 'train/loss_div' in history[0] and 'train/loss_cls' in history[0]


def test_older_checkpoint_in_vanilla_folder_loads_as_teacher(teacher_ckpt, tmp_path):
    state = torch.load(teacher_ckpt, weights_only=True)['model']
    folder = tmp_path / 'models' / 'resnet8_vanilla'
    folder.mkdir(parents=True)
    torch.save({'model': state, 'epoch': 240}, folder / 'ckpt_epoch_240.pth')
    summary = run_student(TINY + ['--path_t', str(folder / 'ckpt_epoch_240.pth'), '--model_s', 'resnet8',
                                  '--epochs', '1', '--save_dir', str(tmp_path / 'save')])
    assert summary['epochs'] == 1


@pytest.mark.parametrize('folder, arch', [
    ('resnet32x4_vanilla', 'resnet32x4'), ('wrn_40_2_vanilla', 'wrn_40_2'),
    ('ShuffleV2_1_5_vanilla', 'ShuffleV2_1_5'), ('MobileNetV2_1_0_vanilla', 'MobileNetV2_1_0'),
    ('resnext50_32x4d_vanilla', 'resnext50_32x4d'), ('ShuffleV2_vanilla', 'ShuffleV2'),
    ('resnet8x4', 'resnet8x4'), ('S:resnet8x4_T:resnet32x4_cifar100_kd_r:1_a:1_b:0_1', 'resnet8x4'),
    ('teacher_weights', None)])
def test_architecture_parsed_from_folder(folder, arch):
    from helper.checkpoint import arch_from_path
    assert arch_from_path(os.path.join('save', folder, 'ckpt.pth')) == arch


def _cli(script, args, cwd):
    return subprocess.run([sys.executable, os.path.join(ROOT, script)] + args, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def _assert_one_line_error(result, *words):
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert 'Traceback' not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_cli_unknown_model(tmp_path):
    result = _cli('train_teacher.py', TINY + ['--model', 'resnet9000', '--save_dir', str(tmp_path)], tmp_path)
    _assert_one_line_error(result, 'resnet9000', 'resnet8x4')


def test_cli_cifar_offline_names_data_folder(tmp_path):
    result = _cli('train_teacher.py', ['--dataset', 'cifar10', '--data_folder', str(tmp_path / 'none'),
                                       '--device', 'cpu', '--save_dir', str(tmp_path)], tmp_path)
    _assert_one_line_error(result, '--data_folder')


def test_bad_teacher_inputs_leave_files_intact(teacher_ckpt, tmp_path, capsys):
    state = torch.load(teacher_ckpt, weights_only=True)['model']
    wrong = tmp_path / 'resnet32x4_vanilla'
    wrong.mkdir()
    torch.save({'model': state}, wrong / 'ckpt.pth')
    anonymous = tmp_path / 'weights'
    anonymous.mkdir()
    torch.save({'model': state}, anonymous / 'ckpt.pth')
    base = TINY + ['--model_s', 'resnet8', '--epochs', '1', '--save_dir', str(tmp_path / 'save')]
    cases = [(['--path_t', str(wrong / 'ckpt.pth')], 'do not fit'),
             (['--path_t', str(anonymous / 'ckpt.pth')], 'architecture'),
             (['--path_t', str(tmp_path / 'missing.pth')], 'does not exist'),
             ([], '--path_t')]
    for extra, words in cases:
        assert main(run_student, base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert torch.equal(torch.load(wrong / 'ckpt.pth', weights_only=True)['model']['fc.weight'],
                       state['fc.weight'])


def test_existing_run_folder_is_not_overwritten(teacher_ckpt, tmp_path, capsys):
    args = TINY + ['--path_t', str(teacher_ckpt), '--model_s', 'resnet8', '--epochs', '1',
                   '--save_dir', str(tmp_path), '--skip-validation']
    assert main(run_student, args) == 0
    run_dir = tmp_path / 'students' / 'S-resnet8_T-resnet8_synthetic_kd_r-1.0_a-1.0_b-0.0_1'
    before = (run_dir / 'ckpt_last.pth').read_bytes()
    capsys.readouterr()
    assert main(run_student, args) == 2
    assert '--resume' in capsys.readouterr().err
    assert (run_dir / 'ckpt_last.pth').read_bytes() == before


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(teacher_ckpt, tmp_path, capsys):
    args = TINY + ['--path_t', str(teacher_ckpt), '--model_s', 'resnet8', '--save_dir', str(tmp_path),
                   '--skip-validation']
    assert main(run_student, args + ['--epochs', '1']) == 0
    run_dir = tmp_path / 'students' / 'S-resnet8_T-resnet8_synthetic_kd_r-1.0_a-1.0_b-0.0_1'
    before = (run_dir / 'ckpt_last.pth').read_bytes()
    capsys.readouterr()
    assert main(run_student, args + ['--epochs', '2', '--resume', '--learning_rate', '1e30']) == 2
    err = capsys.readouterr().err
    assert 'learning_rate' in err and len(err.strip().splitlines()) == 1
    assert (run_dir / 'ckpt_last.pth').read_bytes() == before


def test_low_lr_rule_is_applied_and_printed(capsys):
    from helper.options import parse_student_options
    opt = parse_student_options(['--model_s', 'ShuffleV2', '--learning_rate', '0.05'])
    assert opt.learning_rate == 0.01
    assert opt.requested_learning_rate == 0.05  # options.json keeps what was asked for beside it
    assert '0.01' in capsys.readouterr().out


def test_values_given_the_older_way_parse_to_the_same_types():
    # Defaults, choices and short forms are compared with the family's table in test_family_flags.py.
    from helper.options import parse_student_options
    given = parse_student_options(['--lr_decay_epochs', '30,60', '-b', '0.8', '--trial', '3', '--kd_T', '2',
                                   '--hint_layer', '2', '--multiprocessing-distributed', '--skip-validation'])
    assert (given.lr_decay_epochs, given.beta, given.trial, given.kd_T, given.hint_layer) == ([30, 60], 0.8, '3', 2.0, 2)
    assert given.multiprocessing_distributed and given.skip_validation


def test_lr_at_decays_after_each_milestone():
    """The older repos' rule: lr * rate ** (number of milestones strictly below the epoch)."""
    from argparse import Namespace
    from helper.trainer import lr_at
    opt = Namespace(learning_rate=0.05, lr_decay_rate=0.1, lr_decay_epochs=[150, 180, 210])
    expected = {1: 0.05, 150: 0.05, 151: 0.005, 180: 0.005, 181: 0.0005, 210: 0.0005, 211: 0.00005, 240: 0.00005}
    for epoch, lr in expected.items():
        assert lr_at(opt, epoch) == pytest.approx(lr, rel=1e-12), epoch
    assert lr_at(Namespace(learning_rate=0.1, lr_decay_rate=0.5, lr_decay_epochs=[]), 300) == 0.1


def test_trainer_applies_the_schedule(tmp_path):
    """The lr each epoch trains with (metrics and the optimiser state) follows the milestones."""
    run_teacher(['--dataset', 'synthetic', '--train_per_class', '3', '--val_per_class', '1', '--num_workers', '0',
                 '--device', 'cpu', '--batch_size', '16', '--model', 'resnet8', '--epochs', '3',
                 '--learning_rate', '0.1', '--lr_decay_epochs', '1,2', '--lr_decay_rate', '0.5',
                 '--save_dir', str(tmp_path)])
    (run_dir,) = (tmp_path / 'teachers').iterdir()
    history = json.loads((run_dir / 'metrics.json').read_text())
    assert [r['lr'] for r in history] == pytest.approx([0.1, 0.05, 0.025])
    ckpt = torch.load(run_dir / 'ckpt_last.pth', weights_only=True)
    assert ckpt['optimizer']['param_groups'][0]['lr'] == pytest.approx(0.025)
