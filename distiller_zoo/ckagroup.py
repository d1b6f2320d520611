"""CKA-group distillation: make the student's processing flow resemble the teacher's.

1. Before training, `helper.teacher_groups` splits the teacher's layers into n contiguous groups
   by its layer-by-layer CKA matrix (or loads them from --cka_group_file, or from the run folder
   on resume), splits the student's layers into n contiguous groups too (`--cka_student_split`:
   even, or in proportion to the teacher's group sizes), and pairs group i of the student with
   group i of the teacher; the pairing reaches the distiller as `ctx.groups`.
2. Each batch: the L_s x L_t CKA matrix between student and teacher layer outputs; each paired
   group block is reduced to CKA_Gi (`--cka_reduce`), and the loss is the aggregate (`--cka_agg`)
   of 1 - CKA_Gi. The teacher's features carry no gradient.

The Grams of every layer are needed whatever the grouping (groups cover all layers); the products
between them are one matrix multiplication for all pairs, cheaper in kernel launches than one per
block, and the full matrix is what the epoch heatmap shows.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch import nn

import models
from cka import (REDUCTIONS, block_masks, cka_from_grams, group_values, grouped_normalized_grams, inverse_order,
                 min_cka_samples, validate_groups, width_groups)
from distiller_zoo._common import compile_term, compiled_or_eager
from distiller_zoo.base import Batch, DistillContext, Distiller, ModelOutputs
from runtime import collectives
from runtime.errors import ConfigError

MATRICES_FILE = 'cka_matrices.json'


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


def parse_weights(text: Optional[str], agg: str, n: Optional[int]) -> Optional[List[float]]:
    """`--cka_weights` for `--cka_agg`: n finite, non-negative floats with `weighted` (any count
    while n is unknown, None), else None."""
    if agg != 'weighted':
        if text:
            raise ConfigError('--cka_weights is only used with --cka_agg weighted')
        return None
    if not text:
        raise ConfigError('--cka_agg weighted needs --cka_weights w1,...,wn, one weight per group')
    try:
        weights = [float(w) for w in text.split(',')]
    except ValueError:
        raise ConfigError(f'--cka_weights {text!r}: give {n or "n"} comma-separated numbers') from None
    if not all(np.isfinite(w) and w >= 0 for w in weights):
        raise ConfigError(f'--cka_weights {text!r}: give finite, non-negative weights')
    if n is not None and len(weights) != n:
        raise ConfigError(f'--cka_weights has {len(weights)} values but there are {n} groups; '
                          f'give exactly {n}')
    return weights


class CKAGroupLoss(nn.Module):
    """Aggregate of 1 - CKA_Gi over paired student/teacher layer groups.

    `forward(student_feats, teacher_feats)` returns `(loss, group_cka, matrix)`: the scalar loss,
    the n values CKA_Gi, and the full L_s x L_t CKA matrix (detached, layer order). CKA_Gi reduces
    the block of the matrix with student group i as rows and teacher group i as columns (`reduce`:
    mean, min or max); the loss aggregates 1 - CKA_Gi (`agg`: mean, sum, or weighted: sum_i w_i
    (1 - CKA_Gi)). Teacher features are used under no_grad. A batch smaller than the estimator
    needs (4 samples debiased, 2 biased; a short last batch) contributes no loss (None).

    The training step splits the work in two (`student_widths` / `teacher_widths` given, the
    layers' flattened widths): `teacher_grams` right after the teacher's forward, so that its
    layer outputs can be freed before the student's forward, then `term` on the student's layers.
    Both keep the Grams in width-group order (`cka.width_groups`: one batched product per width,
    no per-layer select or stack); the masks are permuted to that order once, here, and `term`'s
    matrix is in that order too (`layer_order` puts it back). `term` reads nothing back to the
    host, so it compiles as one graph.
    """

    def __init__(self, student_groups, teacher_groups, reduce: str = 'mean', agg: str = 'mean',
                 weights: Optional[Sequence[float]] = None, kernel: str = 'linear',
                 debiased: bool = True, student_widths: Optional[Sequence[int]] = None,
                 teacher_widths: Optional[Sequence[int]] = None):
        super().__init__()
        if reduce not in REDUCTIONS or agg not in ('mean', 'sum', 'weighted'):
            raise ValueError(f'unknown reduce {reduce!r} or agg {agg!r}')
        if (agg == 'weighted') != (weights is not None) or (weights is not None and len(weights) != len(teacher_groups)):
            raise ValueError('weights are needed with agg=weighted, one per group, and only then')
        self.register_buffer('mask', block_masks(student_groups, teacher_groups), persistent=False)
        self.register_buffer('weights', torch.tensor(weights if weights else [1.0] * len(teacher_groups)),
                             persistent=False)
        self.student_groups, self.teacher_groups = student_groups, teacher_groups
        self.reduce, self.agg, self.kernel, self.debiased = reduce, agg, kernel, debiased
        self.min_samples = min_cka_samples('debiased' if debiased else 'biased')
        self.student_plan = self.teacher_plan = None
        if student_widths is not None and teacher_widths is not None:
            self._set_plans(student_widths, teacher_widths)

    def _set_plans(self, student_widths: Sequence[int], teacher_widths: Sequence[int]) -> None:
        """Width groups of both sides, and the masks in the order of their Grams."""
        self.student_plan, self.teacher_plan = width_groups(student_widths), width_groups(teacher_widths)
        self.student_order = [i for g in self.student_plan for i in g]
        self.teacher_order = [i for g in self.teacher_plan for i in g]
        plan_mask = self.mask[:, self.student_order][:, :, self.teacher_order]
        self.register_buffer('plan_mask', plan_mask, persistent=False)
        self.register_buffer('plan_count', plan_mask.sum(dim=(1, 2)).to(torch.float32), persistent=False)

    def teacher_grams(self, teacher_feats: Sequence[torch.Tensor], release: bool = False) -> torch.Tensor:
        """The teacher's normalised Grams (rows in `teacher_order`), under no_grad. `release`
        (`teacher_feats` a list): the list is emptied, each layer dropped once its Gram is taken."""
        with torch.no_grad():
            rows, _ = grouped_normalized_grams(teacher_feats, self.kernel, self.debiased, groups=self.teacher_plan,
                                               release=release)
        return rows

    def term(self, student_feats: Sequence[torch.Tensor], teacher_rows: torch.Tensor):
        """(loss, CKA_Gi detached, matrix detached in plan order) from the student's layers and
        `teacher_grams`' rows of the same batch."""
        student_rows, _ = grouped_normalized_grams(student_feats, self.kernel, self.debiased, groups=self.student_plan)
        matrix = cka_from_grams(student_rows, teacher_rows)
        group_cka = group_values(matrix, self.plan_mask, self.reduce, sizes=self.plan_count)
        distance = 1.0 - group_cka
        if self.agg == 'mean':
            loss = distance.mean()
        elif self.agg == 'sum':
            loss = distance.sum()
        else:
            loss = (self.weights * distance).sum()
        return loss, group_cka.detach(), matrix.detach()

    def layer_order(self, matrix: torch.Tensor) -> torch.Tensor:
        """A plan-order matrix (`term`'s) in layer order."""
        rows = torch.tensor(inverse_order(self.student_order), device=matrix.device)
        cols = torch.tensor(inverse_order(self.teacher_order), device=matrix.device)
        return matrix[rows][:, cols]

    def forward(self, student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]):
        if student_feats[0].shape[0] < self.min_samples:
            return None
        if self.student_plan is None:
            self._set_plans(_widths(student_feats), _widths(teacher_feats))
        loss, group_cka, matrix = self.term(student_feats, self.teacher_grams(teacher_feats))
        return loss, group_cka, self.layer_order(matrix)


