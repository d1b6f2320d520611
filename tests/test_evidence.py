"""helper.evidence / scripts/evidence.py: the declared comparisons, paired seeds, reuse and resume of
runs, the summary, and the figures (checked through matplotlib objects)."""
import glob
import hashlib
import json
import math
import os
import re
import sys

import pytest
import torch

import models
from dataset import build_datasets
from helper import evidence, evidence_figures
from cka.grouping import random_split
from runtime.errors import ConfigError
from helper.options import parse_student_options
from dataclasses import replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _value(argv, flag):
    return argv[argv.index(flag) + 1]


def test_the_declared_comparisons_are_those_of_issue_17():
    pairs = {name: (c.teacher.model, c.student) for name, c in evidence.COMPARISONS.items()}
    assert pairs == {'resnet56_resnet8': ('resnet56', 'resnet8'), 'resnet32_mobilenetv2': ('resnet32', 'MobileNetV2'),
                     'resnet56_resnet8_sensitivity': ('resnet56', 'resnet8'),
                     'resnet56_resnet8_long': ('resnet56', 'resnet8'),
                     'resnet56_resnet8_family': ('resnet56', 'resnet8')}
    for name in ('resnet56_resnet8', 'resnet32_mobilenetv2'):
        c = evidence.COMPARISONS[name]
        assert set(c.rows) == {'kd', 'ckagroup', 'even_groups', 'random_groups', 'one_group'}
        assert len(c.seeds) >= 5 and c.train_per_class == 500  # 10% of CIFAR-10's 5,000 per class
        assert _value(c.rows['even_groups'], '--cka_teacher_split') == 'even'
        assert _value(c.rows['random_groups'], '--cka_teacher_split') == 'random'
        assert _value(c.rows['one_group'], '--cka_groups') == '1'
        assert {_value(c.rows[r], '--cka_groups') for r in c.rows if r != 'one_group'} == {'4'}
    sensitivity = evidence.COMPARISONS['resnet56_resnet8_sensitivity']
    assert len(sensitivity.seeds) == 3
    ckagroup_rows = [argv for argv in sensitivity.rows.values() if _value(argv, '--distill') == 'ckagroup']
    betas = {_value(a, '-b') for a in ckagroup_rows if _value(a, '--cka_groups') == '4'}
    ns = {_value(a, '--cka_groups') for a in ckagroup_rows if _value(a, '-b') == '5'}
    assert betas == {'1', '5', '20'} and ns == {'2', '3', '4'}
    # the longer-schedule check: the first pair's rows and schedule shape (decays at 2/3 and 5/6 of the
    # epochs) stretched to twice the epochs
    first, long = evidence.COMPARISONS['resnet56_resnet8'], evidence.COMPARISONS['resnet56_resnet8_long']
    assert (long.epochs, long.lr_decay_epochs) == (60, '40,50') and (first.epochs, first.lr_decay_epochs) == (30, '20,25')
    assert dict(long.rows) == {r: first.rows[r] for r in ('kd', 'ckagroup', 'even_groups')}
    assert long.teacher == first.teacher and len(long.seeds) == 3


def _published_weights() -> dict:
    """--distill method -> (-c, -d, -b) of its scripts/<method>.sh, read from the scripts."""
    weights = {}
    for path in glob.glob(os.path.join(ROOT, 'scripts', '*.sh')):
        found = re.search(r'--distill (\w+)[^\n]*\n?[^\n]*?-c (\S+) -d (\S+) -b (\S+)', open(path).read())
        if found:
            weights[found.group(1)] = tuple(float(v) for v in found.group(2, 3, 4))
    return weights


