"""The teacher's CKA groups of a run, paired with the student's.

Before training, `pair_teacher_groups` gives `--distill ckagroup` and the CKA monitor of every
method the groups of a run: the teacher's layers split into n contiguous groups by its
layer-by-layer CKA matrix (`compute_teacher_groups`, a teacher pass over training batches), or
read from --cka_group_file, or those a resumed run recorded, paired with the student's groups. In
a distributed run rank 0 finds the record and sends it to every rank. The record is the JSON of
cka_groups.json (`cka.groups_to_json`); reading and writing a run folder is the caller's
(`helper.run_folder`), and scripts/cka_groups.py writes one outside any run.
"""
from __future__ import annotations

import json
import time
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

import models
from cka import (CKAAccumulator, PairedGroups, auto_n_groups, boundary_stability, contiguous_groups, even_split,
                 groups_to_json, pair_groups, random_split, validate_groups)
from distiller_zoo.ckagroup.settings import GROUP_COMMAND, CKASettings
from runtime import collectives
from runtime.errors import ConfigError

RESUMED = "--resume: the run folder's cka_groups.json"


def _check_group_count(n: int, num_layers: int, who: str, kind: str) -> None:
    """Refuse more groups than the `who` model has `kind` layers."""
    if n > num_layers:
        more = ' (or --cka_layers blocks for more layers)' if kind == 'stages' else ''
        raise ConfigError(f'--cka_groups {n} exceeds the {num_layers} {kind.rstrip("s")}-level layers of the '
                          f'{who}; use at most {num_layers}{more}')


@torch.no_grad()
def _teacher_cka(teacher: nn.Module, settings: CKASettings, dataset, batch_size: int, seed: int, device) -> tuple:
    """Minibatch CKA of the teacher's `settings.layers` on `settings.batches` random batches of
    `dataset`.

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
    accumulator = CKAAccumulator(kernel=settings.kernel, debiased=settings.debiased, keep_per_batch=True)
    was_training = teacher.training
    teacher.eval()
    try:
        for index, (images, *_rest) in enumerate(loader):
            if index == settings.batches:
                break
            accumulator.update(models.layer_outputs(teacher, images.to(device), settings.layers))
    finally:
        teacher.train(was_training)
    return accumulator.matrix().cpu().numpy(), [m.numpy() for m in accumulator.per_batch]


def compute_teacher_groups(teacher: nn.Module, settings: CKASettings, layer_names: Sequence[str], dataset,
                           batch_size: int, seed: int, device, max_groups: Optional[int] = None,
                           extra_settings=None) -> dict:
    """The teacher's CKA matrix and its n contiguous groups, as the JSON record of cka_groups.json.

    `settings.n_groups` None picks n with `auto_n_groups` (at most `max_groups`). Stability: how
    often each boundary of the pooled grouping recurs in the groupings of single batches.
    """
    matrix, per_batch = _teacher_cka(teacher, settings, dataset, batch_size, seed, device)
    n_groups = settings.n_groups
    if n_groups is None:
        n_groups = auto_n_groups(matrix, max_groups=max_groups)
    _check_group_count(n_groups, len(layer_names), 'teacher', settings.layers)
    groups = contiguous_groups(matrix, n_groups)
    stability = boundary_stability(per_batch, n_groups, pooled=matrix)
    record_settings = {'layers': settings.layers, 'kernel': settings.kernel, 'estimator': settings.estimator,
                       'objective': 'kmeans', 'n_groups': n_groups, 'batches': len(per_batch),
                       'batch_size': batch_size, 'seed': seed, **(extra_settings or {})}
    return groups_to_json(layer_names, matrix, groups, settings=record_settings, stability=stability)


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


def _usable_record(record, layer_names: Sequence[str], kind: str, where: str) -> dict:
    """`record` (from `where`, named in the error) checked whole: keys, types, sizes, contiguous
    groups, and the teacher's layer names."""
    try:
        _check_group_record(record)
    except ValueError as exc:
        raise ConfigError(f'{where} is not a usable cka_groups.json file (ValueError: {exc}); write one with '
                          f'{GROUP_COMMAND}') from None
    names = record['layer_names']
    if names != list(layer_names):
        raise ConfigError(f'{where} names {len(names)} layers that do not match the '
                          f"teacher's {len(layer_names)} {kind.rstrip('s')}-level layers; recompute it for this "
                          'teacher and --cka_layers')
    return record


