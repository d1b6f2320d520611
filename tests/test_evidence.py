"""experiments/ and scripts/evidence.py: the committed results reproduced and recognised, studies
read from TOML and refused in one line when wrong, the runner's paired runs with their reuse and
resume, the summary's statistics against independent computations, and the figures (checked
through matplotlib objects)."""
import dataclasses
import filecmp
import hashlib
import json
import math
import importlib
import os
import shutil
import sys
import time

import pytest
import torch

import models
from cka import random_split
from dataset import DatasetUnavailableError, build_datasets
from distiller_zoo import distiller_class
from experiments import cli, figures, provenance, stats
from experiments.report import ranked
from experiments.provenance import code_hash, fingerprint
from experiments.runner import StudyRunner
from experiments.study import load_study, study_names, with_budget
from experiments.summary import (COST_FILE, curve_axis_label, curves_and_flow_images, final_slope, flow_cka, load_runs,
                                 plateau, pre_decay_slope, summarise)
from runtime.errors import ConfigError
from conftest import FAMILY_ROWS, tiny_study_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, 'docs', 'results')
# every committed results folder with raw runs, and those with a summary
WITH_RUNS = sorted(n for n in os.listdir(RESULTS) if os.path.isdir(os.path.join(RESULTS, n, 'runs')))
WITH_SUMMARY = [n for n in WITH_RUNS if os.path.isfile(os.path.join(RESULTS, n, 'summary.json'))]


def _value(argv, flag):
    return argv[argv.index(flag) + 1]


# ---- the committed results stay valid ----

@pytest.mark.parametrize('name', WITH_SUMMARY)
def test_every_committed_summary_is_reproduced_byte_for_byte(name, tmp_path):
    folder = os.path.join(RESULTS, name)
    with open(os.path.join(folder, 'teacher.json')) as f:
        teacher = json.load(f)
    if os.path.exists(os.path.join(folder, COST_FILE)):  # a timing pass: the summary shows its ratios
        shutil.copy(os.path.join(folder, COST_FILE), tmp_path / COST_FILE)
    summarise(load_study(name), teacher, load_runs(folder), str(tmp_path), results_root=RESULTS)
    for file in ('summary.json', 'summary.md'):
        assert filecmp.cmp(os.path.join(folder, file), tmp_path / file, shallow=False), f'{name}/{file} changed'


@pytest.mark.parametrize('name', WITH_RUNS)
def test_every_committed_run_is_recognised_as_finished(name, tmp_path, monkeypatch):
    """Each raw record's fingerprint is what the study computes for its row and seed, and the
    runner takes the record as it is instead of training (a copy of the folder: nothing written)."""
    study, folder = load_study(name), os.path.join(RESULTS, name)
    with open(os.path.join(folder, 'teacher.json')) as f:
        teacher = json.load(f)
    assert teacher['fingerprint'] == fingerprint(study.teacher_argv())
    records = load_runs(folder)
    assert records
    for record in records:
        assert record['fingerprint'] == fingerprint(['teacher ' + teacher['digest']]
                                                    + study.student_argv(record['row'], record['seed'])), record['row']

    def no_training(*args, **kwargs):
        raise AssertionError('a finished run was trained again')
    monkeypatch.setattr('helper.train.run_student', no_training)
    shutil.copytree(folder, tmp_path / 'results' / name, ignore=shutil.ignore_patterns('*.png'))
    runner = StudyRunner(study, str(tmp_path / 'results'), str(tmp_path / 'work'), 'data')
    for record in records:
        assert runner.student(record['row'], record['seed'], teacher) == record


# ---- studies as data ----

def _write(folder, name: str, text: str) -> str:
    path = os.path.join(str(folder), f'{name}.toml')
    with open(path, 'w') as f:
        f.write(text)
    return path


def test_a_study_is_its_file_named_by_its_stem_and_a_shipped_one_by_its_name(tmp_path):
    path = _write(tmp_path, 'my_study', tiny_study_text())
    study = load_study(path)
    assert (study.name, study.source, list(study.rows)) == ('my_study', path, ['kd', 'ckagroup', 'random_groups'])
    assert study.student_argv('ckagroup', 1, ['--x']) == [
        '--model_s', 'resnet8', '--dataset', 'synthetic', '--epochs', '1', '--lr_decay_epochs', '1',
        '--learning_rate', '0.05', '--batch_size', '8', '--seed', '1', '--trial', 'ckagroup-seed1',
        '--train_per_class', '4', '--val_per_class', '4',
        '--distill', 'ckagroup', '-c', '1', '-d', '1', '-b', '5', '--cka_groups', '2',
        '--data_on_device', '--channels_last', '--x']
    assert study.teacher_argv() == [
        '--model', 'resnet8', '--dataset', 'synthetic', '--epochs', '1', '--lr_decay_epochs', '1',
        '--learning_rate', '0.05', '--batch_size', '8', '--seed', '0', '--trial', 'evidence',
        '--train_per_class', '4', '--val_per_class', '4', '--data_on_device', '--channels_last']
    shipped = load_study('resnet56_resnet8')
    assert shipped.name == 'resnet56_resnet8' and shipped.source == os.path.join('experiments', 'studies',
                                                                                 'resnet56_resnet8.toml')
    assert load_study(os.path.join(ROOT, shipped.source)).rows == shipped.rows
    with pytest.raises(ConfigError, match="'no_such_study' is no shipped study; name one of resnet32_mobilenetv2"):
        load_study('no_such_study')


