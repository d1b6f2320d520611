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
import functools
import glob
import hashlib
import importlib
import json
import os
import platform
import shutil
import statistics
import time
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from cka import even_split
from distiller_zoo import Distiller, distiller_class, distiller_names
from helper import stats
from helper.run_folder import OPTIONS_FILE, write_json_atomic
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


def _family_method(method: str, beta, cls=1, div=1, *extra) -> Tuple[str, ...]:
    """A family method at its published weights (scripts/<method>.sh), the CKA monitor grouping
    the layers in 4 like every other row."""
    return ('--distill', method, '-c', str(cls), '-d', str(div), '-b', str(beta),
            '--cka_groups', str(N_GROUPS)) + tuple(extra)


# CRD's negatives per sample: 16,384 by default, more than the 4,500 other-class images of a
# 500-per-class CIFAR-10 subset offer; 4096 fits (the largest power of two that does).
FAMILY_NCE_K = 4096
# Every --distill method of the family at its published weights, and ckagroup at beta 5 and 20
# with CKA groups and at beta 20 with even groups; rows are named by method.
FAMILY_ROWS = {
    'kd': KD,
    'hint': _family_method('hint', 100),
    'attention': _family_method('attention', 1000),
    'similarity': _family_method('similarity', 3000),
    'vid': _family_method('vid', 1),
    'crd': _family_method('crd', 0.8, 1, 1, '--nce_k', str(FAMILY_NCE_K)),
    'semckd': _family_method('semckd', 400),
    'srrl': _family_method('srrl', 1),
    'simkd': _family_method('simkd', 1, 0, 0),
    'ckagroup_b5': _ckagroup(),
    'ckagroup_b20': _ckagroup(20, N_GROUPS),
    'ckagroup_b20_even': _ckagroup(20, N_GROUPS, '--cka_teacher_split', 'even'),
}
# methods that predict through a head of their own: how the final evaluation rebuilds the deployed
# student from the checkpoint's 'deploy' entry ('module:function' taking the student and that entry)
DEPLOYED_HEADS = {'simkd': 'distiller_zoo.simkd:load_simkd_inference'}
EVAL_BATCH = 256  # the final evaluation's batch (eval-mode BN: the result does not depend on it)
MONITOR_BATCHES = 4  # --cka_monitor_batches default: whole held-out batches the CKA monitor draws


# docs/FAST_TRAINING.md's options: bf16 autocast forwards (the CKA math stays float32), images
# cropped and flipped as tensors (throughput measured in docs/EVIDENCE.md, "Budget").
FAST_OPTIONS = ('--data_on_device', '--amp', '--channels_last')
# The same without bf16: the sessions that run a comparison land on different CPUs, and where bf16
# is emulated (no AVX512-BF16 / AMX) an --amp step is many times slower than float32 (about 10x on
# an AVX2 EPYC); float32 runs at a usable speed on every CPU, so a comparison spread over
# sessions keeps one protocol.
FLOAT32_OPTIONS = ('--data_on_device', '--channels_last')


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
    # test images per class evaluated each epoch by the teacher, and by the students when
    # val_split_per_class is None (the older comparisons); the full test set at the end
    val_per_class: Optional[int] = 200
    # training images per class after each class's first train_per_class: the students' per-epoch
    # curves and CKA monitor, so that only the final number touches the test set
    val_split_per_class: Optional[int] = None
    batch_size: int = 64
    dataset: str = 'cifar10'
    train_options: Tuple[str, ...] = FAST_OPTIONS  # every student run of every row
    notes: str = ''
    reference: str = 'kd'  # every row's paired difference against it forms the table's family of tests
    cka_row: str = 'ckagroup'  # the ckagroup row with CKA groups: the second baseline; flow CKA uses its groups
    headline: Optional[str] = None  # the row that answers the comparison's question, declared before it runs


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
    # ckagroup's place in the family (issue 28): the first pair's teacher and student protocol,
    # curves and monitor on 200 held-out training images per class instead of test images.
    Comparison('resnet56_resnet8_family', RESNET56, 'resnet8', FAMILY_ROWS, seeds=(0, 1, 2, 3, 4),
               val_split_per_class=200, cka_row='ckagroup_b20', headline='ckagroup_b20',
               train_options=FLOAT32_OPTIONS,
               notes=f'every family method at its published weights (CRD --nce_k {FAMILY_NCE_K}); '
                     'headline: ckagroup beta 20 with CKA groups'),
)}


