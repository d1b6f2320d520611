"""-b 0 on a feature method: one line before training names the weight its published script uses
(the scripts and each class's `published_beta` agree), and ckagroup then computes no CKA term,
and with --no-cka_monitor neither taps a block nor groups the teacher."""
import json
import re
from pathlib import Path

import pytest

import distiller_zoo.ckagroup.distiller as ckagroup_module
import helper.train
import models.taps
from conftest import ROOT, save_teacher, tiny_argv
from distiller_zoo import distiller_class, distiller_names
from distiller_zoo.ckagroup import CKAGroupLoss
from helper.run_folder import GROUPS_FILE
from helper.train import run_student

# Every method whose -b weighs a term of its own besides CE and KD (kd has none; simkd's -b is its only loss).
FEATURE_METHODS = {'hint', 'attention', 'similarity', 'vid', 'crd', 'semckd', 'srrl', 'ckagroup'}
# The functions of cka/ that compute CKA values (Grams and their products), as a module may import them.
CKA_FUNCTIONS = ('cka_matrix', 'normalized_grams', 'grouped_normalized_grams', 'cka_from_grams')
TINY = tiny_argv(6, 3, 12, 5, 0.02, '--skip-validation', '--epochs', '1', '--cka_batches', '1',
                 '--cka_groups', '2', '--model_s', 'resnet8')


def script_commands() -> list:
    """(script, --distill name, -b value) of every train_student.py command in scripts/*.sh."""
    commands = []
    for path in sorted((Path(ROOT) / 'scripts').glob('*.sh')):
        for command in path.read_text().replace('\\\n', ' ').splitlines():
            distill = re.search(r'train_student\.py .*--distill (\S+)', command)
            if distill:
                beta = re.search(r'\s-b (\S+)', command)
                commands.append((path.name, distill.group(1), float(beta.group(1))))
    return commands


def test_published_beta_is_what_the_scripts_use():
    commands = script_commands()
    assert {name for _, name, _ in commands} >= FEATURE_METHODS | {'kd', 'simkd'}
    for script, name, beta in commands:
        published = distiller_class(name).published_beta
        assert published is None or published == beta, (script, name, beta, published)
    assert {name for name in distiller_names() if distiller_class(name).published_beta is not None} == FEATURE_METHODS
    assert ('fitnet.sh', 'hint', 100.0) in commands and ('ckagroup.sh', 'ckagroup', 5.0) in commands


@pytest.fixture(scope='module')
def teacher_path(tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp('zero_weight'), 'resnet8', record_arch=True)[0]


def _run(tmp_path, teacher_path, method, *extra):
    return run_student(TINY + ['--path_t', str(teacher_path), '--distill', method, '--save_dir',
                               str(tmp_path), *extra])


@pytest.mark.parametrize('method, script', [('ckagroup', 'ckagroup.sh'), ('attention', 'attention.sh'),
                                            ('simkd', 'simkd.sh')])
def test_zero_weight_says_so_in_one_line(tmp_path, teacher_path, capsys, method, script):
    _run(tmp_path, teacher_path, method, '-b', '0', '--no-cka_monitor')
    out = capsys.readouterr().out.splitlines()
    said = [line for line in out if 'weight 0' in line]
    if method == 'simkd':
        assert said == []
        return
    (script_beta,) = [beta for file, _, beta in script_commands() if file == script]
    assert len(said) == 1 and f'--distill {method} with -b 0' in said[0]
    assert said[0].endswith(f'-b {script_beta:g}')
    assert out.index(said[0]) < min(i for i, line in enumerate(out) if line.startswith('epoch 1'))


def _refuse(*_args, **_kwargs):
    raise AssertionError('a CKA function, tap or grouping was called')


def _records(tmp_path):
    (run_dir,) = (tmp_path / 'students').iterdir()
    return run_dir, json.loads((run_dir / 'metrics.json').read_text())


def test_ckagroup_zero_weight_step_computes_no_cka(tmp_path, teacher_path, monkeypatch):
    """The CKA functions the distiller's module uses refuse to run; the monitor (on by default,
    with its own CKA accumulator) still measures."""
    monkeypatch.setattr(CKAGroupLoss, 'forward', _refuse)
    patched = [name for name in CKA_FUNCTIONS if hasattr(ckagroup_module, name)]
    assert 'cka_from_grams' in patched
    for name in patched:
        monkeypatch.setattr(ckagroup_module, name, _refuse)
    assert _run(tmp_path, teacher_path, 'ckagroup', '-b', '0')['epochs'] == 1
    run_dir, records = _records(tmp_path)
    keys = set().union(*records)
    assert 'train/loss_cls' in keys and 'train/loss_div' in keys and 'monitor/group_mean' in keys
    assert not any('ckagroup' in key or key.startswith('cka/') for key in keys), keys
    assert not (run_dir / ckagroup_module.MATRICES_FILE).exists()
    assert (run_dir / GROUPS_FILE).exists()  # the monitor's groups


def test_ckagroup_zero_weight_without_monitor_taps_and_groups_nothing(tmp_path, teacher_path, monkeypatch):
    monkeypatch.setattr(CKAGroupLoss, 'forward', _refuse)
    monkeypatch.setattr(helper.train, 'pair_teacher_groups', _refuse)
    monkeypatch.setattr(models.taps.FeatureTap, '__init__', _refuse)
    assert _run(tmp_path, teacher_path, 'ckagroup', '-b', '0', '--no-cka_monitor')['epochs'] == 1
    run_dir, records = _records(tmp_path)
    assert not any('cka' in key or 'monitor' in key for key in set().union(*records))
    assert not (run_dir / GROUPS_FILE).exists()


def test_ckagroup_with_weight_still_needs_its_groups(tmp_path, teacher_path, monkeypatch):
    """The guard is the weight: -b 1 groups the teacher and taps the blocks as before."""
    monkeypatch.setattr(helper.train, 'pair_teacher_groups', _refuse)
    with pytest.raises(AssertionError, match='grouping was called'):
        _run(tmp_path, teacher_path, 'ckagroup', '-b', '1', '--no-cka_monitor')
