"""--data_on_device, --amp, --channels_last, --compile: end to end on CPU (tiny budgets)."""
import json
import types

import pytest
import torch
from torch import nn

from conftest import synthetic_test_top1, tiny_argv
from helper.setup import prepare_model
from helper.train import main, run_student, run_teacher
from models.taps import FeatureTap

TINY = tiny_argv(20, 10, 32, 2, 0.02)
FAST = ['--data_on_device', '--amp', '--channels_last']


@pytest.fixture(scope='module')
def fast_teacher(tmp_path_factory):
    save = tmp_path_factory.mktemp('save')
    summary = run_teacher(TINY + FAST + ['--model', 'resnet8', '--epochs', '1', '--save_dir', str(save)])
    assert summary['epochs'] == 1
    return save / 'teachers' / 'resnet8_vanilla_synthetic_lr_0.02_decay_0.0005_trial_0' / 'resnet8_best.pth'


def _student(teacher, save, extra=()):
    return run_student(TINY + ['--path_t', str(teacher), '--model_s', 'resnet8', '--distill', 'ckagroup',
                               '-b', '1', '--cka_batches', '2', '--epochs', '1', '--skip-validation',
                               '--save_dir', str(save)] + list(extra))


def test_fast_ckagroup_run_is_reproducible(fast_teacher, tmp_path):
    first = _student(fast_teacher, tmp_path / 'a', FAST)
    second = _student(fast_teacher, tmp_path / 'b', FAST)
    name = 'S-resnet8_T-resnet8_synthetic_ckagroup_r-1.0_a-1.0_b-1.0_1'
    weights = [torch.load(tmp_path / d / 'students' / name / 'ckpt_last.pth', weights_only=True)['model']
               for d in ('a', 'b')]
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key
    assert first['last_top1'] == second['last_top1']
    history = json.loads((tmp_path / 'a' / 'students' / name / 'metrics.json').read_text())
    assert 0 <= history[0]['cka/group_mean'] <= 1 and history[0]['train/loss_ckagroup'] > 0
    options = json.loads((tmp_path / 'a' / 'students' / name / 'options.json').read_text())
    assert options['data_on_device'] and options['amp'] and options['channels_last']


def test_crd_trains_on_device_with_its_sample_and_contrast_indices(fast_teacher, tmp_path):
    # the loader hands out the batch's indices (tests/test_device_data.py checks their distribution);
    # a wrapper without them is refused there in one line
    args = TINY + ['--path_t', str(fast_teacher), '--model_s', 'resnet8', '--distill', 'crd', '--nce_k', '16', '--epochs', '1',
                   '-b', '0.8', '--save_dir', str(tmp_path), '--data_on_device']
    assert main(run_student, args) == 0
    (run_dir,) = (tmp_path / 'students').iterdir()
    history = json.loads((run_dir / 'metrics.json').read_text())
    assert history[0]['train/loss_crd'] > 0
    memory = torch.load(run_dir / 'ckpt_last.pth', weights_only=True)['distiller']
    assert memory['criterion.contrast.z_s'] > 0  # the memory bank saw the batches' indices