def _edit(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


BAD_STUDIES = {  # what is wrong -> (the file's text, the key named, a piece of the refusal)
    'unknown key': (_edit(tiny_study_text(), 'reference =', 'refrence = "kd"\nreference ='),
                    'refrence', 'unknown key; remove it or use one of notes, dataset'),
    'unknown key in a table': (_edit(tiny_study_text(), '[student]\n', '[student]\nepoch = 3\n'), 'student.epoch',
                               'unknown key'),
    'missing key': (_edit(tiny_study_text(), 'seeds = [0, 1]\n', ''), 'seeds', 'missing; add it'),
    'missing key in a table': (_edit(tiny_study_text(), '[teacher]\nmodel = "resnet8"\n', '[teacher]\n'),
                               'teacher.model', 'missing; add it (a string in quotes)'),
    'a number in quotes': (_edit(tiny_study_text(), 'batch_size = 8\ntrain_per_class',
                                 'batch_size = "8"\ntrain_per_class'),
                           'student.batch_size', "'8' is not a positive whole number"),
    'decay epochs not as the flag takes them': (_edit(tiny_study_text(), 'lr_decay_epochs = "1"',
                                                      'lr_decay_epochs = "1 2"'),
                                                'teacher.lr_decay_epochs', 'e.g. "20,25"'),
    'a row name that cannot name a file': (tiny_study_text(rows='"one/two" = ["--distill", "kd"]'), 'rows.one/two',
                                           'a row name holds only letters, digits, _ and -'),
    'repeated seeds': (tiny_study_text(seeds='[0, 0]'), 'seeds', 'a non-empty list of distinct whole numbers'),
    'a row that is one string': (tiny_study_text(rows='one = "--distill kd -b 0"'), 'rows.one',
                                 'is not a list of train_student.py arguments as strings'),
    'a row with a number': (tiny_study_text(rows='one = ["--distill", "kd", "-b", 0]'), 'rows.one',
                            'is not a list of train_student.py arguments as strings'),
    'a flag train_student.py does not know': (tiny_study_text(rows='one = ["--distill", "kd", "--temperature", "4"]'),
                                              'rows.one', "'--temperature' is not an argument of train_student.py"),
    'a method that does not exist': (tiny_study_text(rows='one = ["--distill", "pkt"]'), 'rows.one',
                                     "argument --distill: invalid choice: 'pkt'"),
    'a value the method refuses': (tiny_study_text(rows='one = ["--distill", "ckagroup", "--cka_batches", "0"]'),
                                   'rows.one', '--cka_batches 0: give at least 1 batch'),
    'a row without a method': (tiny_study_text(rows='one = ["-b", "5"]'), 'rows.one', 'names no method'),
    'a row that changes the protocol': (tiny_study_text(rows='one = ["--distill", "kd", "--epochs", "5"]'), 'rows.one',
                                        'sets epochs, which the study\'s tables or the runner set for every run'),
    'a row that changes a local path': (tiny_study_text(rows='one = ["--distill", "kd", "--save_dir", "x"]'), 'rows.one',
                                        'sets save_dir'),
    'a teacher option train_teacher.py does not know': (
        _edit(tiny_study_text(), '"--data_on_device", "--channels_last"]', '"--data_on_device", "--distill", "kd"]'),
        'teacher.train_options', "'--distill' is not an argument of train_teacher.py"),
    'held-out images without a training subset': (
        _edit(tiny_study_text(validation='val_split_per_class = 4'), 'train_per_class = 4\nval_split', 'val_split'),
        'student', '--val_split_per_class holds images out after the training subset; give --train_per_class too'),
    'two validation sets': (tiny_study_text(validation='val_per_class = 4\nval_split_per_class = 4'), 'student',
                            'both choose the validation set'),
    'a headline that is no row': (_edit(tiny_study_text(), 'cka_row =', 'headline = "beta_20"\ncka_row ='),
                                  'headline', "'beta_20' is not a row; name one of kd, ckagroup, random_groups"),
    'a reference that is no row': (_edit(tiny_study_text(), 'reference = "kd"', 'reference = "KD"'), 'reference',
                                   "'KD' is not a row"),
    'a repeat without its study': (tiny_study_text() + '\n[repeats]\nkd = "kd"\n', 'repeats.kd',
                                   'is not "<study>/<row>"'),
    'a repeat of no shipped study': (tiny_study_text() + '\n[repeats]\nkd = "resnet56/kd"\n', 'repeats.kd',
                                     "'resnet56' is no shipped study"),
    'a repeat of no row': (tiny_study_text() + '\n[repeats]\nkd = "resnet56_resnet8/KD"\n', 'repeats.kd',
                           "resnet56_resnet8 has no row 'KD'; name one of kd, ckagroup"),
    'a repeat by no row': (tiny_study_text() + '\n[repeats]\nfitnet = "resnet56_resnet8/kd"\n', 'repeats.fitnet',
                           "'fitnet' is not a row"),
}


@pytest.mark.parametrize('case', list(BAD_STUDIES))
def test_a_bad_study_is_refused_in_one_line_naming_the_file_and_the_key(case, tmp_path):
    text, key, refusal = BAD_STUDIES[case]
    path = _write(tmp_path, 'bad', text)
    with pytest.raises(ConfigError) as refused:
        load_study(path)
    message = str(refused.value)
    assert '\n' not in message and message.startswith(f'{path}: {key}: ') and refusal in message, message


def test_bad_toml_is_refused_naming_the_file_and_the_line(tmp_path):
    path = _write(tmp_path, 'bad', _edit(tiny_study_text(), 'epochs = 1\n', 'epochs = \n'))
    with pytest.raises(ConfigError, match=r'bad\.toml: not valid TOML \(.*line 9.*\); fix the syntax there'):
        load_study(path)


def test_a_method_whose_head_the_evaluation_cannot_rebuild_is_refused(tmp_path, monkeypatch):
    path = _write(tmp_path, 'family', tiny_study_text(rows=FAMILY_ROWS))
    assert 'simkd' in load_study(path).rows
    monkeypatch.setattr('experiments.evaluation.DEPLOYED_HEADS', {})
    with pytest.raises(ConfigError, match=r'rows\.simkd: --distill simkd predicts through its own head'):
        load_study(path)


@pytest.mark.parametrize('name', study_names())
def test_a_row_named_after_a_method_uses_its_published_weight(name):
    """Rows named by their method run it at the -b of its scripts/<method>.sh, which the method's
    class holds (tests/test_zero_weight.py checks the scripts agree)."""
    study = load_study(name)
    for row, argv in study.rows.items():
        published = distiller_class(_value(argv, '--distill')).published_beta
        if row == _value(argv, '--distill') and published is not None:
            assert float(_value(argv, '-b')) == published, (name, row)


def test_the_cka_code_hash_covers_a_module_or_a_package(tmp_path, monkeypatch):
    """sha256 over each file's path relative to the top folder, a zero byte and its bytes, in path
    order: every .py of a package (subfolders too), and a module's file or, once it became a
    package, every .py of that package."""
    def hand_hash(files):
        sha = hashlib.sha256()
        for path in sorted(files):
            sha.update(path.encode() + b'\0' + (tmp_path / path).read_bytes())
        return sha.hexdigest()

    def tree(files):
        for path, text in files.items():
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_text(text)

    def forget_imports():
        for name in [n for n in sys.modules if n.split('.')[0] in ('hashed_math', 'hashed_zoo')]:
            del sys.modules[name]
        importlib.invalidate_caches()

    monkeypatch.syspath_prepend(str(tmp_path))
    tree({'hashed_math/__init__.py': 'A = 1\n', 'hashed_math/inner/deep.py': 'B = 2\n', 'hashed_math/notes.txt': 'x',
          'hashed_zoo/__init__.py': '', 'hashed_zoo/term.py': 'C = 3\n', 'hashed_zoo/other.py': 'D = 4\n'})
    modules = ('hashed_math', 'hashed_zoo.term')
    as_module = ['hashed_math/__init__.py', 'hashed_math/inner/deep.py', 'hashed_zoo/term.py']
    try:
        module_hash = code_hash(modules)
        assert module_hash == hand_hash(as_module)
        os.remove(tmp_path / 'hashed_zoo' / 'term.py')
        tree({'hashed_zoo/term/__init__.py': 'C = 3\n', 'hashed_zoo/term/loss.py': 'E = 5\n'})
        forget_imports()
        as_package = ['hashed_math/__init__.py', 'hashed_math/inner/deep.py', 'hashed_zoo/term/__init__.py',
                      'hashed_zoo/term/loss.py']
        assert code_hash(modules) == hand_hash(as_package) != module_hash
        package_hash = code_hash(modules)
        (tmp_path / 'hashed_math' / 'inner' / 'deep.py').write_text('B = 3\n')
        assert code_hash(modules) == hand_hash(as_package) != package_hash
    finally:
        forget_imports()


# ---- the runner ----

def test_a_researchers_study_runs_from_its_file_split_over_processes_then_is_reused_or_resumed(tmp_path, monkeypatch):
    results, work, data = str(tmp_path / 'results'), str(tmp_path / 'work'), str(tmp_path)
    path = _write(tmp_path, 'tiny', tiny_study_text())
    study = load_study(path)
    extra = ['--cka_batches', '2']
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the records must name the threads the runs trained with
    try:  # the seeds split over two processes, one after the other: the command line, then the runner
        assert cli.main(['run', path, '--results', results, '--work', work, '--data_folder', data,
                         '--seeds', '1', '--'] + extra) == 0
        first = json.load(open(os.path.join(results, 'tiny', 'summary.json')))
        summary = StudyRunner(with_budget(study, seeds=(0,)), results, work, data, extra=extra).run()
    finally:
        torch.set_num_threads(threads)
    runs = os.path.join(results, 'tiny', 'runs')
    assert sorted(os.listdir(runs)) == sorted(f'{r}_seed{s}.json' for r in study.rows for s in study.seeds)
    teacher = json.load(open(os.path.join(results, 'tiny', 'teacher.json')))
    assert teacher['train_images'] == 40 and teacher['epochs'] == 1 and teacher['cpu_threads'] == 1
    for name in os.listdir(runs):
        record = json.load(open(os.path.join(runs, name)))
        assert _value(record['argv'], '--seed') == str(record['seed']) and record['argv'][-2:] == extra
        assert record['test_images_full'] == 1000 and record['train_images'] == 40
        assert record['cpu_threads'] == 1
        if record['row'] == 'random_groups':
            assert record['teacher_split'] == 'random'
            assert record['teacher_groups'] == random_split(4, 2, record['seed'])  # resnet8: stem + 3 blocks
    assert first['rows']['ckagroup']['seeds'] == [1]
    assert summary['rows']['ckagroup']['seeds'] == [0, 1]  # the other process's runs are summarised too
    assert summary['rows']['ckagroup']['vs']['kd']['n'] == 2
    # the reported number: the last checkpoint's own top-1 over the whole test set, counted here by hand
    record = json.load(open(os.path.join(runs, 'kd_seed0.json')))
    folder = os.path.join(work, 'tiny', 'kd_seed0', 'students')
    checkpoint = torch.load(os.path.join(folder, os.listdir(folder)[0], 'ckpt_last.pth'), weights_only=True)
    model = models.build_model('resnet8', num_classes=10)
    model.load_state_dict(checkpoint['model'])
    model.eval()
    test_set = build_datasets('synthetic', None).val
    with torch.no_grad():
        correct = sum(int((model(images).argmax(dim=1) == labels).sum())
                      for images, labels in torch.utils.data.DataLoader(test_set, batch_size=500))
    assert record['test_top1_full'] == pytest.approx(100.0 * correct / len(test_set), abs=1e-4)

    def no_training(*args, **kwargs):
        raise AssertionError('a finished run was trained again')
    monkeypatch.setattr('helper.train.run_student', no_training)
    monkeypatch.setattr('helper.train.run_teacher', no_training)
    StudyRunner(study, results, work, data, extra=extra).run()
    monkeypatch.undo()

    # an interrupted run: its raw JSON is not there yet, its run folder holds the last checkpoint
    os.remove(os.path.join(runs, 'kd_seed1.json'))
    log = []
    again = StudyRunner(study, results, work, data, extra=extra, log=log.append).run()
    assert log == ['== teacher resnet8: reused (' + os.path.join(results, 'tiny', 'teacher.json') + ')',
                   '== kd, seed 1 (resuming)']
    assert again['rows']['kd']['top1'] == summary['rows']['kd']['top1']
    assert json.load(open(os.path.join(runs, 'kd_seed1.json')))['resumed'] is True

    # another study with the same teacher and rows reuses the finished runs (no student trains)
    monkeypatch.setattr('helper.train.run_student', no_training)
    sibling = with_budget(study, name='tiny_sibling', rows={r: study.rows[r] for r in ('kd', 'ckagroup')})
    StudyRunner(sibling, results, work, data, extra=extra).run()
    monkeypatch.undo()
    reused = json.load(open(os.path.join(results, 'tiny_sibling', 'runs', 'ckagroup_seed1.json')))
    assert reused['reused_from'] == os.path.join('tiny', 'runs', 'ckagroup_seed1.json')

    # other settings never mix with the stored runs
    with pytest.raises(ConfigError, match='other settings'):
        StudyRunner(study, results, work, data, extra=['--cka_batches', '3']).run()


def _hand_projector(state: dict, s_n: int, t_n: int) -> torch.nn.Module:
    """SimKD's bottleneck as its paper and repo define it (1x1, 3x3, 1x1 convs without bias, each with
    BN and ReLU, width t_n / 2), loaded from the checkpoint's 'proj' entry (the SimKD repo's keys)."""
    nn, mid = torch.nn, t_n // 2
    projector = nn.Sequential(nn.Conv2d(s_n, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                              nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                              nn.Conv2d(mid, t_n, 1, bias=False), nn.BatchNorm2d(t_n), nn.ReLU())
    projector.load_state_dict({key[len('transfer.'):]: value for key, value in state.items()})
    return projector.eval()


def _hand_cka_code_hash() -> str:
    """Every .py under cka/ and distiller_zoo/ckagroup/, hashed here from the files themselves."""
    files = []
    for top in ('cka', os.path.join('distiller_zoo', 'ckagroup')):
        for parent, _, names in os.walk(os.path.join(ROOT, top)):
            files += [os.path.relpath(os.path.join(parent, n), ROOT) for n in names if n.endswith('.py')]
    sha = hashlib.sha256()
    for path in sorted(files):
        sha.update(path.encode() + b'\0' + open(os.path.join(ROOT, path), 'rb').read())
    return sha.hexdigest()


@pytest.mark.parametrize('asked, recorded', [('auto', 'cuda (Fake GPU)'), ('cpu', 'cpu'), ('cuda:0', 'cuda (Fake GPU)')])
def test_a_record_names_the_device_the_run_asked_for_not_merely_one_that_exists(tmp_path, monkeypatch, asked, recorded):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)  # a GPU present, also for --device cpu runs
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: 'Fake GPU')
    (tmp_path / 'options.json').write_text(json.dumps({'device': asked, 'requested_learning_rate': 0.05,
                                                       'learning_rate': 0.01}))
    environment = provenance.run_environment(str(tmp_path))
    assert environment['device'] == recorded
    assert (environment['learning_rate_requested'], environment['learning_rate_effective']) == (0.05, 0.01)


