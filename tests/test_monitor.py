"""CKA monitoring for any --distill method: same tags for KD and ckagroup, values against an
independent float64 reference, and the comparison figure."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import models
from conftest import ROOT, save_teacher, student_options, tiny_argv
from helper.checkpoint import freeze
from distiller_zoo.ckagroup import CKASettings, pair_teacher_groups
from helper.monitor import build_monitor
from helper.train import run_student
from models.taps import FeatureTap
from test_ckagroup import debiased_cka_reference

TINY = tiny_argv(12, 5, 16, 5, 0.02, '--skip-validation', '--cka_batches', '2', '--cka_groups', '3',
                 '--cka_monitor_batches', '2', '--epochs', '2', '--model_s', 'vgg8')


@pytest.fixture(scope='module')
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('monitor')
    path_t, _ = save_teacher(root, 'resnet14')
    runs = {}
    for method, beta in (('kd', '0'), ('ckagroup', '5')):
        save = root / method
        run_student(TINY + ['--path_t', str(path_t), '--distill', method, '-b', beta, '--save_dir', str(save)])
        (runs[method],) = (save / 'students').iterdir()
    return runs


def _tags(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir), size_guidance={'scalars': 0, 'images': 0})
    events.Reload()
    return events


def test_kd_and_ckagroup_log_the_same_monitoring(two_runs):
    tags = {}
    for method, run_dir in two_runs.items():
        events = _tags(run_dir)
        tags[method] = ({t for t in events.Tags()['scalars'] if t.startswith('monitor/')},
                        {t for t in events.Tags()['images'] if t.startswith('monitor/')})
        history = json.loads((run_dir / 'cka_monitor.json').read_text())
        assert [h['epoch'] for h in history] == [1, 2]
        values = [e.value for e in events.Scalars('monitor/group_1')]
        assert values == pytest.approx([h['group_cka'][1] for h in history], abs=1e-5)
        assert len(events.Images('monitor/student_x_teacher')) == 2
    assert tags['kd'] == tags['ckagroup']
    assert tags['kd'][0] == {'monitor/group_0', 'monitor/group_1', 'monitor/group_2', 'monitor/group_mean',
                             'monitor/seconds'}
    groups = [json.loads((d / 'cka_groups.json').read_text())['groups'] for d in two_runs.values()]
    assert groups[0] == groups[1]  # both runs are measured against the same teacher groups


def test_monitor_matches_float64_reference():
    torch.manual_seed(0)
    student, teacher = models.build_model('resnet8', 10), models.build_model('vgg8', 10)
    freeze(teacher)
    val = torch.utils.data.TensorDataset(torch.randn(40, 3, 32, 32), torch.zeros(40, dtype=torch.long))
    settings = CKASettings.from_options(student_options(cka_groups='2', cka_batches=1, cka_monitor_batches=1))
    cpu = torch.device('cpu')
    groups = pair_teacher_groups(settings, student, teacher, (3, 32, 32), lambda: val, cpu, batch_size=20, seed=3,
                                 teacher_name='vgg8')
    monitor = build_monitor(student, teacher, groups, val, settings, batch_size=20, seed=3, input_shape=(3, 32, 32),
                            device=cpu)
    student.train()
    matrix, groups = monitor.measure()
    assert student.training  # mode restored
    (images,) = monitor.images
    student.eval()
    with torch.no_grad():
        with FeatureTap(student, student.block_layer_names()) as tap:
            student(images)
            s_feats = [f.numpy() for f in tap.outputs]
        with FeatureTap(teacher, teacher.block_layer_names()) as tap:
            teacher(images)
            t_feats = [f.numpy() for f in tap.outputs]
    reference = np.array([[debiased_cka_reference(s, t) for t in t_feats] for s in s_feats])
    np.testing.assert_allclose(matrix, reference, rtol=1e-4, atol=1e-5)
    expected = [reference[np.ix_(gs, gt)].mean() for gs, gt in zip(monitor.student_groups, monitor.teacher_groups)]
    np.testing.assert_allclose(groups, expected, rtol=1e-4, atol=1e-5)


def test_monitor_can_be_switched_off(tmp_path):
    path_t, _ = save_teacher(tmp_path, 'resnet8')
    args = TINY + ['--path_t', str(path_t), '--distill', 'kd', '--epochs', '1', '--save_dir', str(tmp_path / 's'),
                   '--no-cka_monitor']
    run_student(args)
    (run_dir,) = (tmp_path / 's' / 'students').iterdir()
    assert not (run_dir / 'cka_monitor.json').exists()
    assert not [t for t in _tags(run_dir).Tags()['scalars'] if t.startswith('monitor/')]


def _plot_script():
    path = os.path.join(ROOT, 'scripts', 'plot_cka_runs.py')
    spec = importlib.util.spec_from_file_location('plot_cka_runs', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return path, module


def test_figure_script_draws_both_runs(two_runs, tmp_path):
    out = tmp_path / 'runs.png'
    script, module = _plot_script()
    result = subprocess.run([sys.executable, script, str(two_runs['kd']), str(two_runs['ckagroup']), '--out', str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert Image.open(out).format == 'PNG'
    # what the script draws, from the same run folders
    runs = [module.load_run(str(two_runs[m]), 'monitor') for m in ('kd', 'ckagroup')]
    # seed 1: the default --trial '1' sets it
    assert [r['label'] for r in runs] == ['kd (b=0.0, seed 1)', 'ckagroup (b=5.0, seed 1)']
    fig = module.runs_figure(runs)
    matrices = [ax for ax in fig.axes if ax.images]
    assert [[t.get_text() for t in ax.get_yticklabels()] for ax in matrices] == [
        models.build_model('vgg8', 10).block_layer_names()] * 2
    assert [[t.get_text() for t in ax.get_xticklabels()] for ax in matrices] == [
        models.build_model('resnet14', 10).block_layer_names()] * 2
    curves = [ax for ax in fig.axes if ax.get_title().endswith('group CKA')]
    assert [len(ax.get_lines()) for ax in curves] == [3, 3]
    (accuracy,) = [ax for ax in fig.axes if ax.get_title() == 'accuracy']
    assert [list(line.get_xdata()) for line in accuracy.get_lines()] == [[1, 2], [1, 2]]


def test_figure_script_names_a_folder_without_monitoring(tmp_path):
    script, _ = _plot_script()
    result = subprocess.run([sys.executable, script, str(tmp_path), '--out', str(tmp_path / 'x.png')],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith('error: ') and 'cka_monitor.json' in result.stderr
    assert not (tmp_path / 'x.png').exists()