def baselines(comparison: Comparison) -> Tuple[str, str]:
    """The rows every paired difference is taken against: the reference (KD), then the CKA row."""
    return comparison.reference, comparison.cka_row


def check_comparison(comparison: Comparison) -> None:
    """Refuse a declaration the instrument cannot measure right, before anything trains."""
    for row, argv in comparison.rows.items():
        method = argv[argv.index('--distill') + 1]
        if method not in distiller_names():
            raise ConfigError(f'row {row!r}: --distill {method} is no method; choose from {", ".join(distiller_names())}')
        method_class = distiller_class(method)
        own_head = (method_class.student_logits is not Distiller.student_logits
                    or method_class.predict is not Distiller.predict)
        if own_head and method not in DEPLOYED_HEADS:
            raise ConfigError(f'row {row!r}: --distill {method} predicts through its own head, which the final '
                              'evaluation cannot rebuild; add its deployed model to DEPLOYED_HEADS')
    missing = [b for b in baselines(comparison) if b not in comparison.rows]
    if missing:
        raise ConfigError(f'comparison {comparison.name!r} lacks the baseline rows {missing}')
    if comparison.headline is not None and comparison.headline not in comparison.rows:
        raise ConfigError(f'comparison {comparison.name!r}: headline row {comparison.headline!r} is not a row')
    monitored = ('val_split_per_class', comparison.val_split_per_class) if comparison.val_split_per_class \
        else ('val_per_class', comparison.val_per_class)
    if monitored[1] is not None and 10 * monitored[1] < MONITOR_BATCHES * comparison.batch_size:
        raise ConfigError(f'{monitored[0]} {monitored[1]} leaves fewer held-out images than the CKA '
                          f'monitor\'s {MONITOR_BATCHES} batches of {comparison.batch_size}; raise it')
    if comparison.val_split_per_class is not None and comparison.train_per_class is None:
        raise ConfigError(f'comparison {comparison.name!r}: val_split_per_class holds images out after the '
                          'students\' training subset; give train_per_class too')
    if len(set(comparison.seeds)) != len(comparison.seeds) or not comparison.seeds:
        raise ConfigError(f'comparison {comparison.name!r}: seeds must be distinct and non-empty')


# The code of the CKA term (and of the CKA monitor): runs of one comparison that use it should
# share one version of it, which each raw record names by this hash.
CKA_CODE_MODULES = ('cka', 'distiller_zoo.ckagroup')