def test_every_method_runs_on_held_out_curves_and_is_evaluated_as_deployed(tmp_path):
    results, work = str(tmp_path / 'results'), str(tmp_path / 'work')
    study = load_study(_write(tmp_path, 'tiny_family', tiny_study_text(seeds='[0]', validation='val_split_per_class = 4',
                                                                  rows=FAMILY_ROWS)))
    StudyRunner(study, results, work, str(tmp_path), extra=['--cka_batches', '2']).run()
    runs = os.path.join(results, 'tiny_family', 'runs')
    records = {r['row']: r for r in load_runs(os.path.join(results, 'tiny_family'))}
    assert set(records) == set(study.rows)
    for row, record in records.items():
        assert '--data_on_device' in record['argv'] and _value(record['argv'], '--val_split_per_class') == '4'
        assert '--val_per_class' not in record['argv'] and 'held out' in record['curve_val_images']
        assert record['cka_code_hash'] == provenance.CKA_CODE_HASH == _hand_cka_code_hash()
        assert record['learning_rate_requested'] == record['learning_rate_effective'] == 0.05
        assert record['cpu_model'] and record['test_images_full'] == 1000
        assert record['monitor_matrix'] is not None  # the CKA monitor ran on the held-out images
    assert 'simkd' in records['simkd']['deployed'] and records['kd']['deployed'] == 'the model alone'
    # SimKD's number: its student's features through the trained projector and the teacher's classifier,
    # rebuilt by hand from the checkpoint's 'proj' entry and the teacher checkpoint
    folder = os.path.join(work, 'tiny_family', 'simkd_seed0', 'students')
    checkpoint = torch.load(os.path.join(folder, os.listdir(folder)[0], 'ckpt_last.pth'), weights_only=True)
    teacher_record = json.load(open(os.path.join(results, 'tiny_family', 'teacher.json')))
    student, teacher = (models.build_model('resnet8', num_classes=10) for _ in range(2))
    student.load_state_dict(checkpoint['model'])
    teacher.load_state_dict(torch.load(teacher_record['checkpoint'], weights_only=True)['model'])
    student.eval()
    projector = _hand_projector(checkpoint['proj'], 64, 64)  # resnet8's last stage: 64 channels
    test_set = build_datasets('synthetic', None).val
    with torch.no_grad():
        correct = 0
        for images, labels in torch.utils.data.DataLoader(test_set, batch_size=500):
            pooled = projector(student(images, is_feat=True)[0][-2]).mean(dim=(2, 3))
            correct += int((teacher.get_classifier()(pooled).argmax(dim=1) == labels).sum())
    assert records['simkd']['test_top1_full'] == pytest.approx(100.0 * correct / len(test_set), abs=1e-4)
    assert sorted(os.listdir(runs)) == sorted(f'{row}_seed0.json' for row in study.rows)


