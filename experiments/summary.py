"""A study's summary from its raw records: per row, top-1 over seeds, paired differences against
the reference and the CKA row with their t-tests (Holm-adjusted over the rows against the
reference), convergence of the mean curve, and flow CKA; written as summary.json, summary.md,
curves.png and forest.png."""
import json
import os
import statistics
from typing import List, Optional, Sequence

from cka import even_split
from experiments import figures, stats
from experiments.provenance import read_json
from experiments.report import markdown
from experiments.study import Study
from helper.options import decay_epochs, student_parser
from helper.run_folder import write_json_atomic
from runtime.errors import ConfigError

ALPHA = 0.05  # family-wise error rate of each table's tests against its reference
COST_FILE = 'cost.json'  # `scripts/evidence.py cost`: each row's training step against the reference's


def plateau(curve: Sequence[float], window: int = 5) -> Optional[float]:
    """Mean of the last `window` epochs minus the mean of the `window` before: about 0 once the
    curve has levelled off; None when the curve is shorter than two windows."""
    if len(curve) < 2 * window:
        return None
    return statistics.fmean(curve[-window:]) - statistics.fmean(curve[-2 * window:-window])


def final_slope(curve: Sequence[float], window: int = 5) -> Optional[float]:
    """Least-squares slope of the last `window` epochs, in points per epoch: about 0 once the
    curve has levelled off at its last learning rate (unlike `plateau`, not lifted by a learning
    rate decay just before the window); None when the curve is shorter than the window."""
    if len(curve) < window or window < 2:
        return None
    return stats.slope(range(window), curve[-window:])


def pre_decay_slope(curve: Sequence[float], lr_decay_epochs: str, window: int = 5) -> Optional[float]:
    """Least-squares slope, in points per epoch, of the `window` epochs up to the first learning
    rate decay (epochs are 1-based; the rate drops after epoch `first`): about 0 when the curve had
    levelled off at the initial rate, positive when the decay cut a rising curve short (the flat
    end then says only that the rate became small). None when the curve does not reach the decay."""
    first = min(decay_epochs(lr_decay_epochs))
    if first < window or len(curve) < first or window < 2:
        return None
    return stats.slope(range(window), curve[first - window:first])


def flow_cka(record: dict, teacher_groups: Optional[list]) -> Optional[float]:
    """One yardstick of flow similarity for every row: the last monitored student x teacher matrix
    averaged over the blocks of the student's layers split evenly into as many groups as the given
    (CKA) teacher groups, paired in order, so that rows whose own groups differ (one group, random
    groups) are measured alike."""
    matrix = record.get('monitor_matrix')
    if matrix is None or teacher_groups is None or len(matrix) < len(teacher_groups):
        return None
    student_groups = even_split(len(matrix), len(teacher_groups))
    blocks = [statistics.fmean(matrix[i][j] for i in s for j in t) for s, t in zip(student_groups, teacher_groups)]
    return statistics.fmean(blocks)


def verdict(mean: Optional[float], adjusted_p: Optional[float]) -> str:
    """'ahead' / 'behind' the reference where the Holm-adjusted p is below ALPHA, else 'no
    difference found' (also without a test: fewer than two paired seeds)."""
    if adjusted_p is None or adjusted_p >= ALPHA or not mean:
        return 'no difference found'
    return 'ahead' if mean > 0 else 'behind'


def holm_verdicts(differences: dict, family_size: int) -> dict:
    """One family of tests: each paired difference (`stats.paired_difference`, by row) gains its
    Holm-adjusted p ('holm_p', over `family_size` declared tests); returns row -> `verdict`."""
    adjusted = stats.holm({row: d['p'] for row, d in differences.items()}, family_size=family_size)
    for row, p in adjusted.items():
        differences[row]['holm_p'] = p
    return {row: verdict(d['mean'], d['holm_p']) for row, d in differences.items()}


def curves_and_flow_images(study: Study) -> str:
    """Which images the students' per-epoch curves and CKA monitor (flow CKA) were measured on."""
    student = study.student
    return {'held_out': f'{student.val_split_per_class} training images per class held out after the students\' '
                        f'{student.train_per_class} (the teacher trained on them); the test set gives only the final '
                        'number',
            'test_subset': f'test images: the first {student.val_per_class} per class of the test set (nothing was '
                           'chosen by them; the final number is the full test set)',
            'test': 'the full test set'}[student.curve_images]