def test_the_family_comparison_runs_every_method_at_its_published_weights_on_the_first_pairs_protocol(tmp_path):
    family, first = evidence.COMPARISONS['resnet56_resnet8_family'], evidence.COMPARISONS['resnet56_resnet8']
    published = _published_weights()
    methods = {'kd', 'hint', 'attention', 'similarity', 'vid', 'crd', 'semckd', 'srrl', 'simkd'}
    assert methods | {'ckagroup'} <= set(published)
    assert set(family.rows) == methods | {'ckagroup_b5', 'ckagroup_b20', 'ckagroup_b20_even'}
    for row, argv in family.rows.items():
        weights = tuple(float(_value(argv, flag)) for flag in ('-c', '-d', '-b'))
        assert _value(argv, '--cka_groups') == '4'  # the CKA monitor on, grouped as in every comparison
        if row in methods:
            assert _value(argv, '--distill') == row and weights == published[row], row
        else:
            assert _value(argv, '--distill') == 'ckagroup' and weights == (1.0, 1.0, float(row.split('_')[1][1:]))
    assert _value(family.rows['ckagroup_b20_even'], '--cka_teacher_split') == 'even'
    assert all('--cka_teacher_split' not in family.rows[r] for r in ('ckagroup_b5', 'ckagroup_b20'))
    assert int(_value(family.rows['crd'], '--nce_k')) <= 9 * 500  # the other classes' training images
    assert family.headline == family.cka_row == 'ckagroup_b20' and family.reference == 'kd'
    # the same teacher (its committed checkpoint is reused by digest) and student protocol as the first pair
    make = lambda c: evidence.Instrument(c, str(tmp_path), str(tmp_path), 'data')
    assert make(family).teacher_argv() == make(first).teacher_argv()
    assert (family.student, family.train_per_class, family.epochs, family.lr_decay_epochs, family.seeds) == \
        (first.student, 500, 30, '20,25', (0, 1, 2, 3, 4))
    # curves and the CKA monitor on held-out training images, never on test images
    argv = make(family).student_argv('crd', 0)
    assert _value(argv, '--val_split_per_class') == '200' and '--val_per_class' not in argv
    # float32 on every CPU: a run must not depend on whether this session's CPU has native bf16
    assert {'--data_on_device', '--channels_last'} <= set(argv) and '--amp' not in argv


@pytest.mark.parametrize('name', [n for n in evidence.COMPARISONS if os.path.isdir(os.path.join(ROOT, 'docs', 'results', n, 'runs'))])
def test_committed_runs_keep_their_fingerprints(name, tmp_path):
    """Every committed raw record still matches the arguments its comparison declares now."""
    folder = os.path.join(ROOT, 'docs', 'results', name)
    instrument = evidence.Instrument(evidence.COMPARISONS[name], str(tmp_path), str(tmp_path), 'data')
    teacher = json.load(open(os.path.join(folder, 'teacher.json')))
    assert teacher['fingerprint'] == evidence.fingerprint(instrument.teacher_argv())
    for record in evidence.load_runs(folder):
        argv = instrument.student_argv(record['row'], record['seed'])
        assert record['fingerprint'] == evidence.fingerprint(['teacher ' + teacher['digest']] + argv), record['row']


@pytest.mark.parametrize('name', list(evidence.COMPARISONS))
def test_every_row_parses_and_rows_of_one_seed_differ_only_in_their_objective(name, tmp_path):
    c = evidence.COMPARISONS[name]
    instrument = evidence.Instrument(c, str(tmp_path / 'results'), str(tmp_path / 'work'), 'data')
    for seed in c.seeds:
        parsed = {row: vars(parse_student_options(instrument.student_argv(row, seed) + ['--path_t', 'T.pth']))
                  for row in c.rows}
        assert {p['seed'] for p in parsed.values()} == {seed}
        shared = ('seed', 'epochs', 'lr_decay_epochs', 'learning_rate', 'batch_size', 'train_per_class',
                  'val_per_class', 'model_s', 'dataset')
        assert len({repr([p[k] for k in shared]) for p in parsed.values()}) == 1


def test_a_declaration_the_instrument_cannot_measure_is_refused(monkeypatch):
    c = evidence.COMPARISONS['resnet56_resnet8']
    evidence.check_comparison(evidence.with_budget(c, rows={**c.rows, 'simkd': evidence.FAMILY_ROWS['simkd']}))
    with pytest.raises(ConfigError, match='no method'):
        evidence.check_comparison(evidence.with_budget(c, rows={**c.rows, 'pkt': ('--distill', 'pkt')}))
    with pytest.raises(ConfigError, match='baseline rows'):
        evidence.check_comparison(evidence.with_budget(c, rows={'kd': c.rows['kd']}))
    with pytest.raises(ConfigError, match='CKA monitor'):
        evidence.check_comparison(evidence.with_budget(c, val_per_class=5))
    with pytest.raises(ConfigError, match='CKA monitor'):
        evidence.check_comparison(evidence.with_budget(c, val_split_per_class=5))
    with pytest.raises(ConfigError, match='give train_per_class too'):
        evidence.check_comparison(replace(c, train_per_class=None, val_split_per_class=200))
    with pytest.raises(ConfigError, match='headline'):
        evidence.check_comparison(evidence.with_budget(c, headline='beta_20'))
    # a method with a head of its own is measured only where the evaluation can rebuild that head
    monkeypatch.setattr(evidence, 'DEPLOYED_HEADS', {})
    with pytest.raises(ConfigError, match='its own head'):
        evidence.check_comparison(evidence.with_budget(c, rows={**c.rows, 'simkd': evidence.FAMILY_ROWS['simkd']}))


