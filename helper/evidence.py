"""Paired, multi-seed evidence on whether CKA grouping matters (issue 17): the comparisons, the runs
they need, their reuse, and the summary. `scripts/evidence.py` is the command line; docs/EVIDENCE.md
the protocol.

A comparison trains its teacher once, then every (row, seed) student run with the same seeds for
every row, so that rows differ only in their training objective. Each finished run leaves one raw
JSON, `<results>/<comparison>/runs/<row>_seed<s>.json`, holding its fingerprint (the exact training
arguments and the teacher's weights digest); a later invocation skips the runs whose JSON matches,
resumes an interrupted run from its last checkpoint, and refuses a JSON whose fingerprint differs
(stale results are never mixed in silently).
"""
import hashlib
import json
import os
import shutil
import statistics
import time
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from cka import even_split
from helper import stats
from helper.run_folder import write_json_atomic
from runtime.errors import ConfigError

DISTILL_ARGS = ('--distill', 'ckagroup', '-c', '1', '-d', '1')
BETA, N_GROUPS = 5, 4


def _ckagroup(beta=BETA, n=N_GROUPS, *extra) -> Tuple[str, ...]:
    return DISTILL_ARGS + ('-b', str(beta), '--cka_groups', str(n)) + tuple(extra)


KD = ('--distill', 'kd', '-c', '1', '-d', '1', '-b', '0', '--cka_groups', str(N_GROUPS))
# row -> the train_student.py arguments that define it (the monitor pairs KD's layers in 4 groups too)
PAIR_ROWS = {
    'kd': KD,
    'ckagroup': _ckagroup(),
    'even_groups': _ckagroup(BETA, N_GROUPS, '--cka_teacher_split', 'even'),
    'random_groups': _ckagroup(BETA, N_GROUPS, '--cka_teacher_split', 'random'),
    'one_group': _ckagroup(BETA, 1),
}
# One factor at a time around (beta 5, n 4). n = 6 is not run: resnet8 has 4 block-level layers and
# a group needs at least one (train_student.py stops with that error).
SENSITIVITY_ROWS = {
    'kd': KD,
    'ckagroup': _ckagroup(),
    'beta_1': _ckagroup(1, N_GROUPS),
    'beta_20': _ckagroup(20, N_GROUPS),
    'n_2': _ckagroup(BETA, 2),
    'n_3': _ckagroup(BETA, 3),
}
# KD, the method and its strongest null of the first pair
LONG_ROWS = {row: PAIR_ROWS[row] for row in ('kd', 'ckagroup', 'even_groups')}
# the rows every paired difference is taken against
BASELINES = ('kd', 'ckagroup')
# methods whose prediction is the student's own output (the final evaluation loads the student alone)
STUDENT_PREDICTS = ('kd', 'ckagroup')
EVAL_BATCH = 256  # the final evaluation's batch (eval-mode BN: the result does not depend on it)
MONITOR_BATCHES = 4  # --cka_monitor_batches default: whole held-out batches the CKA monitor draws


# docs/FAST_TRAINING.md's options: bf16 autocast forwards (the CKA math stays float32), images
# cropped and flipped as tensors (throughput measured in docs/EVIDENCE.md, "Budget").
FAST_OPTIONS = ('--data_on_device', '--amp', '--channels_last')


@dataclass(frozen=True)
class Teacher:
    model: str
    epochs: int
    lr_decay_epochs: str
    train_per_class: Optional[int] = None  # None: the whole training set
    learning_rate: float = 0.05
    seed: int = 0
    train_options: Tuple[str, ...] = FAST_OPTIONS