def curve_axis_label(study: Study) -> str:
    """The learning-curve figure's y axis: which images the per-epoch top-1 was measured on."""
    return {'held_out': 'top-1 (%) on held-out training images', 'test_subset': 'top-1 (%) on test images (subset)',
            'test': 'test top-1 (%)'}[study.student.curve_images]


def load_runs(folder: str) -> List[dict]:
    """The raw records under <folder>/runs, in file-name order."""
    runs = os.path.join(folder, 'runs')
    return [read_json(os.path.join(runs, f)) for f in sorted(os.listdir(runs)) if f.endswith('.json')] \
        if os.path.isdir(runs) else []


def _row_summary(study: Study, row: str, runs: dict, accuracy: dict, cka_groups: dict) -> dict:
    """One row's entry of summary.json; `runs`: seed -> its record."""
    curves = [runs[s]['curve'] for s in sorted(runs)]
    mean_curve = [statistics.fmean(c[e] for c in curves) for e in range(min(map(len, curves)))]
    flows = [f for f in (flow_cka(runs[s], cka_groups.get(s)) for s in sorted(runs)) if f is not None]
    random_split = any(r.get('teacher_split') == 'random' for r in runs.values())
    return {'seeds': sorted(runs), 'top1': stats.mean_std(list(accuracy[row].values())),
            'vs': {b: stats.paired_difference(accuracy[row], accuracy[b]) for b in (study.reference, study.cka_row)
                   if b in accuracy and b != row},
            'plateau_gain': plateau(mean_curve), 'final_slope': final_slope(mean_curve),
            'pre_decay_slope': pre_decay_slope(mean_curve, study.student.lr_decay_epochs),
            'epoch_seconds': statistics.fmean(r['epoch_seconds'] for r in runs.values()),
            'flow_cka': statistics.fmean(flows) if flows else None,
            # a partition drawn per seed: which ones the row trained with
            'random_partitions': sorted({json.dumps(r['teacher_groups']) for r in runs.values()})
            if random_split else None,
            'cka_code_hashes': sorted({r['cka_code_hash'] for r in runs.values() if 'cka_code_hash' in r}) or None}


def machine_setting(record: dict) -> str:
    """Where and how a raw record trained: CPU model (or GPU), torch's CPU capability, precision
    (float32 rounds differently on other kernels, so a rerun elsewhere is not bit-identical)."""
    device = record.get('device')
    if device is None:  # records before devices were recorded
        where = 'device not recorded'
    else:
        where = device if device != 'cpu' else record.get('cpu_model', 'CPU model not recorded')
    precision = 'bf16 --amp' if '--amp' in record['argv'] else 'float32'
    return f'{where}, {record.get("torch_cpu_capability", "capability not recorded")}, {precision}'


def run_setting(record: dict) -> str:
    """`machine_setting` and the CKA-term code version."""
    code = record.get('cka_code_hash')
    return f'{machine_setting(record)}, CKA code {code[:12] if code else "not recorded"}'


def trained_on(by_row: dict) -> dict:
    """setting (`machine_setting`) -> row -> the seeds of that row's runs that trained there."""
    settings = {}
    for row, runs in by_row.items():
        for seed in sorted(runs):
            settings.setdefault(machine_setting(runs[seed]), {}).setdefault(row, []).append(seed)
    return dict(sorted(settings.items()))


def argument_differences(argv: Sequence[str], earlier_argv: Sequence[str]) -> List[str]:
    """The options two runs of one seed trained with differently, read by train_student.py's own
    parser, as 'flag: earlier -> this' ('absent' where a run left the option at its default); the
    run's name (--trial) aside."""
    parser = student_parser()
    defaults = vars(parser.parse_known_args([])[0])
    this, then = (vars(parser.parse_known_args(list(a))[0]) for a in (argv, earlier_argv))
    flags = {action.dest: (action.option_strings or [action.dest])[0] for action in parser._actions}

    def word(dest, value) -> str:
        return 'absent' if value == defaults[dest] else 'on' if value is True else str(value)
    return [f'{flags[dest]}: {word(dest, then[dest])} -> {word(dest, this[dest])}'
            for dest in sorted(this, key=flags.get) if dest != 'trial' and this[dest] != then[dest]]


