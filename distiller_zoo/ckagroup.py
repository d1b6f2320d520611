"""CKA-group distillation: make the student's processing flow resemble the teacher's.

1. The teacher's layer-by-layer CKA matrix is computed on training data (minibatch CKA over
   `--cka_batches` batches) and its layers are split into n contiguous groups by that matrix
   (`helper.cka_groups.contiguous_groups`, exact DP).
2. The student's layers are split into n contiguous groups too (`--cka_student_split`: even, or
   in proportion to the teacher's group sizes); group i of the student is paired with group i of
   the teacher.
3. Each batch: the L_s x L_t CKA matrix between student and teacher layer outputs; each diagonal
   group block is reduced to CKA_Gi (`--cka_reduce`), and the loss is the aggregate
   (`--cka_agg`) of 1 - CKA_Gi. The teacher's features carry no gradient.

The Grams of every layer are needed whatever the grouping (groups cover all layers); the products
between them are one matrix multiplication for all pairs, cheaper in kernel launches than one per
block, and the full matrix is what the epoch heatmap shows.
"""
from __future__ import annotations

import json
import os
import time
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from distiller_zoo.base import Batch, DistillContext, Distiller, ModelOutputs
from helper import distributed
from helper.cka import CKAAccumulator, cka_from_grams, normalized_grams
from helper.cka_groups import (auto_n_groups, boundary_stability, contiguous_groups, even_split,
                               groups_to_json, proportional_split, random_split, validate_groups)
from helper.errors import ConfigError
from helper.heatmap import save_png, student_teacher_figure, teacher_caption, teacher_figure
from models import feature_shapes
from models.taps import FeatureTap

GROUPS_FILE = 'cka_groups.json'
MATRICES_FILE = 'cka_matrices.json'


class LayerOutputs:
    """The layer outputs CKA compares: block-level taps (forward hooks) or the is_feat stages.

    `collect(model, images)` runs one forward pass and returns the outputs, hooks attached only
    for that pass. For training, `attach()` keeps the hooks on so that the loop's own forward pass
    records the outputs, and `take(out)` hands them over.
    """

    def __init__(self, model: nn.Module, kind: str, input_shape: Sequence[int]):
        self.kind, self.model, self.tap = kind, model, None
        if kind == 'blocks':
            self.names = list(model.block_layer_names())
        elif kind == 'stages':
            num_stages = len(feature_shapes(model, input_shape)) - 1  # the pooled vector excluded
            self.names = [f'is_feat[{i}]' for i in range(num_stages)]
        else:
            raise ConfigError(f"--cka_layers {kind}: use 'blocks' or 'stages'")

    def __len__(self) -> int:
        return len(self.names)

    def attach(self) -> 'LayerOutputs':
        if self.kind == 'blocks' and self.tap is None:
            self.tap = FeatureTap(self.model, self.names)
        return self

    def take(self, out: ModelOutputs) -> List[torch.Tensor]:
        """The layer outputs of the forward pass that produced `out`; drops the tap's references."""
        if self.kind == 'stages':
            return list(out.feats[:-1])
        feats = self.tap.outputs
        self.tap.clear()
        return feats

    @torch.no_grad()
    def collect(self, model: nn.Module, images: torch.Tensor) -> List[torch.Tensor]:
        if self.kind == 'stages':
            feats, _ = model(images, is_feat=True)
            return list(feats[:-1])
        with FeatureTap(model, self.names) as tap:
            model(images)
            return tap.outputs


def parse_n_groups(value, flag: str = '--cka_groups') -> Optional[int]:
    """`--cka_groups`: a positive integer, or 'auto' (returned as None)."""
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
        more = ' (or --cka_layers blocks for more layers)' if kind == 'stages' else ''
        raise ConfigError(f'--cka_groups {n} exceeds the {num_layers} {kind.rstrip("s")}-level layers of the '
                          f'{who}; use at most {num_layers}{more}')


def min_cka_samples(estimator: str) -> int:
    """Samples one batch needs for a CKA value: the unbiased HSIC divides by n - 3, the biased by n - 1."""
    return 4 if estimator == 'debiased' else 2