@dataclass(frozen=True)
class Comparison:
    name: str
    teacher: Teacher
    student: str
    rows: Dict[str, Tuple[str, ...]]
    seeds: Tuple[int, ...]
    epochs: int = 30
    lr_decay_epochs: str = '20,25'
    learning_rate: float = 0.05
    train_per_class: Optional[int] = 500  # low data: 10% of CIFAR-10's training set, balanced
    val_per_class: Optional[int] = 200  # held-out subset evaluated each epoch; the full test set at the end
    batch_size: int = 64
    dataset: str = 'cifar10'
    train_options: Tuple[str, ...] = FAST_OPTIONS  # every student run of every row
    notes: str = ''


# Budgets sized to 2 CPU cores (docs/EVIDENCE.md, "Budget"): the teachers see the whole training
# set for 20 epochs, the students their 5,000 images for 30; each schedule ends with 5 epochs at
# the smallest learning rate, where the curves level off.
RESNET56 = Teacher('resnet56', epochs=20, lr_decay_epochs='10,15')
RESNET32 = Teacher('resnet32', epochs=20, lr_decay_epochs='10,15')
COMPARISONS = {c.name: c for c in (
    Comparison('resnet56_resnet8', RESNET56, 'resnet8', PAIR_ROWS, seeds=(0, 1, 2, 3, 4),
               notes='deep teacher: 28 block-level layers vs 4, n = 4'),
    Comparison('resnet32_mobilenetv2', RESNET32, 'MobileNetV2', PAIR_ROWS, seeds=(0, 1, 2, 3, 4),
               notes='cross-family pair: 16 block-level layers vs 18, n = 4'),
    Comparison('resnet56_resnet8_sensitivity', RESNET56, 'resnet8', SENSITIVITY_ROWS, seeds=(0, 1, 2),
               notes='beta in {1, 5, 20} at n = 4; n in {2, 3, 4} at beta = 5'),
    # The first pair's students were still rising before their first decay: the same schedule
    # stretched to twice the epochs tells whether its differences survive a longer budget.
    Comparison('resnet56_resnet8_long', RESNET56, 'resnet8', LONG_ROWS, seeds=(0, 1, 2),
               epochs=60, lr_decay_epochs='40,50',
               notes='the first pair at twice the student schedule (60 epochs, decays at 40 and 50)'),
)}


def check_comparison(comparison: Comparison) -> None:
    """Refuse a declaration the instrument cannot measure right, before anything trains."""
    for row, argv in comparison.rows.items():
        method = argv[argv.index('--distill') + 1]
        if method not in STUDENT_PREDICTS:
            raise ConfigError(f'row {row!r}: --distill {method} is not evaluated by the student alone; '
                              f'rows may use {", ".join(STUDENT_PREDICTS)}')
    missing = [b for b in BASELINES if b not in comparison.rows]
    if missing:
        raise ConfigError(f'comparison {comparison.name!r} lacks the baseline rows {missing}')
    if comparison.val_per_class is not None and 10 * comparison.val_per_class < MONITOR_BATCHES * comparison.batch_size:
        raise ConfigError(f'val_per_class {comparison.val_per_class} leaves fewer held-out images than the CKA '
                          f'monitor\'s {MONITOR_BATCHES} batches of {comparison.batch_size}; raise it')
    if len(set(comparison.seeds)) != len(comparison.seeds) or not comparison.seeds:
        raise ConfigError(f'comparison {comparison.name!r}: seeds must be distinct and non-empty')


def fingerprint(argv: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(argv)).encode()).hexdigest()[:16]