def headline_against_methods(study: Study, accuracy: dict) -> Optional[dict]:
    """The declared headline row against each row of another method than its own and the
    reference's (the family's methods): the paired difference headline minus row, its t-test,
    Holm-adjusted over these tests (a family of its own, beside the one against the reference),
    and a verdict from the headline's side. None without a headline or such rows."""
    headline = study.headline
    if headline is None:
        return None
    own = {study.method(headline), study.method(study.reference)}
    methods = [row for row in study.rows if study.method(row) not in own]
    if not methods:
        return None
    rows = {row: stats.paired_difference(accuracy[headline], accuracy[row])
            for row in methods if headline in accuracy and row in accuracy}
    for row, word in holm_verdicts(rows, len(methods)).items():
        rows[row]['verdict'] = word
    return {'headline': headline, 'family_of_tests': {'tests': len(methods), 'adjustment': 'Holm', 'alpha': ALPHA},
            'rows': rows}


def repeat_spread(this: dict, earlier: dict) -> dict:
    """How far a run falls from the earlier run of its own seed, beside how far two runs of
    different seeds fall apart. `this` / `earlier`: seed -> top-1 of every run of each study.
    'shift': the paired difference over the seeds both ran (its mean, interval and t-test: a
    systematic change); 'rms_difference': the root mean square of those differences;
    'different_seeds_rms': sqrt(s_this^2 + s_earlier^2) from each study's spread over its seeds, the
    root mean square by which a run of one study and a run of another seed in the other differ,
    less any mean shift. An RMS difference near it says the seed keeps nothing of its effect once
    the numerics change; well below it, the seed still fixes part of the outcome."""
    shift = stats.paired_difference(this, earlier)
    differences = [this[s] - earlier[s] for s in shift['seeds']]
    spreads = [stats.mean_std(list(runs.values()))['std'] for runs in (this, earlier)]
    return {'shift': shift,
            'rms_difference': (statistics.fmean(d * d for d in differences)) ** 0.5 if differences else None,
            'different_seeds_rms': None if None in spreads else (spreads[0] ** 2 + spreads[1] ** 2) ** 0.5}


def repeated_runs(study: Study, by_row: dict, results_root: str) -> dict:
    """For each row that repeats an earlier study's row: per seed run in both, the two top-1s,
    their difference (this run minus the earlier), each run's setting (`run_setting`) and the flags
    they trained with differently; and over the seeds, `repeat_spread`."""
    repeats, earlier_records = {}, {}  # earlier study -> its raw records, read once
    for row, earlier in study.repeats.items():
        name, earlier_row = earlier.split('/')
        if name not in earlier_records:
            earlier_records[name] = load_runs(os.path.join(results_root, name))
        runs = {r['seed']: r for r in earlier_records[name] if r['row'] == earlier_row}
        mine = by_row.get(row, {})
        top1, earlier_top1 = ({s: r['test_top1_full'] for s, r in rs.items()} for rs in (mine, runs))
        repeats[row] = {'of': earlier, 'seeds': {
            str(seed): {'top1': top1[seed], 'earlier_top1': earlier_top1[seed],
                        'difference': top1[seed] - earlier_top1[seed],
                        'setting': run_setting(run), 'earlier_setting': run_setting(runs[seed]),
                        'argument_differences': argument_differences(run['argv'], runs[seed]['argv'])}
            for seed, run in sorted(mine.items()) if seed in runs}}
        repeats[row].update(repeat_spread(top1, earlier_top1))
    return repeats