def _read_group_file(path: str, layer_names: Sequence[str], kind: str) -> dict:
    """--cka_group_file, checked whole (`_usable_record`)."""
    where = f'--cka_group_file {path!r}'
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(f'{where} is not a usable cka_groups.json file ({type(exc).__name__}: {exc}); '
                          f'write one with {GROUP_COMMAND}') from None
    return _usable_record(record, layer_names, kind, where)


def pair_teacher_groups(settings: CKASettings, student: nn.Module, teacher: nn.Module, input_shape,
                        train_set: Callable, device, *, batch_size: int, seed: int, teacher_name: str,
                        resumed_record: Optional[Callable[[], Optional[dict]]] = None) -> PairedGroups:
    """The teacher's groups of a run paired with the student's.

    The teacher record is the one a resumed run recorded (`resumed_record()`, None when there is
    none), else --cka_group_file's, else computed from a teacher pass over `train_set()` (the
    training set with evaluation transforms) on `batch_size` batches drawn by `seed`. Every check
    that needs no data runs before the teacher pass, so bad input fails at once. Distributed: rank
    0 reads or computes the record and sends it, so every rank pairs the same groups (its errors
    are raised on every rank).
    """
    kind = settings.layers
    student_names = models.layer_names(student, kind, input_shape)
    teacher_names = models.layer_names(teacher, kind, input_shape)
    n = settings.n_groups
    if n is not None:
        _check_group_count(n, len(student_names), 'student', kind)
        _check_group_count(n, len(teacher_names), 'teacher', kind)

    def teacher_record() -> tuple:
        """(record, where it came from)."""
        resumed = resumed_record() if resumed_record is not None else None
        if resumed is not None:
            return _usable_record(resumed, teacher_names, kind, RESUMED), 'resume'
        if settings.group_file:
            return _read_group_file(settings.group_file, teacher_names, kind), 'file'
        start = time.perf_counter()
        record = compute_teacher_groups(teacher, settings, teacher_names, train_set(), batch_size, seed, device,
                                        max_groups=len(student_names), extra_settings={'teacher': teacher_name})
        print(f'ckagroup: teacher groups computed from {record["settings"]["batches"]} batches of '
              f'{batch_size} in {time.perf_counter() - start:.1f} s')
        return record, 'computed'

    record, source = collectives.run_on_main(teacher_record)
    if source == 'resume' and collectives.is_main():
        print(f"resume: teacher groups {record['groups']} read from the run folder's cka_groups.json "
              '(not recomputed)')
    if source == 'file' and n is not None and n != len(record['groups']):
        print(f'note: --cka_group_file has {len(record["groups"])} groups; --cka_groups {n} ignored')
    n = len(record['groups'])
    _check_group_count(n, len(student_names), 'student', kind)
    _check_group_count(n, len(teacher_names), 'teacher', kind)
    teacher_groups = [list(g) for g in record['groups']]
    split = settings.teacher_split
    if split != record['settings'].get('teacher_split', 'cka'):  # a resumed run's record is already split
        if split == 'even':  # ablation: ignore the CKA structure
            teacher_groups = even_split(len(teacher_names), n)
            record = dict(record, groups=teacher_groups, settings=dict(record['settings'], teacher_split='even'))
        elif split == 'random':  # ablation: the null, a random contiguous partition per seed
            teacher_groups = random_split(len(teacher_names), n, seed)
            record = dict(record, groups=teacher_groups,
                          settings=dict(record['settings'], teacher_split='random', split_seed=seed))
    student_groups, paired_teacher = pair_groups(len(student_names), teacher_groups, settings.student_split,
                                                 settings.pairing)
    return PairedGroups(student=student_groups, teacher=paired_teacher, record=record)