def test_the_teacher_record_keeps_its_training_time(tmp_path):
    results, work = str(tmp_path / 'results'), str(tmp_path / 'work')
    only_kd = load_study(_write(tmp_path, 'tiny_kd', tiny_study_text(seeds='[0]', rows='')))

    def teacher_of(study):
        return StudyRunner(study, results, work, str(tmp_path), extra=['--cka_batches', '2']).teacher()
    trained = teacher_of(only_kd)
    assert trained['seconds'] > 0 and trained['cpu_model'] and trained['learning_rate_requested'] == 0.05
    # teacher.json lost, its finished run reopened: the record still gives the time it trained
    os.remove(os.path.join(results, 'tiny_kd', 'teacher.json'))
    reopened = teacher_of(only_kd)
    assert reopened['seconds'] == trained['seconds'] and reopened['digest'] == trained['digest']
    # another study of the same teacher copies the record, naming where it came from
    sibling = teacher_of(with_budget(only_kd, name='tiny_kd_sibling'))
    assert sibling['reused_from'] == os.path.join('tiny_kd', 'teacher.json')
    assert sibling['seconds'] == trained['seconds'] and sibling['cpu_model'] == trained['cpu_model']


def test_a_data_set_that_cannot_be_had_is_refused_in_one_line_before_anything_trains(tmp_path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError('trained before the check')

    def unavailable(*args, **kwargs):
        raise DatasetUnavailableError('synthetic is not in /nowhere; pass --data_folder')
    monkeypatch.setattr('helper.train.run_teacher', no_training)
    monkeypatch.setattr('helper.setup.build_datasets', unavailable)
    study = load_study(_write(tmp_path, 'tiny', tiny_study_text()))
    with pytest.raises(ConfigError, match=r'^synthetic is not in /nowhere; pass --data_folder$'):
        StudyRunner(study, str(tmp_path / 'results'), str(tmp_path / 'work'), '/nowhere').run()


def test_too_few_held_out_images_for_the_cka_monitor_are_refused_before_anything_trains(tmp_path, monkeypatch):
    """4 batches of 8 from 10 classes x 3 images: 30 < 32."""
    def no_training(*args, **kwargs):
        raise AssertionError('trained before the check')
    monkeypatch.setattr('helper.train.run_teacher', no_training)
    study = load_study(_write(tmp_path, 'small', tiny_study_text(validation='val_per_class = 3')))
    with pytest.raises(ConfigError, match=r'small\.toml: student\.val_per_class: leaves 30 held-out images, fewer '
                                          r'than the CKA monitor\'s 4 batches of 8; raise it'):
        StudyRunner(study, str(tmp_path / 'results'), str(tmp_path / 'work'), str(tmp_path)).run()


def test_teacher_only_trains_the_teacher_and_no_student(tmp_path, monkeypatch, capsys):
    results, work = str(tmp_path / 'results'), str(tmp_path / 'work')
    path = _write(tmp_path, 'tiny', tiny_study_text())

    def no_student(*args, **kwargs):
        raise AssertionError('a student trained under --teacher_only')
    monkeypatch.setattr('helper.train.run_student', no_student)
    assert cli.main(['run', path, '--teacher_only', '--results', results, '--work', work,
                     '--data_folder', str(tmp_path)]) == 0
    assert sorted(os.listdir(os.path.join(results, 'tiny'))) == ['teacher.json']
    teacher = json.load(open(os.path.join(results, 'tiny', 'teacher.json')))
    assert teacher['epochs'] == 1 and teacher['train_images'] == 10 * 4 and os.path.isfile(teacher['checkpoint'])
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith(f'tiny: teacher resnet8 {teacher["test_top1_full"]:.2f} on the full test set')


def test_the_command_line_refuses_smoke_budgets_in_docs_results_and_lists_the_shipped_studies(capsys):
    assert cli.main(['run', 'resnet56_resnet8', '--epochs', '2']) == 2
    assert 'budget overrides (epochs) make smoke results, not evidence' in capsys.readouterr().err
    assert cli.main(['run', 'resnet56_resnet8', '--seeds', '4', '5']) == 2  # 5 is not declared (0-4)
    assert 'budget overrides (seeds)' in capsys.readouterr().err
    assert cli.main(['summarise', 'no_such_study']) == 2
    assert capsys.readouterr().err.startswith("error: 'no_such_study' is no shipped study")
    declared = load_study('resnet56_resnet8')
    split = cli.budgeted_study(cli.parser().parse_args(['run', 'resnet56_resnet8', '--seeds', '3', '1']), declared)
    assert split.seeds == (3, 1) and split.student == declared.student and split.teacher == declared.teacher
    assert cli.main(['list']) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split(':')[0] for line in listed] == study_names()
    assert f'resnet56_resnet8: resnet56 -> resnet8, seeds {list(declared.seeds)}' in listed[study_names().index(
        'resnet56_resnet8')]