def file_digest(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            sha.update(chunk)
    return sha.hexdigest()[:16]


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


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
    from helper.options import decay_epochs
    first = min(decay_epochs(lr_decay_epochs))
    if first < window or len(curve) < first or window < 2:
        return None
    return stats.slope(range(window), curve[first - window:first])


class Instrument:
    """Runs one comparison into `<results>/<comparison.name>/`; `work` holds the run folders
    (checkpoints: kept out of docs/)."""

    def __init__(self, comparison: Comparison, results: str, work: str, data_folder: str,
                 num_workers: int = 1, extra: Sequence[str] = (), log=print):
        check_comparison(comparison)
        self.c, self.extra, self.log = comparison, list(extra), log
        self.data_folder, self.num_workers = data_folder, num_workers
        self.out = os.path.join(results, comparison.name)
        self.work = os.path.join(work, comparison.name)
        self.results_root = results

    # ---- the teacher ----
    def teacher_argv(self) -> List[str]:
        t, c = self.c.teacher, self.c
        return (['--model', t.model, '--dataset', c.dataset, '--epochs', str(t.epochs),
                 '--lr_decay_epochs', t.lr_decay_epochs, '--learning_rate', str(t.learning_rate),
                 '--batch_size', str(c.batch_size), '--seed', str(t.seed), '--trial', 'evidence']
                + (['--train_per_class', str(t.train_per_class)] if t.train_per_class else [])
                + (['--val_per_class', str(c.val_per_class)] if c.val_per_class else [])
                + list(t.train_options))

    def teacher(self) -> dict:
        """Train (or resume, or reuse) the teacher; returns teacher.json's record."""
        from helper.train import run_teacher
        argv = self.teacher_argv()
        key = fingerprint(argv)
        record_path = os.path.join(self.out, 'teacher.json')
        save_dir = os.path.join(os.path.dirname(self.work), 'teachers', f'{self.c.teacher.model}_{key}')
        if os.path.exists(record_path):
            record = _read_json(record_path)
            if record['fingerprint'] != key:
                raise ConfigError(f'{record_path} holds a teacher trained with other settings; '
                                  'move it away (or pass another --results) to start this comparison afresh')
            if os.path.isfile(record['checkpoint']) and file_digest(record['checkpoint']) == record['digest']:
                self.log(f'== teacher {record["model"]}: reused ({record_path})')
                return record
            raise ConfigError(f'the teacher checkpoint {record["checkpoint"]!r} recorded in {record_path} is '
                              'missing or changed; restore it (its runs were distilled from it)')
        run_dir = self._run_folder(save_dir, 'teachers')
        start = time.time()
        self.log(f'== teacher {self.c.teacher.model} ({self.c.name})')
        run_teacher(argv + ['--data_folder', self.data_folder, '--num_workers', str(self.num_workers),
                            '--save_dir', save_dir, '--print_freq', '100000']
                    + (['--resume'] if run_dir else []))
        run_dir = self._run_folder(save_dir, 'teachers')
        history = _read_json(os.path.join(run_dir, 'metrics.json'))
        curve = [h['test/top1'] for h in history]
        checkpoint = os.path.join(run_dir, 'ckpt_last.pth')
        final = evaluate_checkpoint(checkpoint, self.c.dataset, self.data_folder, self.c.batch_size,
                                    self.c.teacher.train_per_class)
        record = {'fingerprint': key, 'argv': argv, 'checkpoint': checkpoint,
                  'digest': file_digest(checkpoint), 'model': self.c.teacher.model,
                  'train_images': final['train_images'], 'epochs': len(history),
                  'test_top1_full': final['top1'], 'test_images_full': final['images'],
                  'curve': curve, 'plateau_gain': plateau(curve),
                  'seconds': time.time() - start, 'images_per_s': statistics.fmean(h['train/images_per_s'] for h in history),
                  **training_environment()}
        write_json_atomic(record, record_path)
        return record

    # ---- the students ----
    def student_argv(self, row: str, seed: int) -> List[str]:
        """The run's train_student.py arguments, but for --path_t and the local paths."""
        c = self.c
        return (['--model_s', c.student, '--dataset', c.dataset,
                 '--epochs', str(c.epochs), '--lr_decay_epochs', c.lr_decay_epochs,
                 '--learning_rate', str(c.learning_rate), '--batch_size', str(c.batch_size),
                 '--seed', str(seed), '--trial', f'{row}-seed{seed}']
                + (['--train_per_class', str(c.train_per_class)] if c.train_per_class else [])
                + (['--val_per_class', str(c.val_per_class)] if c.val_per_class else [])
                + list(c.rows[row]) + list(c.train_options) + self.extra)

    def run_path(self, row: str, seed: int) -> str:
        return os.path.join(self.out, 'runs', f'{row}_seed{seed}.json')

    def _reusable(self, key: str) -> Optional[str]:
        """A finished run with this fingerprint anywhere under the results root (comparisons share rows)."""
        if not os.path.isdir(self.results_root):
            return None
        for comparison in sorted(os.listdir(self.results_root)):
            runs = os.path.join(self.results_root, comparison, 'runs')
            for name in sorted(os.listdir(runs)) if os.path.isdir(runs) else []:
                path = os.path.join(runs, name)
                if name.endswith('.json') and _read_json(path).get('fingerprint') == key:
                    return path
        return None

    def student(self, row: str, seed: int, teacher: dict) -> dict:
        from helper.train import run_student
        argv = self.student_argv(row, seed)
        key = fingerprint(['teacher ' + teacher['digest']] + argv)
        path = self.run_path(row, seed)
        if os.path.exists(path):
            record = _read_json(path)
            if record['fingerprint'] != key:
                raise ConfigError(f'{path} was run with other settings; move it away (or pass another '
                                  '--results) rather than mix it into this comparison')
            return record
        earlier = self._reusable(key)
        if earlier:
            record = dict(_read_json(earlier), row=row, reused_from=os.path.relpath(earlier, self.results_root))
            write_json_atomic(record, path)
            self.log(f'== {row}, seed {seed}: reused {record["reused_from"]}')
            return record
        save_dir = os.path.join(self.work, f'{row}_seed{seed}')
        run_dir = self._run_folder(save_dir, 'students')
        resumed = run_dir is not None
        self.log(f'== {row}, seed {seed}' + (' (resuming)' if resumed else ''))
        start = time.time()
        run_student(argv + ['--path_t', teacher['checkpoint'], '--data_folder', self.data_folder, '--num_workers', str(self.num_workers),
                            '--save_dir', save_dir, '--print_freq', '100000', '--skip-validation']
                    + (['--resume'] if resumed else []))
        run_dir = self._run_folder(save_dir, 'students')
        record = self._record(row, seed, key, argv, teacher['digest'], run_dir, time.time() - start)
        record['resumed'] = resumed  # its wall time then covers only the part after the restart
        write_json_atomic(record, path)
        return record

    def _run_folder(self, save_dir: str, kind: str) -> Optional[str]:
        """The run folder under save_dir that holds a checkpoint (to resume or read), or None; a
        folder that died before its first checkpoint is cleared, so the run starts afresh."""
        root = os.path.join(save_dir, kind)
        folders = sorted(os.listdir(root)) if os.path.isdir(root) else []
        if len(folders) > 1:
            raise ConfigError(f'{root} holds several run folders; it should hold one run')
        if not folders:
            return None
        folder = os.path.join(root, folders[0])
        if os.path.exists(os.path.join(folder, 'ckpt_last.pth')):
            return folder
        shutil.rmtree(save_dir)
        return None

    def _record(self, row, seed, key, argv, teacher_digest, run_dir, seconds) -> dict:
        history = _read_json(os.path.join(run_dir, 'metrics.json'))
        final = evaluate_checkpoint(os.path.join(run_dir, 'ckpt_last.pth'), self.c.dataset, self.data_folder,
                                    self.c.batch_size, self.c.train_per_class)
        groups_file = os.path.join(run_dir, 'cka_groups.json')
        groups = _read_json(groups_file) if os.path.exists(groups_file) else None
        monitor_file = os.path.join(run_dir, 'cka_monitor.json')
        monitor = _read_json(monitor_file)[-1] if os.path.exists(monitor_file) else None
        return {'row': row, 'seed': seed, 'fingerprint': key, 'argv': argv, 'teacher_digest': teacher_digest,
                'test_top1_full': final['top1'], 'test_top5_full': final['top5'], 'test_images_full': final['images'],
                'curve': [h['test/top1'] for h in history], 'curve_val_images': 'per-epoch on --val_per_class',
                'train_images': final['train_images'], 'epochs': len(history),
                'teacher_groups': groups['groups'] if groups else None,
                'teacher_split': groups['settings'].get('teacher_split', 'cka') if groups else None,
                'monitor_matrix': monitor['matrix'] if monitor else None,
                'monitor_student_groups': monitor['student_groups'] if monitor else None,
                'monitor_teacher_groups': monitor['teacher_groups'] if monitor else None,
                'monitor_group_mean': history[-1].get('monitor/group_mean'),
                'seconds': seconds, 'epoch_seconds': statistics.fmean(h['time'] for h in history),
                'images_per_s': statistics.fmean(h['train/images_per_s'] for h in history),
                **training_environment()}

    def run(self, rows: Optional[Sequence[str]] = None) -> dict:
        teacher = self.teacher()
        for seed in self.c.seeds:  # seed-major: an early stop leaves complete pairs behind
            for row in rows or self.c.rows:
                self.student(row, seed, teacher)
        # every finished run of the comparison, also those that other processes ran (other seeds or rows)
        return summarise(self.c, teacher, load_runs(self.out), self.out)


def training_environment() -> dict:
    """What a run trained on (train_*.py's --device auto: the GPU's name, else 'cpu'), with the CPU
    threads it had (runs train in this process) and the CPU capability: the rates depend on all three."""
    device = f'cuda ({torch.cuda.get_device_name(0)})' if torch.cuda.is_available() else 'cpu'
    return {'device': device, 'cpu_threads': torch.get_num_threads(),
            'torch_cpu_capability': torch.backends.cpu.get_cpu_capability()}


def evaluate_checkpoint(path: str, dataset: str, data_folder: str, batch_size: int,
                        train_per_class: Optional[int] = None) -> dict:
    """Top-1/top-5 of a checkpoint's own model on the full test set (the numbers that are reported),
    with the sizes of that test set and of the training set the run used."""
    import models
    from dataset import build_datasets
    from helper.checkpoint import load_checkpoint
    from helper.loops import validate
    ckpt = load_checkpoint(path)
    model = models.build_model(ckpt['arch'], num_classes=ckpt['num_classes'], dataset=dataset)
    model.load_state_dict(ckpt['model'])
    model.eval()
    data = build_datasets(dataset, data_folder, train_per_class=train_per_class, download=False)
    val = data.val
    loader = torch.utils.data.DataLoader(val, batch_size=max(batch_size, EVAL_BATCH), shuffle=False)
    with torch.no_grad():
        result = validate(model, loader, torch.device('cpu'))
    return {'top1': float(result['top1']), 'top5': float(result['top5']), 'images': len(val),
            'train_images': len(data.train)}


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


def load_runs(folder: str) -> List[dict]:
    """The raw records under <folder>/runs, in file-name order."""
    runs = os.path.join(folder, 'runs')
    return [_read_json(os.path.join(runs, f)) for f in sorted(os.listdir(runs)) if f.endswith('.json')] \
        if os.path.isdir(runs) else []


def summarise(comparison: Comparison, teacher: dict, records: List[dict], out: str) -> dict:
    """Write summary.json, summary.md, curves.png and forest.png from the raw run records."""
    from helper import evidence_figures
    by_row = {row: {r['seed']: r for r in records if r['row'] == row} for row in comparison.rows}
    by_row = {row: runs for row, runs in by_row.items() if runs}
    accuracy = {row: {s: r['test_top1_full'] for s, r in runs.items()} for row, runs in by_row.items()}
    cka_groups = {s: r['teacher_groups'] for s, r in by_row.get('ckagroup', {}).items()}
    rows = {}
    for row, runs in by_row.items():
        curves = [runs[s]['curve'] for s in sorted(runs)]
        mean_curve = [statistics.fmean(c[e] for c in curves) for e in range(min(map(len, curves)))]
        flows = [f for f in (flow_cka(runs[s], cka_groups.get(s)) for s in sorted(runs)) if f is not None]
        rows[row] = {'seeds': sorted(runs), 'top1': stats.mean_std(list(accuracy[row].values())),
                     'vs': {b: stats.paired_difference(accuracy[row], accuracy[b]) for b in BASELINES
                            if b in accuracy and b != row},
                     'plateau_gain': plateau(mean_curve), 'final_slope': final_slope(mean_curve),
                     'pre_decay_slope': pre_decay_slope(mean_curve, comparison.lr_decay_epochs),
                     'epoch_seconds': statistics.fmean(
                         r['epoch_seconds'] for r in runs.values()),
                     'flow_cka': statistics.fmean(flows) if flows else None,
                     'random_partitions': sorted({json.dumps(r['teacher_groups']) for r in runs.values()})
                     if row == 'random_groups' else None}
    flow_rows = [r for r in rows if rows[r]['flow_cka'] is not None]
    summary = {'comparison': comparison.name, 'notes': comparison.notes, 'teacher': dict(
        {k: teacher[k] for k in ('model', 'epochs', 'train_images', 'test_top1_full', 'plateau_gain', 'seconds')},
        final_slope=final_slope(teacher['curve']) if 'curve' in teacher else None,
        pre_decay_slope=pre_decay_slope(teacher['curve'], comparison.teacher.lr_decay_epochs)
        if 'curve' in teacher else None),
        'student': comparison.student, 'student_train_per_class': comparison.train_per_class,
        'epochs': comparison.epochs, 'rows': rows,
        'flow_vs_accuracy_pearson_over_rows': stats.pearson([rows[r]['flow_cka'] for r in flow_rows],
                                                            [rows[r]['top1']['mean'] for r in flow_rows])}
    write_json_atomic(summary, os.path.join(out, 'summary.json'))
    with open(os.path.join(out, 'summary.md'), 'w') as f:
        f.write(markdown(comparison, summary))
    figure = evidence_figures.learning_curves({row: [runs[s]['curve'] for s in sorted(runs)]
                                               for row, runs in by_row.items()}, comparison.name)
    evidence_figures.save(figure, os.path.join(out, 'curves.png'))
    figure = evidence_figures.forest_plot({row: rows[row]['vs']['kd'] for row in rows if 'kd' in rows[row]['vs']},
                                          'kd', comparison.name)
    evidence_figures.save(figure, os.path.join(out, 'forest.png'))
    return summary


def _pm(summary: dict) -> str:
    if summary['mean'] is None:
        return '–'
    return f'{summary["mean"]:.2f}' + (f' ± {summary["std"]:.2f}' if summary['std'] is not None else '')


def _diff(d: Optional[dict]) -> str:
    if not d or d['mean'] is None:
        return '–'
    if d['low'] is None:
        return f'{d["mean"]:+.2f} (n={d["n"]}, no interval)'
    return f'{d["mean"]:+.2f} [{d["low"]:+.2f}, {d["high"]:+.2f}] (n={d["n"]})'


def markdown(comparison: Comparison, summary: dict) -> str:
    teacher = summary['teacher']
    per_class = comparison.train_per_class
    lines = [f'### {comparison.name}: {teacher["model"]} -> {comparison.student}',
             '',
             f'Low data: the student trains on {per_class} images per class of {comparison.dataset}'
             if per_class else f'The student trains on the whole {comparison.dataset} training set',
             f'for {summary["epochs"]} epochs; top-1 on the full test set after the last epoch. Teacher: '
             f'{teacher["test_top1_full"]:.2f}% after {teacher["epochs"]} epochs on {teacher["train_images"]} images '
             f'(last-5 minus previous-5 epoch gain {_num(teacher["plateau_gain"])}, slope over the last 5 epochs '
             f'{_num(teacher.get("final_slope"), 3)} points/epoch; over the 5 epochs before its first learning-rate '
             f'decay {_num(teacher.get("pre_decay_slope"), 3)}). '
             'Differences are paired over seeds, with a 95% t-interval.',
             '',
             '| row | seeds | top-1 (mean ± std) | vs KD | vs ckagroup (CKA groups) | curve gain, last 5 epochs '
             '| slope, last 5 epochs (points/epoch) | slope, 5 epochs before the first decay | flow CKA |',
             '|---|---|---|---|---|---|---|---|---|']
    for row, r in summary['rows'].items():
        lines.append(f'| {row} | {len(r["seeds"])} | {_pm(r["top1"])} | {_diff(r["vs"].get("kd"))} | '
                     f'{_diff(r["vs"].get("ckagroup"))} | {_num(r["plateau_gain"])} | {_num(r.get("final_slope"), 3)} | '
                     f'{_num(r.get("pre_decay_slope"), 3)} | {_num(r["flow_cka"], 3)} |')
    lines += ['', f'Pearson r of flow CKA and top-1 over rows: {_num(summary["flow_vs_accuracy_pearson_over_rows"], 3)}', '']
    return '\n'.join(lines)


def _num(value, digits=2) -> str:
    return '–' if value is None else f'{value:.{digits}f}'


def with_budget(comparison: Comparison, **overrides) -> Comparison:
    """The comparison at another budget (smoke tests): student fields directly, teacher fields as
    teacher_<field>. The settings enter every fingerprint, so such runs never mix with real ones."""
    teacher = {k[len('teacher_'):]: v for k, v in overrides.items() if k.startswith('teacher_') and v is not None}
    own = {k: v for k, v in overrides.items() if not k.startswith('teacher_') and v is not None}
    return replace(comparison, teacher=replace(comparison.teacher, **teacher), **own)



def estimate_hours(comparison: Comparison, smoke: dict) -> dict:
    """CPU-hours of `comparison` at its declared budget, scaled from a smoke run's summary records:
    `smoke` = {'teacher': teacher.json, 'runs': [run records]} measured on this machine. Training
    time scales with images x epochs at the measured images/s; the rest of a run (evaluation, CKA
    grouping, monitor) is charged per epoch as measured."""
    if comparison.dataset != 'cifar10':
        raise ConfigError('estimate_hours knows the CIFAR-10 set sizes only (50,000 training images, 10 classes)')
    teacher = smoke['teacher']
    teacher_images = 50000 if comparison.teacher.train_per_class is None else 10 * comparison.teacher.train_per_class
    teacher_seconds = comparison.teacher.epochs * teacher_images / teacher['images_per_s']
    student_seconds = {}
    for row in comparison.rows:
        timed = [r for r in smoke['runs'] if not r.get('resumed') and not r.get('reused_from')]
        runs = [r for r in timed if r['row'] == row] or [r for r in timed if r['row'] == 'ckagroup']
        if not runs:
            raise ConfigError(f'the smoke results hold no run of row {row!r} (nor ckagroup) to scale')
        ips = statistics.fmean(r['images_per_s'] for r in runs)
        overhead = statistics.fmean(max(0.0, r['seconds'] - r['epochs'] * r['epoch_seconds']) / r['epochs'] for r in runs)
        images = 10 * comparison.train_per_class if comparison.train_per_class else 50000
        student_seconds[row] = comparison.epochs * (images / ips + overhead) * len(comparison.seeds)
    return {'teacher_hours': teacher_seconds / 3600, 'student_hours': {r: s / 3600 for r, s in student_seconds.items()},
            'total_hours': (teacher_seconds + sum(student_seconds.values())) / 3600}