@functools.lru_cache(maxsize=None)
def cka_code_hash() -> str:
    """sha256 over the bytes of cka/*.py and distiller_zoo/ckagroup.py (sorted by path), read right
    after importing them: the files of the code this process runs (Python does not reload a module
    edited later)."""
    modules = [importlib.import_module(name) for name in CKA_CODE_MODULES]
    root = os.path.dirname(os.path.dirname(os.path.abspath(modules[1].__file__)))
    paths = glob.glob(os.path.join(os.path.dirname(modules[0].__file__), '*.py')) + [modules[1].__file__]
    sha = hashlib.sha256()
    for path in sorted(os.path.relpath(os.path.abspath(p), root) for p in paths):
        sha.update(path.encode() + b'\0')
        with open(os.path.join(root, path), 'rb') as f:
            sha.update(f.read())
    return sha.hexdigest()


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
        self.cka_code_hash = cka_code_hash()  # at start: the version every run of this process trains with

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
            self._check_teacher_checkpoint(record, record_path)
            self.log(f'== teacher {record["model"]}: reused ({record_path})')
            return record
        earlier = self._reusable(key, teacher=True)
        if earlier:  # trained for another comparison: its record keeps its training time and machine
            record = dict(_read_json(earlier), reused_from=os.path.relpath(earlier, self.results_root))
            self._check_teacher_checkpoint(record, earlier)
            write_json_atomic(record, record_path)
            self.log(f'== teacher {record["model"]}: reused {record["reused_from"]}')
            return record
        run_dir = self._run_folder(save_dir, 'teachers')
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
                  # the training time the checkpoint carries over resumes, not this call's (which only
                  # reopens a run that had finished before teacher.json was written)
                  'seconds': torch.load(checkpoint, map_location='cpu', weights_only=True)['total_time_s'],
                  'images_per_s': statistics.fmean(h['train/images_per_s'] for h in history),
                  **learning_rates(run_dir), **training_environment()}
        write_json_atomic(record, record_path)
        return record

    @staticmethod
    def _check_teacher_checkpoint(record: dict, record_path: str) -> None:
        if not (os.path.isfile(record['checkpoint']) and file_digest(record['checkpoint']) == record['digest']):
            raise ConfigError(f'the teacher checkpoint {record["checkpoint"]!r} recorded in {record_path} is '
                              'missing or changed; restore it (its runs were distilled from it)')

    # ---- the students ----
    def student_argv(self, row: str, seed: int) -> List[str]:
        """The run's train_student.py arguments, but for --path_t and the local paths."""
        c = self.c
        return (['--model_s', c.student, '--dataset', c.dataset,
                 '--epochs', str(c.epochs), '--lr_decay_epochs', c.lr_decay_epochs,
                 '--learning_rate', str(c.learning_rate), '--batch_size', str(c.batch_size),
                 '--seed', str(seed), '--trial', f'{row}-seed{seed}']
                + (['--train_per_class', str(c.train_per_class)] if c.train_per_class else [])
                + self._validation_argv()
                + list(c.rows[row]) + list(c.train_options) + self.extra)

    def _validation_argv(self) -> List[str]:
        """The students' per-epoch evaluation set: held-out training images when declared, else
        (the older comparisons, whose fingerprints must not change) the test subset."""
        if self.c.val_split_per_class:
            return ['--val_split_per_class', str(self.c.val_split_per_class)]
        return ['--val_per_class', str(self.c.val_per_class)] if self.c.val_per_class else []

    def _curve_images(self) -> str:
        if self.c.val_split_per_class:
            return (f'per epoch on {self.c.val_split_per_class} training images per class held out after the '
                    f'first {self.c.train_per_class} (--val_split_per_class)')
        return 'per-epoch on --val_per_class' if self.c.val_per_class else 'per epoch on the full test set'

    def run_path(self, row: str, seed: int) -> str:
        return os.path.join(self.out, 'runs', f'{row}_seed{seed}.json')

    def _reusable(self, key: str, teacher: bool = False) -> Optional[str]:
        """A finished run (`teacher`: a teacher.json, that comparison's own record rather than a
        copy) with this fingerprint anywhere under the results root (comparisons share them)."""
        if not os.path.isdir(self.results_root):
            return None
        for comparison in sorted(os.listdir(self.results_root)):
            if teacher:
                path = os.path.join(self.results_root, comparison, 'teacher.json')
                paths = [path] if os.path.isfile(path) else []
            else:
                runs = os.path.join(self.results_root, comparison, 'runs')
                paths = [os.path.join(runs, n) for n in sorted(os.listdir(runs)) if n.endswith('.json')] \
                    if os.path.isdir(runs) else []
            for path in paths:
                record = _read_json(path)
                if record.get('fingerprint') == key and not (teacher and record.get('reused_from')):
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
                'deployed': final['deployed'],
                'curve': [h['test/top1'] for h in history], 'curve_val_images': self._curve_images(),
                'train_images': final['train_images'], 'epochs': len(history),
                'teacher_groups': groups['groups'] if groups else None,
                'teacher_split': groups['settings'].get('teacher_split', 'cka') if groups else None,
                'monitor_matrix': monitor['matrix'] if monitor else None,
                'monitor_student_groups': monitor['student_groups'] if monitor else None,
                'monitor_teacher_groups': monitor['teacher_groups'] if monitor else None,
                'monitor_group_mean': history[-1].get('monitor/group_mean'),
                'seconds': seconds, 'epoch_seconds': statistics.fmean(h['time'] for h in history),
                'images_per_s': statistics.fmean(h['train/images_per_s'] for h in history),
                'cka_code_hash': self.cka_code_hash, **learning_rates(run_dir), **training_environment()}

    def run(self, rows: Optional[Sequence[str]] = None) -> dict:
        teacher = self.teacher()
        for seed in self.c.seeds:  # seed-major: an early stop leaves complete pairs behind
            for row in rows or self.c.rows:
                self.student(row, seed, teacher)
        # every finished run of the comparison, also those that other processes ran (other seeds or rows)
        return summarise(self.c, teacher, load_runs(self.out), self.out)