def test_compiled_model_keeps_values_keys_and_hooks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    eager = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(6, 3, 8, 8)
    with torch.no_grad():
        model.eval()
        expected = model(x)
        with FeatureTap(model, ['2']) as tap:
            model(x)
            expected_feature = tap.outputs[0]
    prepare_model(model, types.SimpleNamespace(channels_last=True, compile='default'))
    assert list(model.state_dict()) == list(eager)
    with torch.no_grad(), FeatureTap(model, ['2']) as tap:
        got = model(x.contiguous(memory_format=torch.channels_last))
        feature = tap.outputs[0]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(feature, expected_feature, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_fast_path_on_cuda_with_cuda_graphs(fast_teacher, tmp_path):
    """The GPU branch: data on the GPU, bf16, channels_last, torch.compile with CUDA graphs (two
    epochs, so the short last batch and the second pass reuse the captured graphs)."""
    summary = _student(fast_teacher, tmp_path, FAST + ['--device', 'cuda', '--compile', 'reduce-overhead',
                                                       '--epochs', '2'])
    assert summary['epochs'] == 2 and 0 <= summary['last_top1'] <= 100


@pytest.mark.parametrize('amp,device,native,says', [
    (True, 'cpu', False, True),     # emulated bf16: the trap the note is for
    (True, 'cpu', True, False),     # AVX512-BF16 / AMX: nothing to say
    (False, 'cpu', False, False),   # no --amp
    (True, 'cuda', False, False),   # a GPU: the CPU's bf16 support does not matter
])
def test_amp_note_only_for_cpus_without_native_bf16(amp, device, native, says):
    from helper.loops import amp_cpu_note
    note = amp_cpu_note(amp, device, native_bf16=native)
    assert (note is not None) == says
    if says:
        assert '\n' not in note and torch.backends.cpu.get_cpu_capability() in note and 'drop --amp' in note


def test_amp_note_printed_once_at_start(monkeypatch, tmp_path, capsys):
    """A CPU reported without native bf16 (this one has it: the check is injected) gets the one-line
    note before training, which then runs as asked."""
    import helper.loops
    monkeypatch.setattr(helper.loops, 'cpu_has_native_bf16', lambda: False)
    summary = run_teacher(TINY + FAST + ['--model', 'resnet8', '--epochs', '1', '--save_dir', str(tmp_path),
                                         '--train_per_class', '4', '--val_per_class', '4'])
    out = capsys.readouterr().out
    assert out.count('--amp on a CPU without native bf16') == 1
    assert out.index('--amp on a CPU without native bf16') < out.index('training resnet8')
    assert summary['epochs'] == 1


def test_compiled_models_keep_their_block_taps(monkeypatch):
    """--compile: the block outputs of a model compiled by prepare_model are recorded on every
    forward, also after an untapped first call (hooks added after compiling are ignored); torch.compile
    runs with its tracing only (backend 'eager') to keep the test short."""
    import copy
    import models
    compile_module = nn.Module.compile
    monkeypatch.setattr(nn.Module, 'compile', lambda self, mode=None, dynamic=None: compile_module(
        self, backend='eager', dynamic=dynamic))
    torch.manual_seed(0)
    reference = models.build_model('resnet8', num_classes=10).eval()
    untapped = prepare_model(copy.deepcopy(reference), types.SimpleNamespace(compile='reduce-overhead'))
    assert not any(m._forward_hooks for m in untapped.modules())  # kd: nothing recorded, nothing held
    model = prepare_model(copy.deepcopy(reference), types.SimpleNamespace(compile='reduce-overhead'), taps=True)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        model(x)
        got = models.layer_outputs(model, x, 'blocks')
        with FeatureTap(reference, reference.block_layer_names()) as tap:
            reference(x)
            want = tap.outputs
    assert len(got) == len(want) == len(reference.block_layer_names())
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_which_images_the_curves_use_does_not_change_training(fast_teacher, tmp_path):
    """The family comparison moved the per-epoch curves and the CKA monitor from test images
    (--val_per_class) to held-out training images (--val_split_per_class); its repeats of the first
    pair's seeds may only differ by numerics if that move leaves the training itself alone."""
    def run(name, validation):
        save = tmp_path / name
        run_student(['--dataset', 'synthetic', '--train_per_class', '10', *validation, '--batch_size', '25',
                     '--num_workers', '0', '--device', 'cpu', '--print_freq', '100', '--learning_rate', '0.02',
                     '--path_t', str(fast_teacher), '--model_s', 'resnet8', '--distill', 'ckagroup', '-b', '5',
                     '--cka_groups', '2', '--cka_batches', '2', '--epochs', '2', '--data_on_device',
                     '--channels_last', '--save_dir', str(save)])
        (run_dir,) = (save / 'students').iterdir()
        return (torch.load(run_dir / 'ckpt_last.pth', weights_only=True),
                json.loads((run_dir / 'metrics.json').read_text()))
    on_test, test_history = run('test', ['--val_per_class', '5'])
    held_out, held_out_history = run('held_out', ['--val_split_per_class', '5'])
    # evaluated on other images (the monitor too), trained identically, bit for bit
    assert [h['test/top1'] for h in test_history] != [h['test/top1'] for h in held_out_history]
    assert [h['monitor/group_mean'] for h in test_history] != [h['monitor/group_mean'] for h in held_out_history]
    for part in ('model', 'distiller'):
        assert on_test[part].keys() == held_out[part].keys()
        for key, value in on_test[part].items():
            assert torch.equal(value, held_out[part][key]), (part, key)
    assert [h['train/loss'] for h in test_history] == [h['train/loss'] for h in held_out_history]


@pytest.mark.parametrize('loader', [[], ['--data_on_device']], ids=['dataloader', 'data_on_device'])
def test_held_out_curves_leave_the_test_set_to_one_final_evaluation(fast_teacher, tmp_path, capsys, loader):
    """With --val_split_per_class the epochs report held-out training images under that name, and
    the full test set is evaluated once, on the last epoch's weights; checked against a plain
    float64 evaluation of the saved checkpoint over every test image."""
    argv = ['--dataset', 'synthetic', '--train_per_class', '10', '--val_split_per_class', '5',
            '--batch_size', '25', '--num_workers', '0', '--device', 'cpu', '--print_freq', '100',
            '--path_t', str(fast_teacher), '--model_s', 'resnet8', '--distill', 'kd',
            '--epochs', '1', '--save_dir', str(tmp_path), *loader]
    summary = run_student(argv)
    out = capsys.readouterr().out
    epoch_lines = [line for line in out.splitlines() if line.startswith('epoch 1:')]
    assert len(epoch_lines) == 1 and 'held-out top1' in epoch_lines[0] and 'test top1' not in epoch_lines[0]
    assert 'teacher resnet8 held-out top1' in out
    (run_dir,) = (tmp_path / 'students').iterdir()
    top1, images = synthetic_test_top1(run_dir / 'ckpt_last.pth')
    assert summary['test_images'] == images > 100
    assert summary['test_top1'] == pytest.approx(top1, abs=1e-4)
    assert f'test top1 of the last epoch\'s weights {summary["test_top1"]:.2f}' in out
    saved = json.loads((run_dir / 'summary.json').read_text())
    assert saved['test_top1'] == summary['test_top1']
    # a finished run reopened trains no epoch and evaluates the same weights (in eval mode) again
    assert run_student(argv + ['--resume'])['test_top1'] == summary['test_top1']


def test_curves_on_test_images_add_no_second_test_evaluation(fast_teacher, tmp_path):
    summary = _student(fast_teacher, tmp_path, ['--val_per_class', '5'])
    assert 'test_top1' not in summary and 'test_images' not in summary
