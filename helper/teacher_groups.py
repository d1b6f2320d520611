"""The teacher's CKA groups of a run, and `python -m helper.teacher_groups`.

Before training, `pair_teacher_groups` gives `--distill ckagroup` and the CKA monitor of every
method their paired groups: it computes the teacher's layer-by-layer CKA matrix on training data
and splits it into contiguous groups (`cka.contiguous_groups`), or loads the groups of
`--cka_group_file`, or, on resume, of the run folder's own `cka_groups.json`; in a distributed run
rank 0 does so and sends the record to every rank. `write_teacher_groups` puts `cka_groups.json`,
`cka_groups.png` and the TensorBoard image `cka/teacher` in the run folder.

The command line computes the same record without training:

    python -m helper.teacher_groups --path_t CKPT --dataset D [--data_folder F] \
        --n_groups N|auto --batches K --out DIR

writes DIR/cka_groups.json (layer names, the teacher matrix, the groups, every setting, and how
stable the boundaries are across batches) and DIR/cka_groups.png (the matrix with the groups
outlined); train_student.py accepts the JSON as --cka_group_file.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

import models
from cka import (CKAAccumulator, PairedGroups, auto_n_groups, boundary_stability, contiguous_groups, even_split,
                 groups_to_json, heatmap_image, pair_groups, save_heatmap_png, validate_groups)
from dataset import DATASET_NAMES
from helper.checkpoint import load_teacher
from runtime import collectives
from runtime.errors import ConfigError

GROUPS_FILE = 'cka_groups.json'
GROUPS_PNG = 'cka_groups.png'


def parse_n_groups(value, flag: str = '--cka_groups') -> Optional[int]:
    """A positive integer, or 'auto' (returned as None)."""
    if str(value).lower() == 'auto':
        return None
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"{flag} {value!r}: give a positive integer or 'auto'") from None
    if n < 1:
        raise ConfigError(f'{flag} {n}: give at least 1 group')
    return n


def check_n_groups(n: int, num_layers: int, who: str, kind: str) -> None:
    if n > num_layers:
        raise ConfigError(f'--cka_groups {n} exceeds the {num_layers} {kind.rstrip("s")}-level layers of the '
                          f'{who}; use at most {num_layers} (or --cka_layers blocks for more layers)')


@torch.no_grad()
def teacher_cka(teacher: nn.Module, kind: str, dataset, batches: int, batch_size: int,
                kernel: str, debiased: bool, seed: int, device) -> tuple:
    """Minibatch CKA of the teacher's `kind` layers on `batches` random batches of `dataset`.

    Returns (pooled matrix, per-batch matrices) as numpy arrays. The batches are drawn at random
    with a seeded generator: image folders are sorted by class, so their first batches would hold
    a single class.
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
    return accumulator.matrix().numpy(), [m.numpy() for m in accumulator.per_batch]


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


def load_group_file(path: str, layer_names: Sequence[str], kind: str, what: str = '--cka_group_file') -> dict:
    try:
        with open(path) as f:
            record = json.load(f)
        names, groups = record['layer_names'], record['groups']
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f'{what} {path!r} is not a cka_groups.json file '
                          f'({type(exc).__name__}: {exc}); write one with python -m helper.teacher_groups') from None
    if list(names) != list(layer_names):
        raise ConfigError(f'{what} {path!r} names {len(names)} layers that do not match the '
                          f"teacher's {len(layer_names)} {kind.rstrip('s')}-level layers; recompute it for this "
                          'teacher and --cka_layers')
    try:
        validate_groups(groups, len(layer_names))
    except ValueError as exc:
        raise ConfigError(f'{what} {path!r}: {exc}') from None
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

    def teacher_record() -> dict:
        if resume_file is not None and os.path.exists(resume_file):
            return load_group_file(resume_file, teacher_names, kind, what="the run folder's")
        if opt.cka_group_file:
            return load_group_file(opt.cka_group_file, teacher_names, kind)
        return compute_teacher_groups(
            teacher, kind, teacher_names, train_set(), n, opt.cka_batches, opt.batch_size, opt.cka_kernel,
            opt.cka_estimator == 'debiased', opt.seed, device, max_groups=len(student_names),
            extra_settings={'teacher': teacher_name})

    record = collectives.run_on_main(teacher_record)
    if n is not None and n != len(record['groups']):
        print(f'note: the teacher grouping read has {len(record["groups"])} groups; --cka_groups {n} ignored')
    n = len(record['groups'])
    check_n_groups(n, len(student_names), 'student', kind)
    teacher_groups = [list(g) for g in record['groups']]
    if opt.cka_teacher_split == 'even' and record.get('settings', {}).get('teacher_split') != 'even':
        teacher_groups = even_split(len(teacher_names), n)  # ablation: ignore the CKA structure
        record = dict(record, groups=teacher_groups, settings=dict(record.get('settings', {}), teacher_split='even'))
    student_groups, paired_teacher = pair_groups(len(student_names), teacher_groups, opt.cka_student_split,
                                                 opt.cka_pairing)
    return PairedGroups(student=student_groups, teacher=paired_teacher, record=record)


def write_teacher_groups(run, record: dict, step: int) -> None:
    """cka_groups.json, cka_groups.png and the TensorBoard image `cka/teacher` in the run folder."""
    matrix = np.asarray(record['matrix'])
    run.write_json(GROUPS_FILE, record)
    run.log_image('cka/teacher', heatmap_image(matrix, record['groups']), step)
    if run.enabled:
        save_heatmap_png(run.file(GROUPS_PNG), matrix, record['groups'], title='teacher CKA')


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
    device = select_device(opt.device)
    opt.num_workers = 0
    data = load_data(opt, augment=False)
    teacher, arch = load_teacher(opt.path_t, data.num_classes, opt.dataset, device)
    names = models.layer_names(teacher, opt.layers, tuple(data.train[0][0].shape))
    record = compute_teacher_groups(
        teacher, opt.layers, names, data.train, parse_n_groups(opt.n_groups, '--n_groups'), opt.batches,
        opt.batch_size, opt.kernel, opt.estimator == 'debiased', opt.seed, device,
        extra_settings={'teacher': arch, 'path_t': os.path.abspath(opt.path_t), 'dataset': opt.dataset})
    os.makedirs(opt.out, exist_ok=True)
    with open(os.path.join(opt.out, GROUPS_FILE), 'w') as f:
        json.dump(record, f, indent=1)
    save_heatmap_png(os.path.join(opt.out, GROUPS_PNG), np.asarray(record['matrix']),
                     record['groups'], record['groups'], title=f'{arch} {opt.estimator} CKA',
                     colorbar=True)
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