def check_cka_options(opt) -> None:
    """Every --cka_* value that needs neither models nor data, checked when the options are parsed."""
    n = parse_n_groups(opt.cka_groups)
    for flag in ('cka_batches', 'cka_monitor_batches'):
        if getattr(opt, flag) < 1:
            raise ConfigError(f'--{flag} {getattr(opt, flag)}: give at least 1 batch')
    if opt.cka_group_file is not None and not os.path.isfile(opt.cka_group_file):
        raise ConfigError(f'--cka_group_file {opt.cka_group_file!r} does not exist; write one with '
                          'python -m helper.cka_groups, or drop the flag to group the teacher before training')
    if opt.cka_group_file is None and n is not None:
        parse_weights(opt.cka_weights, opt.cka_agg, n)
    else:  # the group count is known only with the groups: check the values now, the count then
        count = len(opt.cka_weights.split(',')) if opt.cka_weights else 0
        if opt.cka_agg == 'weighted' and not count:
            raise ConfigError('--cka_agg weighted needs --cka_weights w1,...,wn, one weight per group')
        parse_weights(opt.cka_weights, opt.cka_agg, count)
    needed = min_cka_samples(opt.cka_estimator)
    if opt.distill == 'ckagroup' and opt.batch_size < needed:
        raise ConfigError(f'--batch_size {opt.batch_size}: the {opt.cka_estimator} CKA estimator needs at least '
                          f'{needed} images per batch; raise --batch_size')


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
def teacher_cka(teacher: nn.Module, layers: LayerOutputs, dataset, batches: int, batch_size: int,
                kernel: str, debiased: bool, seed: int, device) -> tuple:
    """Minibatch CKA of the teacher's layers on `batches` random batches of `dataset`.

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
            accumulator.update(layers.collect(teacher, images.to(device)))
    finally:
        teacher.train(was_training)
    return accumulator.matrix().numpy(), [m.numpy() for m in accumulator.per_batch]


def compute_teacher_groups(teacher: nn.Module, layers: LayerOutputs, dataset, n_groups: Optional[int],
                           batches: int, batch_size: int, kernel: str, debiased: bool, seed: int,
                           device, max_groups: Optional[int] = None, extra_settings=None) -> dict:
    """The teacher's CKA matrix and its n contiguous groups, as the JSON record of cka_groups.json.

    `n_groups=None` picks n with `auto_n_groups` (at most `max_groups`). Stability: how often each
    boundary of the pooled grouping recurs in the groupings of single batches.
    """
    matrix, per_batch = teacher_cka(teacher, layers, dataset, batches, batch_size, kernel, debiased,
                                    seed, device)
    if n_groups is None:
        n_groups = auto_n_groups(matrix, max_groups=max_groups)
    check_n_groups(n_groups, len(layers), 'teacher', layers.kind)
    groups = contiguous_groups(matrix, n_groups)
    stability = boundary_stability(per_batch, n_groups, pooled=matrix)
    settings = {'layers': layers.kind, 'kernel': kernel,
                'estimator': 'debiased' if debiased else 'biased', 'objective': 'kmeans',
                'n_groups': n_groups, 'batches': len(per_batch), 'batch_size': batch_size,
                'seed': seed, **(extra_settings or {})}
    return groups_to_json(layers.names, matrix, groups, settings=settings, stability=stability)


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
                          f'({type(exc).__name__}: {exc}); write one with python -m helper.cka_groups') from None
    names = record['layer_names']
    if names != list(layer_names):
        raise ConfigError(f'{flag} {path!r} names {len(names)} layers that do not match the '
                          f"teacher's {len(layer_names)} {kind.rstrip('s')}-level layers; recompute it for this "
                          'teacher and --cka_layers')
    return record


def _resumed_record(ctx: DistillContext, layer_names: Sequence[str], kind: str) -> Optional[dict]:
    """--resume: the teacher record the run folder already holds (None when it has none), so that
    the groups stay those of the run's first epochs whatever the batches or device now."""
    if getattr(ctx.opt, 'resume', None) is None or not ctx.run_dir:
        return None
    path = os.path.join(ctx.run_dir, GROUPS_FILE)

    def read():
        if not os.path.isfile(path):
            return None
        return load_group_file(path, layer_names, kind, flag='--resume: the run folder\'s')
    record = distributed.run_on_main(read)  # rank 0 holds the run folder
    if record is not None and distributed.is_main():
        print(f'resume: teacher groups {record["groups"]} read from {path} (not recomputed)')
    return record


def parse_weights(text: Optional[str], agg: str, n: int) -> Optional[List[float]]:
    if agg != 'weighted':
        if text:
            raise ConfigError('--cka_weights is only used with --cka_agg weighted')
        return None
    if not text:
        raise ConfigError(f'--cka_agg weighted needs --cka_weights with {n} comma-separated values')
    try:
        weights = [float(w) for w in text.split(',')]
    except ValueError:
        raise ConfigError(f'--cka_weights {text!r}: give {n} comma-separated numbers') from None
    if not all(np.isfinite(w) and w >= 0 for w in weights):
        raise ConfigError(f'--cka_weights {text!r}: give finite, non-negative weights')
    if len(weights) != n:
        raise ConfigError(f'--cka_weights has {len(weights)} values but there are {n} groups; '
                          f'give exactly {n}')
    return weights