def test_plateau_and_flow_cka_by_hand():
    assert evidence.plateau([1, 2, 3, 4], window=2) == pytest.approx(3.5 - 1.5)
    assert evidence.plateau([1, 2, 3], window=2) is None
    # slope of (0, 1), (1, 3), (2, 2): sum((x - 1)(y - 2)) / sum((x - 1)^2) = (-1 * -1 + 1 * 0) / 2
    assert evidence.final_slope([9, 1, 3, 2], window=3) == pytest.approx(0.5)
    assert evidence.final_slope([5.0] * 6) == pytest.approx(0.0)
    assert evidence.final_slope([1, 2], window=3) is None
    # first decay after epoch 4: epochs 2-4 hold 1, 3, 2 -> slope 0.5 as above; the flat end after it is ignored
    assert evidence.pre_decay_slope([9, 1, 3, 2, 7, 7, 7], '4,6', window=3) == pytest.approx(0.5)
    assert evidence.pre_decay_slope([0, 1, 2, 3, 4, 5], '6,5', window=2) == pytest.approx(1.0)  # epochs 4-5
    assert evidence.pre_decay_slope([1, 2, 3], '5', window=3) is None  # the curve stops before the decay
    record = {'monitor_matrix': [[0.9, 0.5, 0.1], [0.2, 0.6, 0.8], [0.0, 0.3, 0.4]]}
    # student layers split evenly in two: [0, 1] and [2]; CKA groups [0, 1] and [2]:
    # mean(0.9, 0.5, 0.2, 0.6) = 0.55 and 0.4 -> 0.475
    assert evidence.flow_cka(record, [[0, 1], [2]]) == pytest.approx(0.475)
    assert evidence.flow_cka(record, None) is None


def _fake_run(row, seed, top1, curve, groups=None):
    return {'row': row, 'seed': seed, 'test_top1_full': top1, 'curve': curve, 'epoch_seconds': 1.0,
            'teacher_groups': groups, 'monitor_matrix': None}


def test_summary_from_raw_runs_by_hand(tmp_path):
    c = evidence.with_budget(evidence.COMPARISONS['resnet56_resnet8'], seeds=(0, 1, 2))
    teacher = {'model': 'resnet56', 'epochs': 3, 'train_images': 50000, 'test_top1_full': 90.0,
               'plateau_gain': None, 'seconds': 1.0}
    accuracy = {'kd': [60.0, 62.0, 61.0], 'ckagroup': [61.0, 62.5, 61.0], 'random_groups': [60.5, 63.0]}
    records = [_fake_run(row, s, v, [v - 2, v], [[s], [s + 1]]) for row, vs in accuracy.items() for s, v in enumerate(vs)]
    summary = evidence.summarise(c, teacher, records, str(tmp_path))
    rows = summary['rows']
    assert list(rows) == ['kd', 'ckagroup', 'random_groups']
    assert rows['ckagroup']['top1']['mean'] == pytest.approx(61.5)
    vs_kd = rows['ckagroup']['vs']['kd']  # differences 1.0, 0.5, 0.0: mean 0.5, sd 0.5, t(2) = 4.302653
    assert vs_kd['n'] == 3 and vs_kd['mean'] == pytest.approx(0.5)
    assert vs_kd['half_width'] == pytest.approx(4.302653 * 0.5 / 3 ** 0.5, abs=1e-5)
    assert rows['random_groups']['vs']['ckagroup']['n'] == 2  # paired over the seeds both have
    assert rows['random_groups']['random_partitions'] == ['[[0], [1]]', '[[1], [2]]']
    assert 'kd' not in rows['kd']['vs']
    # paired t-tests against KD: t = 0.5 / (0.5 / sqrt 3) = sqrt 3 on 2 degrees of freedom, where
    # P(|T| >= t) = 1 - t / sqrt(2 + t^2); random_groups: differences 0.5, 1.0 -> t = 0.75 / 0.25 = 3 on
    # 1 degree of freedom (Cauchy), P = 1 - (2 / pi) atan 3
    p_cka, p_random = 1 - math.sqrt(3) / math.sqrt(5), 1 - 2 / math.pi * math.atan(3)
    assert vs_kd['p'] == pytest.approx(p_cka) and vs_kd['ahead'] == 2
    assert rows['random_groups']['vs']['kd']['p'] == pytest.approx(p_random)
    # Holm over the family of the two: 2 x 0.2048 = 0.4097 for the smaller, max(0.4097, 0.2254) for the other
    assert vs_kd['holm_p'] == rows['random_groups']['vs']['kd']['holm_p'] == pytest.approx(2 * p_random)
    assert rows['ckagroup']['verdict'] == rows['random_groups']['verdict'] == 'no difference found'
    assert 'verdict' not in rows['kd']
    table = open(tmp_path / 'summary.md').read()
    assert 'Low data: the student trains on 500 images per class' in table
    assert '| ckagroup | 3 | 61.50 ± 0.87 | +0.50 [-0.74, +1.74] (n=3) | 0.225 | 0.410 | 2/3 | no difference found |' in table
    assert 'Curves and flow CKA: test images' in table  # the older comparisons evaluated each epoch on test images
    assert json.load(open(tmp_path / 'summary.json'))['rows']['kd']['seeds'] == [0, 1, 2]
    assert (tmp_path / 'curves.png').stat().st_size > 0 and (tmp_path / 'forest.png').stat().st_size > 0