def training_environment() -> dict:
    """What a run trained on (train_*.py's --device auto: the GPU's name, else 'cpu'), with the CPU
    threads it had (runs train in this process), the CPU model and its capability in torch: the
    rates, and in bf16 the rounding, depend on them."""
    device = f'cuda ({torch.cuda.get_device_name(0)})' if torch.cuda.is_available() else 'cpu'
    return {'device': device, 'cpu_threads': torch.get_num_threads(), 'cpu_model': cpu_model(),
            'torch_cpu_capability': torch.backends.cpu.get_cpu_capability()}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or 'unknown'


def learning_rates(run_dir: str) -> dict:
    """The learning rate asked for and the one that trained (the MobileNet/ShuffleNet rule replaces
    it with 0.01), from the run's options.json."""
    options = _read_json(os.path.join(run_dir, OPTIONS_FILE))
    return {'learning_rate_requested': options['requested_learning_rate'],
            'learning_rate_effective': options['learning_rate']}


def evaluate_checkpoint(path: str, dataset: str, data_folder: str, batch_size: int,
                        train_per_class: Optional[int] = None) -> dict:
    """Top-1/top-5 of a checkpoint's model as its method deploys it (the student alone, or with the
    head of its 'deploy' entry: SimKD's projector and the teacher's classifier) on the full test set
    (the numbers that are reported), with the sizes of that test set and of the training set the
    run used, and what was deployed."""
    import models
    from dataset import build_datasets
    from helper.checkpoint import load_checkpoint
    from helper.loops import validate
    ckpt = load_checkpoint(path)
    model = models.build_model(ckpt['arch'], num_classes=ckpt['num_classes'], dataset=dataset)
    model.load_state_dict(ckpt['model'])
    deployed = 'the model alone'
    if 'deploy' in ckpt:
        method = ckpt['deploy'].get('method')
        if method not in DEPLOYED_HEADS:
            raise ConfigError(f'{path!r} holds a deployed {method!r} head that the evaluation cannot rebuild; '
                              'add it to DEPLOYED_HEADS')
        module, function = DEPLOYED_HEADS[method].split(':')
        model = getattr(importlib.import_module(module), function)(model, ckpt['deploy'])
        deployed = f'the model with the {method} head of the checkpoint\'s deploy entry'
    model.eval()
    data = build_datasets(dataset, data_folder, train_per_class=train_per_class, download=False)
    val = data.val
    loader = torch.utils.data.DataLoader(val, batch_size=max(batch_size, EVAL_BATCH), shuffle=False)
    with torch.no_grad():
        result = validate(model, loader, torch.device('cpu'))
    return {'top1': float(result['top1']), 'top5': float(result['top5']), 'images': len(val),
            'train_images': len(data.train), 'deployed': deployed}


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
    reference, cka_row = baselines(comparison)
    by_row = {row: {r['seed']: r for r in records if r['row'] == row} for row in comparison.rows}
    by_row = {row: runs for row, runs in by_row.items() if runs}
    accuracy = {row: {s: r['test_top1_full'] for s, r in runs.items()} for row, runs in by_row.items()}
    cka_groups = {s: r['teacher_groups'] for s, r in by_row.get(cka_row, {}).items()}
    rows = {}
    for row, runs in by_row.items():
        curves = [runs[s]['curve'] for s in sorted(runs)]
        mean_curve = [statistics.fmean(c[e] for c in curves) for e in range(min(map(len, curves)))]
        flows = [f for f in (flow_cka(runs[s], cka_groups.get(s)) for s in sorted(runs)) if f is not None]
        rows[row] = {'seeds': sorted(runs), 'top1': stats.mean_std(list(accuracy[row].values())),
                     'vs': {b: stats.paired_difference(accuracy[row], accuracy[b]) for b in (reference, cka_row)
                            if b in accuracy and b != row},
                     'plateau_gain': plateau(mean_curve), 'final_slope': final_slope(mean_curve),
                     'pre_decay_slope': pre_decay_slope(mean_curve, comparison.lr_decay_epochs),
                     'epoch_seconds': statistics.fmean(
                         r['epoch_seconds'] for r in runs.values()),
                     'flow_cka': statistics.fmean(flows) if flows else None,
                     'random_partitions': sorted({json.dumps(r['teacher_groups']) for r in runs.values()})
                     if row == 'random_groups' else None,
                     'cka_code_hashes': sorted({r['cka_code_hash'] for r in runs.values() if 'cka_code_hash' in r})
                     or None}
    # the table's family of tests: every row's paired difference against the reference, adjusted together
    adjusted = stats.holm({row: r['vs'][reference]['p'] for row, r in rows.items() if reference in r['vs']})
    for row, p in adjusted.items():
        rows[row]['vs'][reference]['holm_p'] = p
        rows[row]['verdict'] = verdict(rows[row]['vs'][reference]['mean'], p)
    flow_rows = [r for r in rows if rows[r]['flow_cka'] is not None]
    summary = {'comparison': comparison.name, 'notes': comparison.notes, 'teacher': dict(
        {k: teacher[k] for k in ('model', 'epochs', 'train_images', 'test_top1_full', 'plateau_gain', 'seconds')},
        final_slope=final_slope(teacher['curve']) if 'curve' in teacher else None,
        pre_decay_slope=pre_decay_slope(teacher['curve'], comparison.teacher.lr_decay_epochs)
        if 'curve' in teacher else None),
        'student': comparison.student, 'student_train_per_class': comparison.train_per_class,
        'epochs': comparison.epochs, 'reference': reference, 'cka_row': cka_row, 'headline': comparison.headline,
        'curves_and_flow_on': curves_and_flow_images(comparison),
        'family_of_tests': {'against': reference, 'tests': sum(p is not None for p in adjusted.values()),
                            'adjustment': 'Holm', 'alpha': ALPHA},
        'rows': rows,
        'flow_vs_accuracy_pearson_over_rows': stats.pearson([rows[r]['flow_cka'] for r in flow_rows],
                                                            [rows[r]['top1']['mean'] for r in flow_rows])}
    write_json_atomic(summary, os.path.join(out, 'summary.json'))
    with open(os.path.join(out, 'summary.md'), 'w') as f:
        f.write(markdown(comparison, summary))
    figure = evidence_figures.learning_curves({row: [runs[s]['curve'] for s in sorted(runs)]
                                               for row, runs in by_row.items()}, comparison.name)
    evidence_figures.save(figure, os.path.join(out, 'curves.png'))
    figure = evidence_figures.forest_plot({row: rows[row]['vs'][reference] for row in rows if reference in rows[row]['vs']},
                                          reference, comparison.name)
    evidence_figures.save(figure, os.path.join(out, 'forest.png'))
    return summary