class CKAGroupLoss(nn.Module):
    """Aggregate of 1 - CKA_Gi over paired student/teacher layer groups.

    `forward(student_feats, teacher_feats)` returns `(loss, group_cka, matrix)`: the scalar loss,
    the n values CKA_Gi, and the full L_s x L_t CKA matrix (detached). CKA_Gi reduces the block of
    the matrix with student group i as rows and teacher group i as columns (`reduce`: mean, min or
    max); the loss aggregates 1 - CKA_Gi (`agg`: mean, sum, or weighted: sum_i w_i (1 - CKA_Gi)).
    Teacher features are used under no_grad. A batch smaller than the estimator needs (4 samples
    debiased, 2 biased; a short last batch) contributes no loss and is left out of the statistics.
    """

    def __init__(self, student_groups, teacher_groups, reduce: str = 'mean', agg: str = 'mean',
                 weights: Optional[Sequence[float]] = None, kernel: str = 'linear',
                 debiased: bool = True):
        super().__init__()
        if len(student_groups) != len(teacher_groups):
            raise ValueError(f'{len(student_groups)} student groups for {len(teacher_groups)} teacher groups')
        if reduce not in ('mean', 'min', 'max') or agg not in ('mean', 'sum', 'weighted'):
            raise ValueError(f'unknown reduce {reduce!r} or agg {agg!r}')
        if (agg == 'weighted') != (weights is not None) or (weights is not None and len(weights) != len(teacher_groups)):
            raise ValueError('weights are needed with agg=weighted, one per group, and only then')
        num_s = sum(len(g) for g in student_groups)
        num_t = sum(len(g) for g in teacher_groups)
        mask = torch.zeros(len(teacher_groups), num_s, num_t, dtype=torch.bool)
        for i, (gs, gt) in enumerate(zip(student_groups, teacher_groups)):
            mask[i, gs[0]:gs[-1] + 1, gt[0]:gt[-1] + 1] = True
        self.register_buffer('mask', mask, persistent=False)
        self.register_buffer('weights', torch.tensor(weights if weights else [1.0] * len(teacher_groups)),
                             persistent=False)
        self.student_groups, self.teacher_groups = student_groups, teacher_groups
        self.reduce, self.agg, self.kernel, self.debiased = reduce, agg, kernel, debiased

    def group_values(self, matrix: torch.Tensor) -> torch.Tensor:
        blocks = matrix.unsqueeze(0)
        if self.reduce == 'mean':
            return (blocks * self.mask).sum(dim=(1, 2)) / self.mask.sum(dim=(1, 2))
        if self.reduce == 'min':
            return blocks.masked_fill(~self.mask, float('inf')).amin(dim=(1, 2))
        return blocks.masked_fill(~self.mask, float('-inf')).amax(dim=(1, 2))

    def forward(self, student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]):
        if student_feats[0].shape[0] < min_cka_samples('debiased' if self.debiased else 'biased'):
            return None
        with torch.no_grad():
            teacher_grams = normalized_grams(teacher_feats, self.kernel, self.debiased)
        student_grams = normalized_grams(student_feats, self.kernel, self.debiased)
        matrix = cka_from_grams(student_grams, teacher_grams)
        group_cka = self.group_values(matrix)
        distance = 1.0 - group_cka
        if self.agg == 'mean':
            loss = distance.mean()
        elif self.agg == 'sum':
            loss = distance.sum()
        else:
            loss = (self.weights * distance).sum()
        return loss, group_cka.detach(), matrix.detach()


