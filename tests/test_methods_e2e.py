"""Every --distill method: a tiny end-to-end run on synthetic (with a last short batch) whose
checkpoint reloads into a fresh student and distiller that predict exactly as the trained ones."""
import argparse
import json
import math

import pytest
import torch

import models
from conftest import distillation, save_teacher, tiny_argv
from distiller_zoo import distiller_names
from helper import train as train_mod
from helper.train import run_student

# 13 images per class: 130 training images in batches of 24 leave a last batch of 10.
TINY = tiny_argv(13, 3, 24, 10, 0.01, '--skip-validation', '--epochs', '1', '--nce_k', '16', '--feat_dim', '16',
                 '--cka_batches', '2', '--cka_groups', '3')
# The published loss weights of each method (scripts/*.sh).
BETA = {'kd': 0, 'hint': 100, 'attention': 1000, 'similarity': 3000, 'vid': 1, 'crd': 0.8, 'semckd': 400,
        'srrl': 1, 'simkd': 1, 'ckagroup': 5}


@pytest.fixture(scope='module')
def teacher_path(tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp('teacher'), 'resnet8x4')[0]


def test_every_method_is_registered():
    assert set(distiller_names()) == set(BETA)


@pytest.mark.parametrize('method', sorted(BETA))
def test_method_trains_and_checkpoint_reloads(method, teacher_path, tmp_path, monkeypatch):
    weights = ['-c', '0', '-d', '0'] if method == 'simkd' else ['-c', '1', '-d', '1']
    args = TINY + ['--path_t', str(teacher_path), '--model_s', 'resnet8', '--distill', method,
                   '-b', str(BETA[method]), '--save_dir', str(tmp_path)] + weights
    trained = {}  # the run's own student and distiller, as they are when training ends
    fit = train_mod.Trainer.fit

    def fit_and_keep(self, *a, **k):
        trained.update(student=self.model, distiller=self.extra_state['distiller'])
        return fit(self, *a, **k)
    monkeypatch.setattr(train_mod.Trainer, 'fit', fit_and_keep)
    summary = run_student(args)
    assert summary['epochs'] == 1
    (run_dir,) = (tmp_path / 'students').iterdir()
    ckpt = torch.load(run_dir / 'ckpt_last.pth', weights_only=True)
    assert ckpt['arch'] == 'resnet8' and ckpt['teacher_arch'] == 'resnet8x4' and ckpt['distill'] == method
    _check_family_files(run_dir, ckpt, method)

    student = models.build_model(ckpt['arch'], num_classes=ckpt['num_classes'])
    student.load_state_dict(ckpt['model'])
    teacher = models.build_model('resnet8x4', 10)
    teacher.load_state_dict(torch.load(teacher_path, weights_only=True)['model'])
    opt = argparse.Namespace(**ckpt['opt'])
    data = torch.utils.data.TensorDataset(torch.randn(48, 3, 32, 32), torch.randint(0, 10, (48,)))
    if method == 'ckagroup':  # the groups computed for the run, not new ones from other data
        opt.cka_group_file = str(run_dir / 'cka_groups.json')
    distiller = distillation(student, teacher.eval(), opt, num_train_samples=130, train_set=data,
                             names=('resnet8', 'resnet8x4')).distiller
    distiller.load_state_dict(ckpt['distiller'])
    student.eval()
    distiller.eval()
    images = torch.randn(5, 3, 32, 32)
    trained['student'].eval()
    trained['distiller'].eval()
    with torch.no_grad():
        logits = distiller.predict(student, images)
        expected = trained['distiller'].predict(trained['student'], images)
    assert logits.shape == (5, 10) and torch.isfinite(logits).all()
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    if method == 'simkd':  # the deployed SimKD student needs no distiller and no teacher
        from distiller_zoo.simkd import load_simkd_inference
        deployed = load_simkd_inference(student, ckpt['deploy']).eval()
        with torch.no_grad():
            torch.testing.assert_close(deployed(images), expected)