# ---- the summary ----

def test_plateau_slopes_and_flow_cka_by_hand():
    assert plateau([1, 2, 3, 4], window=2) == pytest.approx(3.5 - 1.5)
    assert plateau([1, 2, 3], window=2) is None
    # slope of (0, 1), (1, 3), (2, 2): sum((x - 1)(y - 2)) / sum((x - 1)^2) = (-1 * -1 + 1 * 0) / 2
    assert final_slope([9, 1, 3, 2], window=3) == pytest.approx(0.5)
    assert final_slope([5.0] * 6) == pytest.approx(0.0)
    assert final_slope([1, 2], window=3) is None
    # first decay after epoch 4: epochs 2-4 hold 1, 3, 2 -> slope 0.5 as above; the flat end after it is ignored
    assert pre_decay_slope([9, 1, 3, 2, 7, 7, 7], '4,6', window=3) == pytest.approx(0.5)
    assert pre_decay_slope([0, 1, 2, 3, 4, 5], '6,5', window=2) == pytest.approx(1.0)  # epochs 4-5
    assert pre_decay_slope([1, 2, 3], '5', window=3) is None  # the curve stops before the decay
    record = {'monitor_matrix': [[0.9, 0.5, 0.1], [0.2, 0.6, 0.8], [0.0, 0.3, 0.4]]}
    # student layers split evenly in two: [0, 1] and [2]; CKA groups [0, 1] and [2]:
    # mean(0.9, 0.5, 0.2, 0.6) = 0.55 and 0.4 -> 0.475
    assert flow_cka(record, [[0, 1], [2]]) == pytest.approx(0.475)
    assert flow_cka(record, None) is None


def _fake_run(row, seed, top1, curve, groups=None, split='cka'):
    return {'row': row, 'seed': seed, 'test_top1_full': top1, 'curve': curve, 'epoch_seconds': 1.0,
            'teacher_groups': groups, 'teacher_split': split, 'monitor_matrix': None, 'argv': []}


TEACHER = {'model': 'resnet56', 'epochs': 3, 'train_images': 50000, 'test_top1_full': 90.0,
           'plateau_gain': None, 'seconds': 1.0}


def test_the_ranked_table_orders_rows_by_mean_top1_with_holm_p_and_cost():
    def row(mean, std, seeds, vs=None, verdict=None, cost=None):
        r = {'seeds': seeds, 'top1': {'mean': mean, 'std': std}, 'vs': {'kd': vs} if vs else {}, 'step_cost': cost}
        return dict(r, verdict=verdict) if verdict else r
    vs = {'n': 3, 'mean': 1.5, 'low': 0.25, 'high': 2.75, 'holm_p': 0.0004}
    summary = {'step_cost': {'repeats': 15}, 'rows': {
        'kd': row(70.0, 0.5, [0, 1, 2], cost=1.0),
        'crd': row(69.0, None, [0], vs=dict(vs, n=1, mean=-1.0, low=None, high=None, holm_p=None),
                   verdict='no difference found', cost=2.5),
        'hint': row(71.5, 0.25, [0, 1, 2], vs=vs, verdict='ahead', cost=1.01)}}
    assert ranked(summary, 'kd').splitlines()[2:] == [
        '| rank | row | seeds | top-1 | vs kd | Holm p | verdict | step / kd |',
        '|---|---|---|---|---|---|---|---|',
        '| 1 | hint | 3 | 71.50 ± 0.25 | +1.50 [+0.25, +2.75] (n=3) | 4.0e-04 | ahead | 1.01 |',
        '| 2 | kd | 3 | 70.00 ± 0.50 | – | – | – | 1.00 |',
        '| 3 | crd | 1 | 69.00 | -1.00 (n=1, no interval) | – | no difference found | 2.50 |']
    del summary['step_cost']  # not timed: no cost column
    assert ranked(summary, 'kd').splitlines()[2] == '| rank | row | seeds | top-1 | vs kd | Holm p | verdict |'


def test_summary_from_raw_runs_by_hand(tmp_path):
    study = with_budget(load_study('resnet56_resnet8'), seeds=(0, 1, 2))
    accuracy = {'kd': [60.0, 62.0, 61.0], 'ckagroup': [61.0, 62.5, 61.0], 'random_groups': [60.5, 63.0]}
    records = [_fake_run(row, s, v, [v - 2, v], [[s], [s + 1]], 'random' if row == 'random_groups' else 'cka')
               for row, vs in accuracy.items() for s, v in enumerate(vs)]
    summary = summarise(study, TEACHER, records, str(tmp_path))
    rows = summary['rows']
    assert list(rows) == ['kd', 'ckagroup', 'random_groups']
    assert rows['ckagroup']['top1']['mean'] == pytest.approx(61.5)
    vs_kd = rows['ckagroup']['vs']['kd']  # differences 1.0, 0.5, 0.0: mean 0.5, sd 0.5, t(2) = 4.302653
    assert vs_kd['n'] == 3 and vs_kd['mean'] == pytest.approx(0.5)
    assert vs_kd['half_width'] == pytest.approx(4.302653 * 0.5 / 3 ** 0.5, abs=1e-5)
    assert rows['random_groups']['vs']['ckagroup']['n'] == 2  # paired over the seeds both have
    assert rows['random_groups']['random_partitions'] == ['[[0], [1]]', '[[1], [2]]']
    assert rows['ckagroup']['random_partitions'] is None  # its groups are no draw
    assert 'kd' not in rows['kd']['vs']
    # paired t-tests against KD: t = 0.5 / (0.5 / sqrt 3) = sqrt 3 on 2 degrees of freedom, where
    # P(|T| >= t) = 1 - t / sqrt(2 + t^2); random_groups: differences 0.5, 1.0 -> t = 0.75 / 0.25 = 3 on
    # 1 degree of freedom (Cauchy), P = 1 - (2 / pi) atan 3
    p_cka, p_random = 1 - math.sqrt(3) / math.sqrt(5), 1 - 2 / math.pi * math.atan(3)
    assert vs_kd['p'] == pytest.approx(p_cka) and vs_kd['ahead'] == 2
    assert rows['random_groups']['vs']['kd']['p'] == pytest.approx(p_random)
    # Holm over the study's declared family of four comparisons with kd (two of them without runs
    # yet, counted as the largest p): 4 x 0.2048 = 0.819 for the smaller, max(0.819, 3 x 0.2254) for the other
    assert vs_kd['holm_p'] == rows['random_groups']['vs']['kd']['holm_p'] == pytest.approx(4 * p_random)
    assert rows['ckagroup']['verdict'] == rows['random_groups']['verdict'] == 'no difference found'
    assert 'verdict' not in rows['kd']
    table = open(tmp_path / 'summary.md').read()
    assert 'Low data: the student trains on 500 images per class' in table
    assert '| ckagroup | 3 | 61.50 ± 0.87 | +0.50 [-0.74, +1.74] (n=3) | 0.225 | 0.819 | 2/3 | no difference found |' in table
    assert 'Curves and flow CKA: test images' in table  # the older studies evaluated each epoch on test images
    assert 'its per-epoch curve on the first 200 test images per class' in table  # the teacher's, as declared
    assert 'rank' in table and 'Ranked by mean top-1 over seeds 0, 1, which every row has' in table
    assert json.load(open(tmp_path / 'summary.json'))['rows']['kd']['seeds'] == [0, 1, 2]
    assert (tmp_path / 'curves.png').stat().st_size > 0 and (tmp_path / 'forest.png').stat().st_size > 0