def resolve_groups(ctx: DistillContext, student_layers: LayerOutputs, teacher_layers: LayerOutputs) -> dict:
    """The teacher record and the paired groups of a run, from the --cka_* options.

    Computed once per run and kept in `ctx.extras['cka_groups']`, so that --distill ckagroup and
    the CKA monitor of every method pair the same groups. Returns {'record', 'student_groups',
    'teacher_groups'}: pair k is (student_groups[k], teacher_groups[k]). Every check that needs
    no data runs before the teacher pass, so bad input fails at once.
    """
    if 'cka_groups' in ctx.extras:
        return ctx.extras['cka_groups']
    opt = ctx.opt
    n = parse_n_groups(opt.cka_groups)
    debiased = opt.cka_estimator == 'debiased'
    record = _resumed_record(ctx, teacher_layers.names, opt.cka_layers)
    if record is None and opt.cka_group_file:
        record = load_group_file(opt.cka_group_file, teacher_layers.names, opt.cka_layers)
    if record is not None:
        if n is not None and n != len(record['groups']) and opt.cka_group_file:
            print(f'note: --cka_group_file has {len(record["groups"])} groups; --cka_groups {n} ignored')
        n = len(record['groups'])
    if n is not None:
        check_n_groups(n, len(student_layers), 'student', opt.cka_layers)
        check_n_groups(n, len(teacher_layers), 'teacher', opt.cka_layers)
        parse_weights(opt.cka_weights, opt.cka_agg, n)
    if record is None:
        if ctx.eval_train_set is None:
            raise ConfigError('grouping the teacher needs training data, or --cka_group_file')
        # Distributed: rank 0 groups the teacher and sends the record, so that every rank
        # pairs the same groups (its errors are raised on every rank).
        start = time.perf_counter()
        record = distributed.run_on_main(lambda: compute_teacher_groups(
            ctx.teacher, teacher_layers, ctx.eval_train_set(), n, opt.cka_batches,
            opt.batch_size, opt.cka_kernel, debiased, opt.seed, ctx.device,
            max_groups=len(student_layers), extra_settings={'teacher': ctx.teacher_name}))
        if distributed.is_main():
            print(f'ckagroup: teacher groups computed from {record["settings"]["batches"]} batches of '
                  f'{opt.batch_size} in {time.perf_counter() - start:.1f} s')
        if n is None:  # --cka_groups auto: n is known only now
            n = len(record['groups'])
            parse_weights(opt.cka_weights, opt.cka_agg, n)
    teacher_groups = [list(g) for g in record['groups']]
    split = getattr(opt, 'cka_teacher_split', 'cka')
    if split == 'even':  # ablation: ignore the CKA structure
        teacher_groups = even_split(len(teacher_layers), n)
        record = dict(record, groups=teacher_groups,
                      settings=dict(record['settings'], teacher_split='even'))
    elif split == 'random':  # ablation: the null, a random contiguous partition per seed
        teacher_groups = random_split(len(teacher_layers), n, opt.seed)
        record = dict(record, groups=teacher_groups,
                      settings=dict(record['settings'], teacher_split='random', split_seed=opt.seed))
    if opt.cka_student_split == 'proportional':
        student_groups = proportional_split(len(student_layers), teacher_groups)
    else:
        student_groups = even_split(len(student_layers), n)
    if getattr(opt, 'cka_pairing', 'forward') == 'reversed':  # ablation: first with last
        teacher_groups = teacher_groups[::-1]
    resolved = {'record': record, 'student_groups': student_groups, 'teacher_groups': teacher_groups}
    ctx.extras['cka_groups'] = resolved
    return resolved