ALPHA = 0.05  # family-wise error rate of each table's tests against its reference


def verdict(mean: Optional[float], adjusted_p: Optional[float]) -> str:
    """'ahead' / 'behind' the reference where the Holm-adjusted p is below ALPHA, else 'no
    difference found' (also without a test: fewer than two paired seeds)."""
    if adjusted_p is None or adjusted_p >= ALPHA or not mean:
        return 'no difference found'
    return 'ahead' if mean > 0 else 'behind'


def curves_and_flow_images(comparison: Comparison) -> str:
    """Which images the students' per-epoch curves and CKA monitor (flow CKA) were measured on."""
    if comparison.val_split_per_class:
        return (f'{comparison.val_split_per_class} training images per class held out after the students\' '
                f'{comparison.train_per_class} (the teacher trained on them); the test set gives only the final number')
    if comparison.val_per_class:
        return (f'test images: the first {comparison.val_per_class} per class of the test set (nothing was chosen '
                'by them; the final number is the full test set)')
    return 'the full test set'


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
    reference, cka_row = baselines(comparison)
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
             'Differences are paired over seeds, with an unadjusted 95% t-interval. Against '
             f'{reference}: the two-sided paired t-test p, the Holm-adjusted p over the table\'s '
             f'{summary["family_of_tests"]["tests"]} tests against {reference}, the seeds on which the row is ahead, '
             f'and the verdict (\'ahead\' or \'behind\' where the adjusted p < {ALPHA}, else \'no difference found\'). '
             f'Curves and flow CKA: {summary["curves_and_flow_on"]}.'
             + (f' Headline row (declared before the runs): {comparison.headline}.' if comparison.headline else ''),
             '',
             f'| row | seeds | top-1 (mean ± std) | vs {reference} | p | Holm p | seeds ahead | verdict vs {reference} '
             f'| vs {cka_row} (CKA groups) | curve gain, last 5 epochs '
             '| slope, last 5 epochs (points/epoch) | slope, 5 epochs before the first decay | flow CKA |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for row, r in summary['rows'].items():
        against = r['vs'].get(reference) or {}
        ahead = f'{against["ahead"]}/{against["n"]}' if against else '–'
        lines.append(f'| {row} | {len(r["seeds"])} | {_pm(r["top1"])} | {_diff(against)} | '
                     f'{_p(against.get("p"))} | {_p(against.get("holm_p"))} | {ahead} | {r.get("verdict", "–")} | '
                     f'{_diff(r["vs"].get(cka_row))} | {_num(r["plateau_gain"])} | {_num(r.get("final_slope"), 3)} | '
                     f'{_num(r.get("pre_decay_slope"), 3)} | {_num(r["flow_cka"], 3)} |')
    lines += ['', f'Pearson r of flow CKA and top-1 over rows: {_num(summary["flow_vs_accuracy_pearson_over_rows"], 3)}']
    users = {}  # CKA-code version -> the rows whose runs used it
    for row, r in summary['rows'].items():
        for version in r.get('cka_code_hashes') or []:
            users.setdefault(version, []).append(row)
    if users:
        lines += ['', 'CKA-term code (sha256 of cka/*.py and distiller_zoo/ckagroup.py, first 12 digits): '
                  + '; '.join(f'{version[:12]}: {", ".join(rows)}' for version, rows in sorted(users.items()))]
    return '\n'.join(lines + [''])


def _p(value: Optional[float]) -> str:
    return '–' if value is None else f'{value:.3f}' if value >= 0.001 else f'{value:.1e}'


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