def summarise(study: Study, teacher: dict, records: List[dict], out: str, results_root: Optional[str] = None) -> dict:
    """Write summary.json, summary.md, curves.png and forest.png from the raw run records;
    `results_root` holds the studies whose runs rows repeat (default: the folder above `out`)."""
    reference = study.reference
    by_row = {row: {r['seed']: r for r in records if r['row'] == row} for row in study.rows}
    by_row = {row: runs for row, runs in by_row.items() if runs}
    accuracy = {row: {s: r['test_top1_full'] for s, r in runs.items()} for row, runs in by_row.items()}
    cka_groups = {s: r['teacher_groups'] for s, r in by_row.get(study.cka_row, {}).items()}
    rows = {row: _row_summary(study, row, runs, accuracy, cka_groups) for row, runs in by_row.items()}
    # the table's family of tests: every row's paired difference against the reference, adjusted together
    # the family is declared by the study's rows, also while some have no p-value yet
    declared = len([row for row in study.rows if row != reference])
    against_reference = {row: r['vs'][reference] for row, r in rows.items() if reference in r['vs']}
    for row, word in holm_verdicts(against_reference, declared).items():
        rows[row]['verdict'] = word
    flow_rows = [r for r in rows if rows[r]['flow_cka'] is not None]
    cost_file = os.path.join(out, COST_FILE)
    cost = read_json(cost_file) if os.path.exists(cost_file) else None
    if cost is not None:
        if cost['reference'] != reference:
            raise ConfigError(f'{cost_file} holds steps timed against {cost["reference"]!r}, not the study\'s reference '
                              f'{reference!r}; time them again with `scripts/evidence.py cost {study.name}`')
        for row, r in rows.items():
            timed = cost['rows'].get(row, {})
            r['step_cost'] = 1.0 if row == reference else timed.get('ratio')
            if 'runs' in timed:  # the spread of the median: each timing run's ratio
                r['step_cost_runs'] = [run['ratio'] for run in timed['runs']]
    summary = {'comparison': study.name, 'notes': study.notes, 'teacher': dict(
        {k: teacher[k] for k in ('model', 'epochs', 'train_images', 'test_top1_full', 'plateau_gain', 'seconds')},
        final_slope=final_slope(teacher['curve']) if 'curve' in teacher else None,
        pre_decay_slope=pre_decay_slope(teacher['curve'], study.teacher.lr_decay_epochs)
        if 'curve' in teacher else None),
        'student': study.student.model, 'student_train_per_class': study.student.train_per_class,
        'epochs': study.student.epochs, 'reference': reference, 'cka_row': study.cka_row,
        'headline': study.headline, 'curves_and_flow_on': curves_and_flow_images(study),
        'family_of_tests': {'against': reference, 'tests': declared,
                            'adjustment': 'Holm', 'alpha': ALPHA},
        'rows': rows, 'trained_on': trained_on(by_row),
        'flow_vs_accuracy_pearson_over_rows': stats.pearson([rows[r]['flow_cka'] for r in flow_rows],
                                                            [rows[r]['top1']['mean'] for r in flow_rows])}
    if len({tuple(r['seeds']) for r in rows.values()}) > 1:  # a study under way: rank on shared seeds
        summary['ranked_on_seeds'] = sorted(set.intersection(*(set(r['seeds']) for r in rows.values())))
        for row, r in rows.items():
            r['top1_on_ranked_seeds'] = stats.mean_std([accuracy[row][s] for s in summary['ranked_on_seeds']])
    against_methods = headline_against_methods(study, accuracy)
    if against_methods is not None:  # only studies whose headline meets other methods have the key
        summary['headline_vs_methods'] = against_methods
    if study.repeats:  # as the step cost: only studies that declare repeats have the key
        summary['repeats'] = repeated_runs(study, by_row, results_root or os.path.dirname(os.path.abspath(out)))
    if cost is not None:  # studies without a timing pass keep their summaries as they were
        summary['step_cost'] = dict({k: cost[k] for k in ('reference', 'machine', 'device', 'batch_size', 'repeats')},
                                    order=cost.get('order', 'reference first'))  # passes before the order alternated
    write_json_atomic(summary, os.path.join(out, 'summary.json'))
    with open(os.path.join(out, 'summary.md'), 'w') as f:
        f.write(markdown(study, summary))
    figure = figures.learning_curves({row: [runs[s]['curve'] for s in sorted(runs)] for row, runs in by_row.items()},
                                     study.name, curve_axis_label(study))
    figures.save(figure, os.path.join(out, 'curves.png'))
    figure = figures.forest_plot({row: rows[row]['vs'][reference] for row in rows if reference in rows[row]['vs']},
                                 reference, study.name)
    figures.save(figure, os.path.join(out, 'forest.png'))
    return summary