def test_the_summary_says_where_each_run_trained(tmp_path):
    """A study whose seeds ran on two machines (float32 rounds differently there) says which runs
    ran where, in summary.json and in summary.md."""
    study = with_budget(load_study('resnet56_resnet8'), seeds=(0, 1, 2))
    amd = {'device': 'cpu', 'cpu_model': 'AMD EPYC', 'torch_cpu_capability': 'AVX2'}
    xeon = {'device': 'cpu', 'cpu_model': 'Intel(R) Xeon(R) Processor', 'torch_cpu_capability': 'AVX512'}
    where = {('kd', 0): amd, ('kd', 1): amd, ('kd', 2): xeon, ('ckagroup', 0): amd, ('ckagroup', 2): xeon}
    records = [dict(_fake_run(row, s, 60.0 + s, [60.0]), **machine) for (row, s), machine in where.items()]
    records.append(dict(_fake_run('ckagroup', 1, 61.0, [61.0]), argv=['--amp']))  # before machines were recorded
    summary = summarise(study, TEACHER, records, str(tmp_path))
    assert summary['trained_on'] == {
        'AMD EPYC, AVX2, float32': {'kd': [0, 1], 'ckagroup': [0]},
        'Intel(R) Xeon(R) Processor, AVX512, float32': {'kd': [2], 'ckagroup': [2]},
        'device not recorded, capability not recorded, bf16 --amp': {'ckagroup': [1]}}
    assert ('Trained on (CPU model or GPU, torch CPU capability, precision): AMD EPYC, AVX2, float32: kd seeds 0-1, '
            'ckagroup seed 0; Intel(R) Xeon(R) Processor, AVX512, float32: kd seed 2, ckagroup seed 2; device not '
            'recorded, capability not recorded, bf16 --amp: ckagroup seed 1') in open(tmp_path / 'summary.md').read()


def test_while_rows_have_different_seeds_the_ranking_uses_the_seeds_every_row_has(tmp_path):
    study = with_budget(load_study('resnet56_resnet8'), seeds=(0, 1, 2))
    # kd's seed 2 is low: over its own seeds kd (66.0) would rank below 'ckagroup' (67.0), which is
    # behind kd on both seeds the two share
    accuracy = {'kd': {0: 70.0, 1: 68.0, 2: 60.0}, 'ckagroup': {0: 68.0, 1: 66.0}}
    records = [_fake_run(row, s, v, [v]) for row, vs in accuracy.items() for s, v in vs.items()]
    summary = summarise(study, TEACHER, records, str(tmp_path))
    assert summary['ranked_on_seeds'] == [0, 1]
    assert summary['rows']['kd']['top1_on_ranked_seeds']['mean'] == 69.0
    assert summary['rows']['kd']['top1']['mean'] == 66.0  # the main table keeps each row's own seeds
    table = ranked(summary, 'kd').splitlines()
    assert table[4].startswith('| 1 | kd | 3 | 69.00 ± 1.41 |') and table[5].startswith('| 2 | ckagroup | 2 | 67.00 ± 1.41 |')
    # every row at the same seeds: ranked on them, no note
    complete = [r for r in records if r['seed'] != 2]
    summary = summarise(study, TEACHER, complete, str(tmp_path))
    assert 'ranked_on_seeds' not in summary and ranked(summary, 'kd').startswith('Ranked by mean top-1:\n')
    # no seed shared by every row: each row's own seeds, said so
    apart = [_fake_run('kd', 0, 70.0, [70.0]), _fake_run('ckagroup', 1, 71.0, [71.0])]
    summary = summarise(study, TEACHER, apart, str(tmp_path))
    assert summary['ranked_on_seeds'] == [] and 'no seed is common to every row' in ranked(summary, 'kd')


def test_a_summary_refuses_step_costs_timed_against_another_reference(tmp_path):
    study = with_budget(load_study('resnet56_resnet8'), seeds=(0,))
    (tmp_path / 'cost.json').write_text(json.dumps({'reference': 'ckagroup', 'rows': {'kd': {'ratio': 0.7}}}))
    with pytest.raises(ConfigError, match=r"steps timed against 'ckagroup', not the study's reference 'kd'; time them"):
        summarise(study, TEACHER, [_fake_run('kd', 0, 70.0, [70.0])], str(tmp_path))