def test_verdicts_need_a_holm_adjusted_p_below_005(tmp_path):
    c = evidence.with_budget(evidence.COMPARISONS['resnet56_resnet8'], seeds=(0, 1, 2, 3, 4))
    teacher = {'model': 'resnet56', 'epochs': 3, 'train_images': 50000, 'test_top1_full': 90.0,
               'plateau_gain': None, 'seconds': 1.0}
    kd = [60.0, 61.0, 62.0, 63.0, 64.0]
    accuracy = {'kd': kd, 'ckagroup': [v + d for v, d in zip(kd, (2.0, 2.1, 1.9, 2.0, 2.05))],  # always ~2 ahead
                'one_group': [v - d for v, d in zip(kd, (1.0, 1.1, 0.9, 1.0, 1.0))],       # always ~1 behind
                'even_groups': [v + d for v, d in zip(kd, (3.0, -2.0, 1.0, -1.5, 0.5))]}   # noise
    records = [_fake_run(row, s, v, [v]) for row, vs in accuracy.items() for s, v in enumerate(vs)]
    rows = evidence.summarise(c, teacher, records, str(tmp_path))['rows']
    assert (rows['ckagroup']['verdict'], rows['one_group']['verdict'], rows['even_groups']['verdict']) == \
        ('ahead', 'behind', 'no difference found')
    assert (rows['ckagroup']['vs']['kd']['ahead'], rows['one_group']['vs']['kd']['ahead']) == (5, 0)
    assert json.load(open(tmp_path / 'summary.json'))['family_of_tests'] == \
        {'against': 'kd', 'tests': 3, 'adjustment': 'Holm', 'alpha': 0.05}


def test_learning_curve_figure_has_one_line_per_row_and_bands_for_several_seeds():
    figure = evidence_figures.learning_curves({'kd': [[1, 2, 3], [2, 3, 4]], 'ckagroup': [[1, 3, 5]]}, 'pair')
    axes = figure.axes[0]
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ['kd (n=2)', 'ckagroup (n=1)']
    assert list(axes.lines[0].get_ydata()) == [1.5, 2.5, 3.5]
    assert len(axes.collections) == 1  # the band of kd only
    assert axes.get_xlabel() == 'epoch' and 'top-1' in axes.get_ylabel()
    evidence_figures.plt.close(figure)


def test_forest_plot_has_an_error_bar_per_interval():
    from helper.stats import paired_difference
    diffs = {'ckagroup': paired_difference({0: 2, 1: 3, 2: 3.5}, {0: 1, 1: 1, 2: 2}),
             'even_groups': paired_difference({0: 1, 1: 0, 2: 1}, {0: 1, 1: 1, 2: 2}),
             'one_seed': paired_difference({0: 4}, {0: 1})}
    figure = evidence_figures.forest_plot(diffs, 'kd', 'pair')
    axes = figure.axes[0]
    assert len(axes.containers) == 2  # one ErrorbarContainer per row with an interval
    bar = axes.containers[0]
    (segments,) = bar.lines[2]
    x_low, x_high = segments.get_segments()[0][:, 0]
    assert (x_low, x_high) == pytest.approx((diffs['ckagroup']['low'], diffs['ckagroup']['high']))
    assert [t.get_text() for t in axes.get_yticklabels()] == ['ckagroup (n=3)', 'even_groups (n=3)', 'one_seed (n=1)']
    assert axes.get_xlabel().startswith('top-1 minus kd') and '95%' in axes.get_xlabel()
    evidence_figures.plt.close(figure)