class CKAGroupDistiller(Distiller):
    """`--distill ckagroup`: CKAGroupLoss on block taps (or stages), teacher groups precomputed."""

    def __init__(self, ctx: DistillContext):
        super().__init__(ctx)
        opt = ctx.opt
        self.needs_feats = opt.cka_layers == 'stages'
        self.student_layers = LayerOutputs(ctx.student, opt.cka_layers, ctx.input_shape).attach()
        self.teacher_layers = LayerOutputs(ctx.teacher, opt.cka_layers, ctx.input_shape).attach()
        groups = resolve_groups(ctx, self.student_layers, self.teacher_layers)
        self.teacher_record = groups['record']
        self.student_groups, self.teacher_groups = groups['student_groups'], groups['teacher_groups']
        n = len(self.teacher_groups)
        self.loss = CKAGroupLoss(self.student_groups, self.teacher_groups, opt.cka_reduce, opt.cka_agg,
                                 parse_weights(opt.cka_weights, opt.cka_agg, n), opt.cka_kernel,
                                 opt.cka_estimator == 'debiased')
        print(f'ckagroup: teacher groups {self.teacher_groups} ({len(self.teacher_layers)} '
              f'{opt.cka_layers}), student groups {self.student_groups}')
        self.gather = bool(getattr(opt, 'cka_gather', False))  # --cka_gather: CKA on the global batch
        self._device = ctx.device
        self._teacher_logged = False
        self._reset_epoch()

    def _reset_epoch(self) -> None:
        self._matrix_sum, self._group_sum, self._batches = None, None, 0

    def forward(self, student_out: ModelOutputs, teacher_out: ModelOutputs, batch: Batch) -> dict:
        student_feats = self.student_layers.take(student_out)
        teacher_feats = self.teacher_layers.take(teacher_out)
        if self.gather:  # every rank computes the same loss on the global batch
            student_feats, teacher_feats = gather_layer_outputs(student_feats, teacher_feats)
        result = self.loss(student_feats, teacher_feats)
        if result is None:  # too few samples for the estimator (a last short batch)
            return {}
        loss, group_cka, matrix = result
        if self._matrix_sum is None:
            self._matrix_sum, self._group_sum = matrix.clone(), group_cka.clone()
        else:
            self._matrix_sum += matrix
            self._group_sum += group_cka
        self._batches += 1
        return {'ckagroup': loss}

    def _epoch_totals(self) -> tuple:
        """(matrix sum, group sum, batches) of the epoch, added over the ranks when distributed:
        the logged matrix is then the mean over every rank's batches."""
        if distributed.world_size() == 1:
            return self._matrix_sum, self._group_sum, self._batches
        rows, cols, n = len(self.student_layers), len(self.teacher_layers), len(self.teacher_groups)
        device = self._matrix_sum.device if self._matrix_sum is not None else self._device
        packed = torch.zeros(rows * cols + n + 1, dtype=torch.float64, device=device)
        if self._batches:
            packed[:-1] = torch.cat([self._matrix_sum.reshape(-1), self._group_sum]).double()
            packed[-1] = self._batches
        distributed.all_reduce_sum(packed)
        batches = int(round(packed[-1].item()))
        return packed[:rows * cols].view(rows, cols), packed[rows * cols:-1], batches

    def end_epoch(self, epoch: int, run) -> dict:
        """Per-group CKA_Gi (epoch mean of the per-batch values) and the epoch-mean matrix.

        Distributed: the mean over the batches of every rank (every rank must call this)."""
        if not self._teacher_logged:
            teacher_matrix = np.asarray(self.teacher_record['matrix'])
            groups_in_order = self.teacher_record['groups']
            run.write_json(GROUPS_FILE, self.teacher_record)
            if getattr(run, 'enabled', True):
                figure = teacher_figure(teacher_matrix, self.teacher_record['layer_names'], groups_in_order,
                                        caption=teacher_caption(self.teacher_record['settings']))
                save_png(figure, run.file('cka_groups.png'))
                run.log_figure('cka/teacher', figure, epoch)
            self._teacher_logged = True
        matrix_sum, group_sum, batches = self._epoch_totals()
        self._reset_epoch()
        if not batches:
            return {}
        matrix = (matrix_sum / batches).cpu().double().numpy()
        groups = (group_sum / batches).cpu().double().tolist()
        return log_group_cka(run, 'cka', MATRICES_FILE, epoch, matrix, groups, self.student_layers.names,
                             self.teacher_layers.names, self.student_groups, self.teacher_groups)


def log_group_cka(run, prefix: str, filename: str, epoch: int, matrix: np.ndarray, group_values: list,
                  student_names, teacher_names, student_groups, teacher_groups) -> dict:
    """Log one epoch's student x teacher matrix: the figure `<prefix>/student_x_teacher` (paired
    group blocks outlined, each block's value written in it), the epoch appended to the run folder's `filename` (an earlier record of
    the same or a later epoch, left by an interrupted run, is replaced), and the scalars
    `<prefix>/group_<i>` and `<prefix>/group_mean`, returned for the epoch's metrics record."""
    if getattr(run, 'enabled', True):
        run.log_figure(f'{prefix}/student_x_teacher', student_teacher_figure(
            matrix, student_names, teacher_names, student_groups, teacher_groups, group_values,
            title=f'{prefix}: student x teacher CKA, epoch {epoch}'), epoch)
        history = [h for h in _read_json(run.file(filename)) if h['epoch'] < epoch]
        history.append({'epoch': epoch, 'student_layers': list(student_names),
                        'teacher_layers': list(teacher_names), 'student_groups': student_groups,
                        'teacher_groups': teacher_groups, 'matrix': np.asarray(matrix).tolist(),
                        'group_cka': list(group_values)})
        run.write_json(filename, history)
    record = {f'{prefix}/group_{i}': value for i, value in enumerate(group_values)}
    record[f'{prefix}/group_mean'] = float(np.mean(group_values))
    return record


def gather_layer_outputs(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]):
    """--cka_gather: every layer output concatenated over the ranks (rank order), the student's
    with gradient (the backward sends each rank the gradient of its own rows, summed over ranks;
    DDP's averaging then yields the gradient of the global-batch CKA term). Communication per
    step: the sum of all tapped layer sizes x the global batch, forward, and the student's part
    again backward. The identity in a single process."""
    return (distributed.gather_rows(student_feats, with_grad=True),
            distributed.gather_rows(teacher_feats, with_grad=False))


def _read_json(path: str) -> list:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)