def test_a_repeating_row_sits_beside_the_earlier_runs_of_its_seeds(tmp_path):
    """[repeats]: per seed that both ran, the two top-1s, their difference and each run's setting."""
    study = load_study(_write(tmp_path, 'again', tiny_study_text(seeds='[0, 1, 2]') +
                              '\n[repeats]\nckagroup = "resnet56_resnet8/ckagroup"\n'))
    earlier = tmp_path / 'results' / 'resnet56_resnet8' / 'runs'
    earlier.mkdir(parents=True)
    old = {'row': 'ckagroup', 'argv': ['--seed', '0', '--val_per_class', '200', '--amp'],  # before devices and
           'torch_cpu_capability': 'AVX512'}                                                  # CPU models were recorded
    for seed, top1 in ((0, 70.0), (1, 71.5), (3, 60.0)):
        (earlier / f'ckagroup_seed{seed}.json').write_text(json.dumps(dict(old, seed=seed, test_top1_full=top1)))
    new = {'argv': ['--seed', '0', '--val_split_per_class', '200', '-b', '5'], 'device': 'cpu', 'cpu_model': 'AMD EPYC',
           'torch_cpu_capability': 'AVX2', 'cka_code_hash': 'abcdef0123456789'}
    records = [dict(_fake_run(row, seed, top1, [top1]), **new) for row, seed, top1 in
               (('kd', 0, 69.0), ('kd', 1, 70.0), ('kd', 2, 70.0), ('ckagroup', 0, 70.75), ('ckagroup', 1, 71.0),
                ('ckagroup', 2, 72.0))]
    out = tmp_path / 'results' / 'again'
    out.mkdir()
    summary = summarise(study, TEACHER, records, str(out))
    this, then = 'AMD EPYC, AVX2, float32, CKA code abcdef012345', 'device not recorded, AVX512, bf16 --amp, ' \
                                                                   'CKA code not recorded'
    flags = ['--amp: on -> absent', '--val_per_class: 200 -> absent', '--val_split_per_class: absent -> 200',
             '-b: absent -> 5.0']  # as the parser reads it
    repeat = summary['repeats']['ckagroup']
    assert repeat['of'] == 'resnet56_resnet8/ckagroup' and repeat['seeds'] == {  # seed 2: not run then
        '0': {'top1': 70.75, 'earlier_top1': 70.0, 'difference': 0.75, 'setting': this, 'earlier_setting': then,
              'argument_differences': flags},
        '1': {'top1': 71.0, 'earlier_top1': 71.5, 'difference': -0.5, 'setting': this, 'earlier_setting': then,
              'argument_differences': flags}}
    # by hand: differences 0.75 and -0.5; this study's seeds 70.75, 71, 72 (variance 0.875 / 2), the
    # earlier's 70, 71.5, 60 (mean 67.1667, variance 78.1667 / 2)
    assert (repeat['shift']['mean'], repeat['shift']['n']) == (pytest.approx(0.125), 2)
    assert repeat['shift']['high'] == pytest.approx(0.125 + 12.7062047 * 0.625)  # t(0.975, 1) x sd 0.8839 / sqrt 2
    assert repeat['rms_difference'] == pytest.approx((0.40625) ** 0.5)
    assert repeat['different_seeds_rms'] == pytest.approx((0.4375 + 39.0833333) ** 0.5)
    table = (out / 'summary.md').read_text()
    assert (f'| ckagroup | resnet56_resnet8/ckagroup | 1 | 71.00 | 71.50 | -0.50 | {this} | {then} | '
            + '; '.join(flags) + ' |') in table
    assert '- ckagroup: shift +0.12 [-7.82, +8.07] (n=2), p 0.874; RMS 0.64 against 6.29 between seeds' in table
    assert 'repeats' not in summarise(with_budget(study, repeats={}), TEACHER, records, str(out))


def test_verdicts_need_a_holm_adjusted_p_below_005(tmp_path):
    study = load_study('resnet56_resnet8')
    kd = [60.0, 61.0, 62.0, 63.0, 64.0]
    accuracy = {'kd': kd, 'ckagroup': [v + d for v, d in zip(kd, (2.0, 2.1, 1.9, 2.0, 2.05))],  # always ~2 ahead
                'one_group': [v - d for v, d in zip(kd, (1.0, 1.1, 0.9, 1.0, 1.0))],       # always ~1 behind
                'even_groups': [v + d for v, d in zip(kd, (3.0, -2.0, 1.0, -1.5, 0.5))]}   # noise
    records = [_fake_run(row, s, v, [v]) for row, vs in accuracy.items() for s, v in enumerate(vs)]
    rows = summarise(study, TEACHER, records, str(tmp_path))['rows']
    assert (rows['ckagroup']['verdict'], rows['one_group']['verdict'], rows['even_groups']['verdict']) == \
        ('ahead', 'behind', 'no difference found')
    assert (rows['ckagroup']['vs']['kd']['ahead'], rows['one_group']['vs']['kd']['ahead']) == (5, 0)
    assert json.load(open(tmp_path / 'summary.json'))['family_of_tests'] == \
        {'against': 'kd', 'tests': 4, 'adjustment': 'Holm', 'alpha': 0.05}  # random_groups: declared, not run


def test_learning_curve_figure_has_one_line_per_row_and_bands_for_several_seeds():
    figure = figures.learning_curves({'kd': [[1, 2, 3], [2, 3, 4]], 'ckagroup': [[1, 3, 5]]}, 'pair',
                                     'top-1 (%) on held-out training images')
    axes = figure.axes[0]
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ['kd (n=2)', 'ckagroup (n=1)']
    assert list(axes.lines[0].get_ydata()) == [1.5, 2.5, 3.5]
    assert len(axes.collections) == 1  # the band of kd only
    assert axes.get_xlabel() == 'epoch' and axes.get_ylabel() == 'top-1 (%) on held-out training images'
    figures.plt.close(figure)


def test_forest_plot_has_an_error_bar_per_interval():
    diffs = {'ckagroup': stats.paired_difference({0: 2, 1: 3, 2: 3.5}, {0: 1, 1: 1, 2: 2}),
             'even_groups': stats.paired_difference({0: 1, 1: 0, 2: 1}, {0: 1, 1: 1, 2: 2}),
             'one_seed': stats.paired_difference({0: 4}, {0: 1})}
    figure = figures.forest_plot(diffs, 'kd', 'pair')
    axes = figure.axes[0]
    assert len(axes.containers) == 2  # one ErrorbarContainer per row with an interval
    bar = axes.containers[0]
    (segments,) = bar.lines[2]
    x_low, x_high = segments.get_segments()[0][:, 0]
    assert (x_low, x_high) == pytest.approx((diffs['ckagroup']['low'], diffs['ckagroup']['high']))
    assert [t.get_text() for t in axes.get_yticklabels()] == ['ckagroup (n=3)', 'even_groups (n=3)', 'one_seed (n=1)']
    assert axes.get_xlabel().startswith('top-1 minus kd') and '95%' in axes.get_xlabel()
    figures.plt.close(figure)


@pytest.mark.parametrize('study, record, prose, axis', [
    (load_study('resnet56_resnet8_family'),
     'per epoch on 200 training images per class held out after the first 500 (--val_split_per_class)',
     '200 training images per class held out after the students\' 500', 'top-1 (%) on held-out training images'),
    (load_study('resnet56_resnet8'), 'per-epoch on --val_per_class', 'test images: the first 200 per class',
     'top-1 (%) on test images (subset)'),
    (with_budget(load_study('resnet56_resnet8'), student_val_per_class=0), 'per epoch on the full test set',
     'the full test set', 'test top-1 (%)')])
def test_the_records_the_summary_and_its_figure_name_the_same_curve_images(tmp_path, study, record, prose, axis):
    assert StudyRunner(study, str(tmp_path), str(tmp_path), str(tmp_path))._curve_images() == record
    assert curves_and_flow_images(study).startswith(prose) and curve_axis_label(study) == axis


def test_the_second_teacher_differs_from_the_first_only_by_seed_and_declared_precision():
    """Issue #28 item 8: the first pair's teacher recipe with seed 1; float32 instead of bf16 --amp
    is the one other change (declared in the study file), and the students' protocol and rows are
    the family comparison's."""
    first, family = load_study('resnet56_resnet8'), load_study('resnet56_resnet8_family')
    second = load_study('resnet56_resnet8_teacher_seed1')
    assert second.teacher == dataclasses.replace(first.teacher, seed=1, train_options=('--data_on_device',
                                                                                       '--channels_last'))
    assert first.teacher.seed == 0 and '--amp' in first.teacher.train_options
    assert second.student == family.student
    assert {row: second.rows[row] for row in second.rows} == {row: family.rows[row] for row in
                                                            ('kd', 'ckagroup_b20', 'ckagroup_b20_even')}