TINY = evidence.Comparison(
    'tiny', evidence.Teacher('resnet8', epochs=1, lr_decay_epochs='1', train_per_class=4), 'resnet8',
    {'kd': ('--distill', 'kd', '-c', '1', '-d', '1', '-b', '0', '--cka_groups', '2'),
     'ckagroup': evidence.DISTILL_ARGS + ('-b', '5', '--cka_groups', '2'),
     'random_groups': evidence.DISTILL_ARGS + ('-b', '5', '--cka_groups', '2', '--cka_teacher_split', 'random')},
    seeds=(0, 1), epochs=1, lr_decay_epochs='1', train_per_class=4, val_per_class=4, batch_size=8,
    dataset='synthetic')


def test_end_to_end_runs_are_written_as_they_finish_then_reused_or_resumed(tmp_path, monkeypatch):
    results, work = str(tmp_path / 'results'), str(tmp_path / 'work')
    extra = ['--cka_batches', '2']
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the records must name the threads the runs trained with
    try:  # the seeds split over two processes, one after the other
        first, summary = (evidence.Instrument(evidence.with_budget(TINY, seeds=(seed,)), results, work,
                                              str(tmp_path), extra=extra).run() for seed in (1, 0))
    finally:
        torch.set_num_threads(threads)
    runs = os.path.join(results, 'tiny', 'runs')
    assert sorted(os.listdir(runs)) == sorted(f'{r}_seed{s}.json' for r in TINY.rows for s in TINY.seeds)
    teacher = json.load(open(os.path.join(results, 'tiny', 'teacher.json')))
    assert teacher['train_images'] == 40 and teacher['epochs'] == 1 and teacher['cpu_threads'] == 1
    for name in os.listdir(runs):
        record = json.load(open(os.path.join(runs, name)))
        assert _value(record['argv'], '--seed') == str(record['seed'])
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
    evidence.Instrument(TINY, results, work, str(tmp_path), extra=extra).run()
    monkeypatch.undo()

    # an interrupted run: its raw JSON is not there yet, its run folder holds the last checkpoint
    os.remove(os.path.join(runs, 'kd_seed1.json'))
    log = []
    again = evidence.Instrument(TINY, results, work, str(tmp_path), extra=extra, log=log.append).run()
    assert log == ['== teacher resnet8: reused (' + os.path.join(results, 'tiny', 'teacher.json') + ')',
                   '== kd, seed 1 (resuming)']
    assert again['rows']['kd']['top1'] == summary['rows']['kd']['top1']
    assert json.load(open(os.path.join(runs, 'kd_seed1.json')))['resumed'] is True

    # another comparison with the same teacher and rows reuses the finished runs (no student trains)
    monkeypatch.setattr('helper.train.run_student', no_training)
    sibling = evidence.with_budget(TINY, name='tiny_sibling', rows={r: TINY.rows[r] for r in ('kd', 'ckagroup')})
    evidence.Instrument(sibling, results, work, str(tmp_path), extra=extra).run()
    monkeypatch.undo()
    reused = json.load(open(os.path.join(results, 'tiny_sibling', 'runs', 'ckagroup_seed1.json')))
    assert reused['reused_from'] == os.path.join('tiny', 'runs', 'ckagroup_seed1.json')

    # other settings never mix with the stored runs
    with pytest.raises(ConfigError, match='other settings'):
        evidence.Instrument(TINY, results, work, str(tmp_path), extra=['--cka_batches', '3']).run()


TINY_FAMILY = evidence.with_budget(
    TINY, name='tiny_family', rows={'kd': TINY.rows['kd'], 'ckagroup': TINY.rows['ckagroup'],
                                    'crd': ('--distill', 'crd', '-c', '1', '-d', '1', '-b', '0.8', '--cka_groups', '2',
                                            '--nce_k', '16'),
                                    'simkd': ('--distill', 'simkd', '-c', '0', '-d', '0', '-b', '1', '--cka_groups', '2')},
    seeds=(0,), val_split_per_class=4)


