"""The teacher's CKA groups of a run, and `python -m helper.teacher_groups`.

Before training, `pair_teacher_groups` gives `--distill ckagroup` and the CKA monitor of every
method their paired groups: it computes the teacher's layer-by-layer CKA matrix on training data
and splits it into contiguous groups (`cka.contiguous_groups`), or loads the groups of
`--cka_group_file`, or, on resume, of the run folder's own `cka_groups.json`; in a distributed run
rank 0 does so and sends the record to every rank. `write_teacher_groups` puts `cka_groups.json`,
`cka_groups.png` and the TensorBoard figure `cka/teacher` in the run folder.

The command line computes the same record without training:

    python -m helper.teacher_groups --path_t CKPT --dataset D [--data_folder F] \
        --n_groups N|auto --batches K --out DIR

writes DIR/cka_groups.json (layer names, the teacher matrix, the groups, every setting, and how
stable the boundaries are across batches) and DIR/cka_groups.png (the matrix with layer names, a
colour bar and the groups outlined); train_student.py accepts the JSON as --cka_group_file.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

import models
from cka import (CKAAccumulator, PairedGroups, auto_n_groups, boundary_stability, contiguous_groups, even_split,
                 groups_to_json, min_cka_samples, pair_groups, random_split, save_png, teacher_caption,
                 teacher_figure, validate_groups)
from dataset import DATASET_NAMES
from distiller_zoo.ckagroup import parse_n_groups
from helper.checkpoint import load_teacher
from helper.run_folder import write_json_atomic
from runtime import collectives
from runtime.errors import ConfigError

GROUPS_FILE = 'cka_groups.json'
GROUPS_PNG = 'cka_groups.png'


def check_n_groups(n: int, num_layers: int, who: str, kind: str) -> None:
    if n > num_layers:
        more = ' (or --cka_layers blocks for more layers)' if kind == 'stages' else ''
        raise ConfigError(f'--cka_groups {n} exceeds the {num_layers} {kind.rstrip("s")}-level layers of the '
                          f'{who}; use at most {num_layers}{more}')


def check_resume_cka_options(opt, saved_options: Optional[dict]) -> None:
    """Refuse a --resume whose --cka_* options differ from those the run folder recorded: they
    decide the teacher groups, the CKA term and what is logged, so a changed one would silently
    switch them mid-run."""
    if not saved_options:
        return
    current = vars(opt)
    changed = [key for key in sorted(current) if key.startswith('cka_') and key in saved_options
               and saved_options[key] != current[key]]
    if changed:
        key = changed[0]
        raise ConfigError(f'--resume: --{key} {current[key]!r} differs from the run\'s {saved_options[key]!r} '
                          f'(options.json); resume with the run\'s --cka_* options, or start a new --trial')


@torch.no_grad()
def teacher_cka(teacher: nn.Module, kind: str, dataset, batches: int, batch_size: int,
                kernel: str, debiased: bool, seed: int, device) -> tuple:
    """Minibatch CKA of the teacher's `kind` layers on `batches` random batches of `dataset`.

    Returns (pooled matrix, per-batch matrices) as numpy arrays, whatever the device. The batches
    are drawn at random with a seeded generator: image folders are sorted by class, so their first
    batches would hold a single class.
    """
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                         generator=generator, num_workers=0, drop_last=True)
    if len(loader) == 0:
        raise ConfigError(f'the training set ({len(dataset)} images) is smaller than one batch of '
                          f'{batch_size}; lower --batch_size')
    accumulator = CKAAccumulator(kernel=kernel, debiased=debiased, keep_per_batch=True)
    was_training = teacher.training
    teacher.eval()
    try:
        for index, (images, *_rest) in enumerate(loader):
            if index == batches:
                break
            accumulator.update(models.layer_outputs(teacher, images.to(device), kind))
    finally:
        teacher.train(was_training)
    return accumulator.matrix().cpu().numpy(), [m.numpy() for m in accumulator.per_batch]


def compute_teacher_groups(teacher: nn.Module, kind: str, layer_names: Sequence[str], dataset,
                           n_groups: Optional[int], batches: int, batch_size: int, kernel: str,
                           debiased: bool, seed: int, device, max_groups: Optional[int] = None,
                           extra_settings=None) -> dict:
    """The teacher's CKA matrix and its n contiguous groups, as the JSON record of cka_groups.json.

    `n_groups=None` picks n with `auto_n_groups` (at most `max_groups`). Stability: how often each
    boundary of the pooled grouping recurs in the groupings of single batches.
    """
    matrix, per_batch = teacher_cka(teacher, kind, dataset, batches, batch_size, kernel, debiased, seed, device)
    if n_groups is None:
        n_groups = auto_n_groups(matrix, max_groups=max_groups)
    check_n_groups(n_groups, len(layer_names), 'teacher', kind)
    groups = contiguous_groups(matrix, n_groups)
    stability = boundary_stability(per_batch, n_groups, pooled=matrix)
    settings = {'layers': kind, 'kernel': kernel,
                'estimator': 'debiased' if debiased else 'biased', 'objective': 'kmeans',
                'n_groups': n_groups, 'batches': len(per_batch), 'batch_size': batch_size,
                'seed': seed, **(extra_settings or {})}
    return groups_to_json(layer_names, matrix, groups, settings=settings, stability=stability)


def _check_group_record(record) -> None:
    """Raise ValueError unless `record` has every part of cka_groups.json that training reads."""
    if not isinstance(record, dict):
        raise ValueError(f'the file holds a {type(record).__name__}, not an object')
    missing = [key for key in ('layer_names', 'matrix', 'groups', 'settings') if key not in record]
    if missing:
        raise ValueError(f'no {", ".join(repr(k) for k in missing)} entry')
    names, matrix, groups = record['layer_names'], record['matrix'], record['groups']
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError("'layer_names' must be a list of strings")
    if not isinstance(record['settings'], dict):
        raise ValueError("'settings' must be an object")
    size = len(names)
    if (not isinstance(matrix, list) or len(matrix) != size
            or not all(isinstance(row, list) and len(row) == size for row in matrix)):
        raise ValueError(f"'matrix' must be {size} x {size}, one row and column per layer name")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
               for row in matrix for v in row):
        raise ValueError("'matrix' must hold finite numbers")
    if (not isinstance(groups, list) or not all(isinstance(g, list) for g in groups)
            or not all(isinstance(i, int) and not isinstance(i, bool) for g in groups for i in g)):
        raise ValueError("'groups' must be a list of lists of layer indices")
    validate_groups(groups, size)


def load_group_file(path: str, layer_names: Sequence[str], kind: str, flag: str = '--cka_group_file') -> dict:
    """cka_groups.json, checked whole (keys, types, sizes, contiguous groups, the teacher's layer names)."""
    try:
        with open(path) as f:
            record = json.load(f)
        _check_group_record(record)
    except (OSError, ValueError) as exc:
        raise ConfigError(f'{flag} {path!r} is not a usable cka_groups.json file '
                          f'({type(exc).__name__}: {exc}); write one with python -m helper.teacher_groups') from None
    names = record['layer_names']
    if names != list(layer_names):
        raise ConfigError(f'{flag} {path!r} names {len(names)} layers that do not match the '
                          f"teacher's {len(layer_names)} {kind.rstrip('s')}-level layers; recompute it for this "
                          'teacher and --cka_layers')
    return record


def pair_teacher_groups(opt, student: nn.Module, teacher: nn.Module, teacher_name: str, input_shape,
                        train_set: Callable, device, resume_file: Optional[str] = None) -> PairedGroups:
    """The teacher's groups of a run paired with the student's, from the --cka_* options.

    The teacher record comes from `resume_file` (the run folder's cka_groups.json, when resuming
    and it exists), else from --cka_group_file, else from a teacher pass over `train_set()` (the
    training set with evaluation transforms). Every check that needs no data runs before the
    teacher pass, so bad input fails at once. Distributed: rank 0 reads or computes the record and
    sends it, so every rank pairs the same groups (its errors are raised on every rank).
    """
    kind = opt.cka_layers
    student_names = models.layer_names(student, kind, input_shape)
    teacher_names = models.layer_names(teacher, kind, input_shape)
    n = parse_n_groups(opt.cka_groups)
    if n is not None:
        check_n_groups(n, len(student_names), 'student', kind)
        check_n_groups(n, len(teacher_names), 'teacher', kind)

    def teacher_record() -> tuple:
        """(record, where it came from)."""
        if resume_file is not None and os.path.isfile(resume_file):
            return load_group_file(resume_file, teacher_names, kind, flag="--resume: the run folder's"), 'resume'
        if opt.cka_group_file:
            return load_group_file(opt.cka_group_file, teacher_names, kind), 'file'
        start = time.perf_counter()
        record = compute_teacher_groups(
            teacher, kind, teacher_names, train_set(), n, opt.cka_batches, opt.batch_size, opt.cka_kernel,
            opt.cka_estimator == 'debiased', opt.seed, device, max_groups=len(student_names),
            extra_settings={'teacher': teacher_name})
        print(f'ckagroup: teacher groups computed from {record["settings"]["batches"]} batches of '
              f'{opt.batch_size} in {time.perf_counter() - start:.1f} s')
        return record, 'computed'

    record, source = collectives.run_on_main(teacher_record)
    if source == 'resume' and collectives.is_main():
        print(f'resume: teacher groups {record["groups"]} read from {resume_file} (not recomputed)')
    if source == 'file' and n is not None and n != len(record['groups']):
        print(f'note: --cka_group_file has {len(record["groups"])} groups; --cka_groups {n} ignored')
    n = len(record['groups'])
    check_n_groups(n, len(student_names), 'student', kind)
    check_n_groups(n, len(teacher_names), 'teacher', kind)
    teacher_groups = [list(g) for g in record['groups']]
    split = opt.cka_teacher_split
    if split != record['settings'].get('teacher_split', 'cka'):  # a resumed run's record is already split
        if split == 'even':  # ablation: ignore the CKA structure
            teacher_groups = even_split(len(teacher_names), n)
            record = dict(record, groups=teacher_groups, settings=dict(record['settings'], teacher_split='even'))
        elif split == 'random':  # ablation: the null, a random contiguous partition per seed
            teacher_groups = random_split(len(teacher_names), n, opt.seed)
            record = dict(record, groups=teacher_groups,
                          settings=dict(record['settings'], teacher_split='random', split_seed=opt.seed))
    student_groups, paired_teacher = pair_groups(len(student_names), teacher_groups, opt.cka_student_split,
                                                 opt.cka_pairing)
    return PairedGroups(student=student_groups, teacher=paired_teacher, record=record)


def write_teacher_groups(run, record: dict, step: int) -> None:
    """cka_groups.json, cka_groups.png and the TensorBoard figure `cka/teacher` in the run folder
    (rank 0 only)."""
    run.write_json(GROUPS_FILE, record)
    if run.enabled:
        figure = teacher_figure(record['matrix'], record['layer_names'], record['groups'],
                                caption=teacher_caption(record['settings']))
        save_png(figure, run.file(GROUPS_PNG))
        run.log_figure('cka/teacher', figure, step)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser('python -m helper.teacher_groups',
                                description="a teacher's CKA matrix, its contiguous groups and a heatmap")
    p.add_argument('--path_t', required=True, help='teacher checkpoint')
    p.add_argument('--dataset', default='cifar100', choices=DATASET_NAMES)
    p.add_argument('--data_folder', default='./data')
    p.add_argument('--train_per_class', type=int, default=None)
    p.add_argument('--n_groups', default='4', help="number of groups, or 'auto'")
    p.add_argument('--batches', type=int, default=10, help='training batches for minibatch CKA')
    p.add_argument('--batch_size', type=int, default=64)
    p.add_argument('--layers', default='blocks', choices=list(models.LAYER_KINDS))
    p.add_argument('--estimator', default='debiased', choices=['biased', 'debiased'])
    p.add_argument('--kernel', default='linear', choices=['linear', 'rbf'])
    p.add_argument('--seed', type=int, default=0, help='which random batches are drawn')
    p.add_argument('--device', default='auto')
    p.add_argument('--out', required=True, help='output folder')
    return p


def run(argv=None) -> dict:
    from helper.train import load_data, select_device  # the entry layer's data and device rules

    opt = parser().parse_args(argv)
    n_groups = parse_n_groups(opt.n_groups, '--n_groups')
    if opt.batches < 1:
        raise ConfigError(f'--batches {opt.batches}: give at least 1 batch')
    needed = min_cka_samples(opt.estimator)
    if opt.batch_size < needed:
        raise ConfigError(f'--batch_size {opt.batch_size}: the {opt.estimator} CKA estimator needs at least '
                          f'{needed} images per batch; raise --batch_size')
    device = select_device(opt.device)
    opt.num_workers = 0
    data = load_data(opt, augment=False)
    teacher, arch = load_teacher(opt.path_t, data.num_classes, opt.dataset, device)
    names = models.layer_names(teacher, opt.layers, tuple(data.train[0][0].shape))
    record = compute_teacher_groups(
        teacher, opt.layers, names, data.train, n_groups, opt.batches,
        opt.batch_size, opt.kernel, opt.estimator == 'debiased', opt.seed, device,
        extra_settings={'teacher': arch, 'path_t': os.path.abspath(opt.path_t), 'dataset': opt.dataset})
    write_json_atomic(record, os.path.join(opt.out, GROUPS_FILE))
    save_png(teacher_figure(record['matrix'], record['layer_names'], record['groups'], title=f'{arch}: teacher CKA',
                            caption=teacher_caption(record['settings'])),
             os.path.join(opt.out, GROUPS_PNG))
    stability = record['stability']
    print(f'{arch}: {len(names)} {opt.layers.rstrip("s")}-level layers, groups {record["groups"]}')
    print(f'boundaries {stability["boundaries"]} recur in {stability["agreement"]} of '
          f'{stability["num_batches"]} single batches (exact match {stability["exact_match"]:.2f})')
    print(f'wrote {os.path.join(opt.out, GROUPS_FILE)} and {GROUPS_PNG}')
    return record


def main(argv=None) -> int:
    try:
        run(argv)
    except ConfigError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