def test_the_headline_meets_each_other_method_in_a_holm_family_of_its_own(tmp_path):
    """Family comparison, 3 seeds: ckagroup_b20 (headline) against the rows of other methods than
    ckagroup and kd; by hand with the t distribution of 2 degrees of freedom, P(|T| < t) =
    t / sqrt(t^2 + 2), and Holm over the 8 declared family methods (5 of them not run: the
    adjustment counts them)."""
    study = with_budget(load_study('resnet56_resnet8_family'), seeds=(0, 1, 2))
    headline = [70.0, 71.0, 72.0]
    gaps = {'hint': (1.0, 1.1, 0.9), 'similarity': (3.0, 3.2, 2.8), 'attention': (0.5, -0.5, 0.0),
            'kd': (5.0, 5.0, 5.0), 'ckagroup_b20_even': (1.0, 1.1, 0.9)}  # the last two: not of the family
    records = [_fake_run('ckagroup_b20', s, v, [v]) for s, v in enumerate(headline)]
    records += [_fake_run(row, s, v - g, [v - g]) for row, gap in gaps.items() for s, (v, g) in
                enumerate(zip(headline, gap))]
    against = summarise(study, TEACHER, records, str(tmp_path))['headline_vs_methods']
    assert against['headline'] == 'ckagroup_b20' and against['family_of_tests']['tests'] == 8
    assert list(against['rows']) == ['hint', 'attention', 'similarity']

    def p(mean, sd):
        t = mean / (sd / math.sqrt(3))
        return 1 - t / math.sqrt(t * t + 2) if t else 1.0
    p_hint, p_similarity = p(1.0, 0.1), p(3.0, 0.2)
    expected = {'similarity': (3.0, 8 * p_similarity, 'ahead'), 'hint': (1.0, 7 * p_hint, 'ahead'),
                'attention': (0.0, 1.0, 'no difference found')}
    for row, (mean, holm_p, verdict) in expected.items():
        d = against['rows'][row]
        assert (d['mean'], d['holm_p'], d['verdict']) == (pytest.approx(mean, abs=1e-9), pytest.approx(holm_p),
                                                          verdict), row
    assert against['rows']['hint']['ahead'] == 3 and against['rows']['attention']['ahead'] == 1
    table = (tmp_path / 'summary.md').read_text()
    assert f'| similarity | +3.00 [{3 - 4.30265273 * 0.2 / math.sqrt(3):+.2f}, {3 + 4.30265273 * 0.2 / math.sqrt(3):+.2f}]' \
           f' (n=3) | {p_similarity:.3f} | {8 * p_similarity:.3f} | 3/3 | ahead |' in table
    # a study whose headline meets no other method has no such table
    second = summarise(load_study('resnet56_resnet8_teacher_seed1'), TEACHER,
                       [r for r in records if r['row'] in ('kd', 'ckagroup_b20', 'ckagroup_b20_even')], str(tmp_path))
    assert 'headline_vs_methods' not in second


def test_processes_running_one_study_pass_by_a_run_in_progress_and_wait_for_the_teacher(tmp_path):
    """Two processes over all the rows: a run locked by another process is passed by (not trained
    twice), a finished one is read without its lock, a teacher in training is waited for, and a
    lock dies with its process."""
    import subprocess
    from experiments.runner import run_lock
    results, work = str(tmp_path / 'results'), str(tmp_path / 'work')
    study = load_study(_write(tmp_path, 'tiny', tiny_study_text(seeds='[0]', rows='')))
    runner = StudyRunner(study, results, work, str(tmp_path), extra=['--cka_batches', '2'])
    teacher = runner.teacher()
    holder = [sys.executable, '-c', 'import fcntl, sys, time\nf = open(sys.argv[1], "a")\n'
              'fcntl.flock(f, fcntl.LOCK_EX)\nprint("held", flush=True)\ntime.sleep(float(sys.argv[2]))']
    lock = os.path.join(work, 'tiny', 'kd_seed0.lock')
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    other = subprocess.Popen(holder + [lock, '60'], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline() == 'held\n'
        log = []
        summary = StudyRunner(study, results, work, str(tmp_path), extra=['--cka_batches', '2'],
                              log=log.append).run()
        assert '== kd, seed 0: another process is running it; passed by' in log
        assert set(summary['rows']) == {'ckagroup'}  # kd: not trained here
    finally:
        other.kill()
        other.wait()
    with run_lock(lock, wait=False) as held:  # the dead process's lock is gone with it
        assert held
    assert runner.student('kd', 0, teacher)['row'] == 'kd'
    # a finished record is read even while another process holds its lock (a summary need not wait)
    other = subprocess.Popen(holder + [lock, '60'], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline() == 'held\n'
        assert runner.student('kd', 0, teacher)['row'] == 'kd'
    finally:
        other.kill()
        other.wait()
    # the teacher's lock: a process finding it held waits until it is released, then reuses the record
    teacher_lock = runner.teacher_save_dir() + '.lock'
    other = subprocess.Popen(holder + [teacher_lock, '2'], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline() == 'held\n'
        started = time.monotonic()
        assert runner.teacher()['digest'] == teacher['digest']
        assert time.monotonic() - started > 1.0
    finally:
        other.wait()


def test_the_cross_family_pair_takes_the_family_comparisons_three_best_methods():
    """Issue #28 item 7: kd, the three family methods with the highest mean top-1 over the family
    comparison's five seeds (ranked here from its raw records), and ckagroup beta 20 with CKA and
    with even groups, each row as the family comparison writes it; the first cross-family pair's
    teacher, and the family comparison's student protocol with MobileNetV2 as the student."""
    family, cross = load_study('resnet56_resnet8_family'), load_study('resnet32_mobilenetv2_family')
    top1 = {}
    for record in load_runs(os.path.join(RESULTS, family.name)):
        top1.setdefault(record['row'], {})[record['seed']] = record['test_top1_full']
    methods = [row for row in family.rows if family.method(row) not in ('kd', 'ckagroup')]
    assert all(sorted(top1[row]) == list(family.seeds) for row in methods)
    best = sorted(methods, key=lambda row: -sum(top1[row].values()))[:3]
    assert set(cross.rows) == {'kd', *best, 'ckagroup_b20', 'ckagroup_b20_even'}
    assert all(cross.rows[row] == family.rows[row] for row in cross.rows)
    assert cross.teacher == load_study('resnet32_mobilenetv2').teacher
    assert cross.student == dataclasses.replace(family.student, model='MobileNetV2')
    assert (cross.reference, cross.headline, cross.cka_row, cross.seeds) == ('kd', 'ckagroup_b20', 'ckagroup_b20',
                                                                             family.seeds)