def _hand_projector(state: dict, s_n: int, t_n: int) -> torch.nn.Module:
    """SimKD's bottleneck as its paper and repo define it (1x1, 3x3, 1x1 convs without bias, each with
    BN and ReLU, width t_n / 2), loaded from the checkpoint's 'proj' entry (the SimKD repo's keys)."""
    nn, mid = torch.nn, t_n // 2
    projector = nn.Sequential(nn.Conv2d(s_n, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                              nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                              nn.Conv2d(mid, t_n, 1, bias=False), nn.BatchNorm2d(t_n), nn.ReLU())
    projector.load_state_dict({key[len('transfer.'):]: value for key, value in state.items()})
    return projector.eval()


def test_every_method_runs_on_held_out_curves_and_is_evaluated_as_deployed(tmp_path):
    results, work = str(tmp_path / 'results'), str(tmp_path / 'work')
    evidence.Instrument(TINY_FAMILY, results, work, str(tmp_path), extra=['--cka_batches', '2']).run()
    runs = os.path.join(results, 'tiny_family', 'runs')
    records = {r['row']: r for r in evidence.load_runs(os.path.join(results, 'tiny_family'))}
    assert set(records) == set(TINY_FAMILY.rows)
    # the code of the CKA term, hashed here from the files themselves
    sha = hashlib.sha256()
    for path in sorted([os.path.join('cka', n) for n in os.listdir(os.path.join(ROOT, 'cka')) if n.endswith('.py')]
                       + [os.path.join('distiller_zoo', 'ckagroup.py')]):
        sha.update(path.encode() + b'\0' + open(os.path.join(ROOT, path), 'rb').read())
    for row, record in records.items():
        assert '--data_on_device' in record['argv'] and _value(record['argv'], '--val_split_per_class') == '4'
        assert '--val_per_class' not in record['argv'] and 'held out' in record['curve_val_images']
        assert record['cka_code_hash'] == sha.hexdigest()
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
    assert sorted(os.listdir(runs)) == sorted(f'{row}_seed0.json' for row in TINY_FAMILY.rows)


def test_the_teacher_record_keeps_its_training_time(tmp_path):
    results, work = str(tmp_path / 'results'), str(tmp_path / 'work')
    only_kd = evidence.with_budget(TINY, name='tiny_kd', rows={r: TINY.rows[r] for r in ('kd', 'ckagroup')}, seeds=(0,))
    instrument = lambda c: evidence.Instrument(c, results, work, str(tmp_path), extra=['--cka_batches', '2'])
    trained = instrument(only_kd).teacher()
    assert trained['seconds'] > 0 and trained['cpu_model'] and trained['learning_rate_requested'] == 0.05
    # teacher.json lost, its finished run reopened: the record still gives the time it trained
    os.remove(os.path.join(results, 'tiny_kd', 'teacher.json'))
    reopened = instrument(only_kd).teacher()
    assert reopened['seconds'] == trained['seconds'] and reopened['digest'] == trained['digest']
    # another comparison of the same teacher copies the record, naming where it came from
    sibling = instrument(evidence.with_budget(only_kd, name='tiny_kd_sibling')).teacher()
    assert sibling['reused_from'] == os.path.join('tiny_kd', 'teacher.json')
    assert sibling['seconds'] == trained['seconds'] and sibling['cpu_model'] == trained['cpu_model']


def test_the_script_refuses_smoke_budgets_in_docs_results(capsys):
    sys.path.insert(0, os.path.join(ROOT, 'scripts'))
    try:
        import evidence as script
    finally:
        sys.path.pop(0)
    assert script.main(['run', 'resnet56_resnet8', '--epochs', '2']) == 2
    assert 'smoke results, not evidence' in capsys.readouterr().err
    assert script.main(['run', 'resnet56_resnet8', '--seeds', '4', '5']) == 2  # 5 is not declared (0-4)
    assert 'budget overrides (seeds)' in capsys.readouterr().err
    split = script._comparison(script.parser().parse_args(['run', 'resnet56_resnet8', '--seeds', '3', '1']),
                               'resnet56_resnet8')
    assert split.seeds == (3, 1) and split.epochs == evidence.COMPARISONS['resnet56_resnet8'].epochs
    assert script.main(['list']) == 0
    assert 'resnet56_resnet8: resnet56 -> resnet8, seeds [0, 1, 2, 3, 4]' in capsys.readouterr().out