def _widths(feats: Sequence[torch.Tensor]) -> List[int]:
    return [int(np.prod(f.shape[1:])) for f in feats]


class CKAGroupDistiller(Distiller):
    """`--distill ckagroup`: CKAGroupLoss on block taps (or stages), given the paired groups."""

    published_beta = 5.0
    needs_teacher_groups = True

    @classmethod
    def add_options(cls, parser) -> None:
        add = parser.add_argument
        add('--cka_groups', type=str, default='4', help="number of layer groups n, or 'auto'")
        add('--cka_group_file', type=str, default=None,
            help='cka_groups.json from python -m helper.teacher_groups (instead of grouping the teacher here)')
        add('--cka_batches', type=int, default=10, help='training batches used to compute the teacher groups')
        add('--cka_layers', type=str, default='blocks', choices=list(models.LAYER_KINDS))
        add('--cka_estimator', type=str, default='debiased', choices=['biased', 'debiased'])
        add('--cka_kernel', type=str, default='linear', choices=['linear', 'rbf'])
        add('--cka_student_split', type=str, default='even', choices=['even', 'proportional'])
        add('--cka_teacher_split', type=str, default='cka', choices=['cka', 'even', 'random'],
            help="teacher groups from its CKA matrix, or (ablations) 'even': uniform groups, "
                 "'random': a random contiguous partition drawn from --seed")
        add('--cka_pairing', type=str, default='forward', choices=['forward', 'reversed'],
            help="student group i with teacher group i, or 'reversed' (ablation: with group n-1-i)")
        add('--cka_reduce', type=str, default='mean', choices=['mean', 'min', 'max'])
        add('--cka_agg', type=str, default='mean', choices=['mean', 'sum', 'weighted'])
        add('--cka_weights', type=str, default=None, help='comma list of n group weights for --cka_agg weighted')
        add('--cka_compile', type=str, default='auto', choices=['auto', 'on', 'off'],
            help="compile the CKA term as one graph (torch.compile; falls back to eager with a note "
                 "if that fails): 'auto' on CUDA and under --compile")
        add('--cka_gather', action='store_true',
            help='distributed runs: compute the CKA term on the global batch (every tapped layer output '
                 "is all-gathered, with gradient) instead of on each process's own batch")

    @classmethod
    def check_options(cls, opt) -> None:
        """Every --cka_* value that needs neither models nor data (whatever --distill: the CKA
        monitor of every method groups with them too)."""
        n = parse_n_groups(opt.cka_groups)
        if opt.cka_batches < 1:
            raise ConfigError(f'--cka_batches {opt.cka_batches}: give at least 1 batch')
        if opt.cka_group_file is not None and not os.path.isfile(opt.cka_group_file):
            raise ConfigError(f'--cka_group_file {opt.cka_group_file!r} does not exist; write one with '
                              'python -m helper.teacher_groups, or drop the flag to group the teacher before training')
        # the group count is known now only without a group file; otherwise the count is checked with the groups
        parse_weights(opt.cka_weights, opt.cka_agg, n if opt.cka_group_file is None else None)
        needed = min_cka_samples(opt.cka_estimator)
        if opt.distill == 'ckagroup' and opt.batch_size < needed:
            raise ConfigError(f'--batch_size {opt.batch_size}: the {opt.cka_estimator} CKA estimator needs at '
                              f'least {needed} images per batch; raise --batch_size')

    def __init__(self, ctx: DistillContext):
        super().__init__(ctx)
        opt = ctx.opt
        # Built without groups (helper.train does so at -b 0, where the term would add nothing), it
        # taps no layer and computes no CKA.
        self.computes_term = ctx.groups is not None
        if not self.computes_term:
            if opt.beta != 0:
                raise ValueError('ckagroup needs the paired teacher groups in ctx.groups '
                                 '(helper.teacher_groups.pair_teacher_groups)')
            return
        self.layer_kind = opt.cka_layers
        if self.layer_kind == 'stages':
            self.needs_feats = True
        else:
            self.taps = 'blocks'
        self.student_names = models.layer_names(ctx.student, self.layer_kind, ctx.input_shape)
        self.teacher_names = models.layer_names(ctx.teacher, self.layer_kind, ctx.input_shape)
        self.student_groups, self.teacher_groups = ctx.groups.student, ctx.groups.teacher
        validate_groups(self.student_groups, len(self.student_names))
        validate_groups(sorted(self.teacher_groups), len(self.teacher_names))  # in layer order
        n = len(self.teacher_groups)
        self.loss = CKAGroupLoss(self.student_groups, self.teacher_groups, opt.cka_reduce, opt.cka_agg,
                                 parse_weights(opt.cka_weights, opt.cka_agg, n), opt.cka_kernel,
                                 opt.cka_estimator == 'debiased',
                                 student_widths=models.layer_widths(ctx.student, self.layer_kind, ctx.input_shape),
                                 teacher_widths=models.layer_widths(ctx.teacher, self.layer_kind, ctx.input_shape))
        print(f'ckagroup: teacher groups {self.teacher_groups} ({len(self.teacher_names)} '
              f'{self.layer_kind}), student groups {self.student_groups}')
        self.gather = bool(opt.cka_gather)  # --cka_gather: CKA on the global batch
        self.term = compiled_or_eager(self.loss.term, compile_term(opt, ctx.device), 'the CKA-group term')
        self._device = ctx.device
        self._reset_epoch()

    def _reset_epoch(self) -> None:
        self._matrix_sum, self._group_sum, self._batches = None, None, 0

    def layers(self, out: ModelOutputs) -> List[torch.Tensor]:
        """The layer outputs CKA compares, from one forward's outputs."""
        return out.blocks if self.taps == 'blocks' else list(out.feats[:-1])

    def prepare_teacher(self, teacher_out: ModelOutputs) -> ModelOutputs:
        """The teacher's normalised Grams, right after its forward (under no_grad): only they
        travel on, so its layer outputs are freed before the student's forward. None for a batch
        too small for the estimator (a short last batch), which then adds no term.

        --cka_gather: every rank's layer outputs are gathered first (rank order), so every rank
        computes the same term on the global batch."""
        if not self.computes_term:
            return teacher_out
        feats = list(self.layers(teacher_out))
        teacher_out.blocks = teacher_out.feats = None  # from here on `feats` holds the only references
        if self.gather:
            feats = list(collectives.gather_rows(feats, with_grad=False))
        if feats[0].shape[0] < self.loss.min_samples:
            return ModelOutputs(logits=teacher_out.logits)
        return ModelOutputs(logits=teacher_out.logits, prepared=self.loss.teacher_grams(feats, release=True))

    def forward(self, student_out: ModelOutputs, teacher_out: ModelOutputs, batch: Batch) -> dict:
        if not self.computes_term or teacher_out.prepared is None:
            return {}
        student_feats = self.layers(student_out)
        if self.gather:
            # with gradient: the backward sends each rank the gradient of its own rows, summed over
            # ranks, and DDP's averaging then yields the gradient of the global-batch term
            student_feats = collectives.gather_rows(student_feats, with_grad=True)
        loss, group_cka, matrix = self.term(student_feats, teacher_out.prepared)
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
        if collectives.world_size() == 1:
            return self._matrix_sum, self._group_sum, self._batches
        rows, cols, n = len(self.student_names), len(self.teacher_names), len(self.teacher_groups)
        device = self._matrix_sum.device if self._matrix_sum is not None else self._device
        packed = torch.zeros(rows * cols + n + 1, dtype=torch.float64, device=device)
        if self._batches:
            packed[:-1] = torch.cat([self._matrix_sum.reshape(-1), self._group_sum]).double()
            packed[-1] = self._batches
        collectives.all_reduce_sum(packed)
        batches = int(round(packed[-1].item()))
        return packed[:rows * cols].view(rows, cols), packed[rows * cols:-1], batches

    def end_epoch(self, epoch: int, run) -> dict:
        """Per-group CKA_Gi (epoch mean of the per-batch values) and the epoch-mean matrix, logged
        through the run folder (`run.log_cka_matrix`).

        Distributed: the mean over the batches of every rank (every rank must call this)."""
        if not self.computes_term:  # the same on every rank: no collective is skipped by one alone
            return {}
        matrix_sum, group_sum, batches = self._epoch_totals()
        self._reset_epoch()
        if not batches:
            return {}
        matrix = self.loss.layer_order(matrix_sum / batches).cpu().double().numpy()
        groups = (group_sum / batches).cpu().double().tolist()
        return run.log_cka_matrix('cka', MATRICES_FILE, epoch, matrix, groups, self.student_names,
                                  self.teacher_names, self.student_groups, self.teacher_groups)
