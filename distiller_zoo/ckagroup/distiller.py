"""The CKA-group term and `--distill ckagroup`: make the student's processing flow resemble the
teacher's.

1. Before training, `pair_teacher_groups` (distiller_zoo.ckagroup.teacher_groups) splits the
   teacher's layers into n contiguous groups by its layer-by-layer CKA matrix (or takes them from
   --cka_group_file, or from the run folder on resume), splits the student's layers into n
   contiguous groups too (`--cka_student_split`: even, or in proportion to the teacher's group
   sizes), and pairs group i of the student with group i of the teacher; the pairing reaches the
   distiller as `ctx.groups`, the parsed --cka_* options as `ctx.cka`.
2. Each batch: the L_s x L_t CKA matrix between student and teacher layer outputs; each paired
   group block is reduced to CKA_Gi (`--cka_reduce`, `cka.group_values`), and the loss is the
   aggregate (`--cka_agg`) of 1 - CKA_Gi. The teacher's features carry no gradient.

The Grams of every layer are needed whatever the grouping (groups cover all layers); the products
between them are one matrix multiplication for all pairs, cheaper in kernel launches than one per
block, and the full matrix is what the epoch heatmap shows.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch
from torch import nn

import models
from cka import (REDUCTIONS, block_masks, cka_from_grams, group_values, grouped_normalized_grams, inverse_order,
                 min_cka_samples, validate_groups, width_groups)
from distiller_zoo._common import compiled_or_eager
from distiller_zoo.base import Batch, DistillContext, Distiller, ModelOutputs
from distiller_zoo.ckagroup.settings import MONITOR_FLAGS, CKASettings, add_options, check_batch_size
from runtime import collectives

MATRICES_FILE = 'cka_matrices.json'


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
        # the --cka_* flags (the CKA monitor of every method groups with them too) but the
        # monitor's own, which helper.options lists with the common flags
        add_options(parser, exclude=MONITOR_FLAGS)

    @classmethod
    def check_options(cls, opt) -> None:
        """Every --cka_* value that needs neither models nor data, whatever --distill (the CKA
        monitor of every method groups with them too); the term's batches, with ckagroup."""
        settings = CKASettings.from_options(opt)
        if opt.distill == 'ckagroup':
            check_batch_size(opt.batch_size, settings.estimator)

    def __init__(self, ctx: DistillContext):
        super().__init__(ctx)
        # Built without groups (helper.train does so at -b 0, where the term would add nothing), it
        # taps no layer and computes no CKA.
        self.computes_term = ctx.groups is not None
        if not self.computes_term:
            if ctx.opt.beta != 0:
                raise ValueError('ckagroup needs the paired teacher groups in ctx.groups '
                                 '(distiller_zoo.ckagroup.pair_teacher_groups)')
            return
        settings = ctx.cka
        if settings is None:
            raise ValueError('ckagroup needs its --cka_* settings in ctx.cka (CKASettings.from_options)')
        self.layer_kind = settings.layers
        if self.layer_kind == 'stages':
            self.needs_feats = True
        else:
            self.taps = 'blocks'
        self.student_names = models.layer_names(ctx.student, self.layer_kind, ctx.input_shape)
        self.teacher_names = models.layer_names(ctx.teacher, self.layer_kind, ctx.input_shape)
        self.student_groups, self.teacher_groups = ctx.groups.student, ctx.groups.teacher
        validate_groups(self.student_groups, len(self.student_names))
        validate_groups(sorted(self.teacher_groups), len(self.teacher_names))  # in layer order
        self.loss = CKAGroupLoss(self.student_groups, self.teacher_groups, settings.reduce, settings.agg,
                                 settings.group_weights(len(self.teacher_groups)), settings.kernel, settings.debiased,
                                 student_widths=models.layer_widths(ctx.student, self.layer_kind, ctx.input_shape),
                                 teacher_widths=models.layer_widths(ctx.teacher, self.layer_kind, ctx.input_shape))
        print(f'ckagroup: teacher groups {self.teacher_groups} ({len(self.teacher_names)} '
              f'{self.layer_kind}), student groups {self.student_groups}')
        self.gather = settings.gather  # --cka_gather: CKA on the global batch
        compiled = settings.compiles_term(ctx.device, getattr(ctx.opt, 'compile', None))
        self.term = compiled_or_eager(self.loss.term, compiled, 'the CKA-group term')
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