# The SimKD repo's projector (models/util.py, class SimKD) for a resnet8 student (64 channels at
# feats[-2]) and a resnet8x4 teacher (256), factor 2: its state_dict keys and shapes.
FAMILY_SIMKD_PROJ = {'transfer.0.weight': (128, 64, 1, 1), 'transfer.3.weight': (128, 128, 3, 3),
                     'transfer.6.weight': (256, 128, 1, 1),
                     **{f'transfer.{i}.{name}': (c,) for i, c in ((1, 128), (4, 128), (7, 256))
                        for name in ('weight', 'bias', 'running_mean', 'running_var')},
                     **{f'transfer.{i}.num_batches_tracked': () for i in (1, 4, 7)}}


def _check_family_files(run_dir, ckpt, method):
    """The SimKD repo's files, read back: parameters.json, test_best_metrics.json (written at a
    new best test accuracy, so only when it is above 0) and a simkd student's 'proj'."""
    params = json.loads((run_dir / 'parameters.json').read_text())
    assert params['distill'] == method and params['seed'] == ckpt['seed']
    assert {'Total params', 'Total time'} <= set(params)
    best_file = run_dir / 'test_best_metrics.json'
    assert best_file.exists() == (ckpt['best_acc'] > 0)
    if best_file.exists():
        test = ckpt['history'][0]
        assert json.loads(best_file.read_text()) == {'test_loss': test['test/loss'], 'test_acc': test['test/top1'],
                                                     'test_acc_top5': test['test/top5'], 'epoch': 1}
    if method != 'simkd':
        assert 'proj' not in ckpt
        return
    assert {k: tuple(v.shape) for k, v in ckpt['proj'].items()} == FAMILY_SIMKD_PROJ
    for key, value in ckpt['proj'].items():
        assert torch.equal(value, ckpt['distiller'][f'projector.{key}']), key
    if best_file.exists():
        assert torch.load(run_dir / 'resnet8_best.pth', weights_only=True)['proj'].keys() == FAMILY_SIMKD_PROJ.keys()


@pytest.fixture(scope='module')
def narrow_teacher_path(tmp_path_factory):
    # resnet8 rather than resnet8x4: on CPUs without native bf16 --amp runs convolutions on torch's
    # reference kernels, where SemCKD's projections to resnet8x4's widths take over a minute a step
    return save_teacher(tmp_path_factory.mktemp('narrow_teacher'), 'resnet8')[0]


@pytest.mark.parametrize('method', sorted(BETA))
def test_method_trains_with_fast_options(method, narrow_teacher_path, tmp_path):
    """--amp (bf16 autocast), --channels_last and --data_on_device with every method (CRD's indices
    come from the on-device loader): finite losses over the first batches."""
    losses = _first_epoch_losses(narrow_teacher_path, 'resnet8', method, tmp_path, '--amp')
    assert len(losses) >= 2 and all(math.isfinite(v) for v in losses.values()), losses


def _first_epoch_losses(teacher, student, method, tmp_path, *extra) -> dict:
    """The loss terms of a one-epoch run with the fast data path (5 images per class)."""
    weights = ['-c', '0', '-d', '0'] if method == 'simkd' else ['-c', '1', '-d', '1']
    fast = ['--channels_last', '--data_on_device', '--train_per_class', '5', *extra]
    run_student(TINY + ['--path_t', str(teacher), '--model_s', student, '--distill', method,
                        '-b', str(BETA[method]), '--save_dir', str(tmp_path)] + weights + fast)
    (run_dir,) = (tmp_path / 'students').iterdir()
    history = json.loads((run_dir / 'metrics.json').read_text())
    return {k: v for k, v in history[0].items() if k.startswith('train/loss')}


@pytest.fixture(scope='module')
def resnet32_teacher_path(tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp('resnet32_teacher'), 'resnet32')[0]


@pytest.mark.parametrize('method', sorted(set(BETA) - {'kd'}))
def test_method_distils_across_families(method, resnet32_teacher_path, tmp_path):
    """The cross-family pair of the evidence, resnet32 -> MobileNetV2 (other widths, depths, block
    types and feature-map sizes than the teacher's), with the family comparison's float32 fast
    options: every method builds its layers for the pair and trains with finite losses."""
    losses = _first_epoch_losses(resnet32_teacher_path, 'MobileNetV2', method, tmp_path)
    assert len(losses) >= 2 and all(math.isfinite(v) for v in losses.values()), losses
