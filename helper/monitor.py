"""CKA monitoring for any --distill method: how close is the student's processing flow to the
teacher's, measured the same way for every method.

At the end of each epoch the student and the teacher (both in eval mode, no gradient) run on a
fixed set of held-out batches (the first images of a seeded shuffle of the validation set); the
student x teacher CKA matrix is pooled over those batches (minibatch CKA: HSIC terms averaged,
then the ratio) and reduced to one value per paired group, with the same teacher groups, student
groups and estimator as --distill ckagroup. It is logged like ckagroup's own matrix: TensorBoard
scalars `monitor/group_<i>`, `monitor/group_mean` and `monitor/seconds` (its own cost), the heatmap `monitor/student_x_teacher`
with the group blocks outlined, and the per-epoch matrices in `cka_monitor.json`.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from distiller_zoo.ckagroup import (GROUPS_FILE, CKAGroupLoss, LayerOutputs, log_group_cka, min_cka_samples,
                                    resolve_groups)
from helper.cka import CKAAccumulator
from helper.errors import ConfigError

MONITOR_FILE = 'cka_monitor.json'


def held_out_batches(val_set, batches: int, batch_size: int, seed: int) -> list:
    """The same `batches` image batches every epoch: a seeded shuffle of the validation set.

    A validation set smaller than one batch gives one batch of all its images."""
    generator = torch.Generator().manual_seed(seed)
    batch_size = min(batch_size, len(val_set))
    loader = torch.utils.data.DataLoader(val_set, batch_size=batch_size, shuffle=True, generator=generator,
                                         num_workers=0, drop_last=True)
    images = []
    for index, (batch, *_rest) in enumerate(loader):
        if index == batches:
            break
        images.append(batch)
    return images


def build_monitor(ctx, val_set, opt):
    """The monitor of a run, or None with --no-cka_monitor, with a test set too small for the
    estimator, or (methods other than ckagroup) when the --cka_* settings cannot group these
    models: training goes on, without monitoring, and a note says why."""
    if not opt.cka_monitor:
        return None
    needed = min_cka_samples(opt.cka_estimator)
    if min(len(val_set), opt.batch_size) < needed:  # said now, not after the first epoch
        what = (f'the test set holds {len(val_set)} images' if len(val_set) < opt.batch_size
                else f'--batch_size is {opt.batch_size}')
        print(f'note: CKA monitoring is off for this run: {what} and the {opt.cka_estimator} CKA estimator '
              f'needs at least {needed} per batch')
        return None
    student_layers = LayerOutputs(ctx.student, opt.cka_layers, ctx.input_shape)
    teacher_layers = LayerOutputs(ctx.teacher, opt.cka_layers, ctx.input_shape)
    try:
        groups = resolve_groups(ctx, student_layers, teacher_layers)
    except ConfigError as exc:
        if opt.distill == 'ckagroup':
            raise
        print(f'note: CKA monitoring is off for this run: {exc}')
        return None
    images = held_out_batches(val_set, opt.cka_monitor_batches, opt.batch_size, opt.seed)
    return CKAMonitor(ctx.student, ctx.teacher, student_layers, teacher_layers, groups['student_groups'],
                      groups['teacher_groups'], groups['record'], images, opt.cka_kernel,
                      opt.cka_estimator == 'debiased', opt.cka_reduce, ctx.device)


class CKAMonitor:
    def __init__(self, student, teacher, student_layers: LayerOutputs, teacher_layers: LayerOutputs,
                 student_groups, teacher_groups, teacher_record: dict, images: list, kernel: str,
                 debiased: bool, reduce: str, device):
        self.student, self.teacher = student, teacher
        self.student_layers, self.teacher_layers = student_layers, teacher_layers
        self.student_groups, self.teacher_groups = student_groups, teacher_groups
        self.teacher_record = teacher_record
        self.images, self.kernel, self.debiased = images, kernel, debiased
        self.device = device
        self.groups = CKAGroupLoss(student_groups, teacher_groups, reduce=reduce, debiased=debiased)

    @torch.no_grad()
    def measure(self) -> tuple:
        """(student x teacher matrix, per-group values) on the held-out batches, as numpy/lists."""
        accumulator = CKAAccumulator(kernel=self.kernel, debiased=self.debiased)
        was_training = self.student.training
        self.student.eval()
        try:
            for images in self.images:
                images = images.to(self.device)
                accumulator.update(self.student_layers.collect(self.student, images),
                                   self.teacher_layers.collect(self.teacher, images))
        finally:
            self.student.train(was_training)
        matrix = accumulator.matrix().float()
        groups = self.groups.group_values(matrix)
        return matrix.numpy().astype(np.float64), groups.tolist()

    def end_epoch(self, epoch: int, run) -> dict:
        start = time.perf_counter()
        matrix, groups = self.measure()
        seconds = time.perf_counter() - start
        if run.enabled and not os.path.exists(run.file(GROUPS_FILE)):
            run.write_json(GROUPS_FILE, self.teacher_record)
        record = log_group_cka(run, 'monitor', MONITOR_FILE, epoch, matrix, groups, self.student_layers.names,
                               self.teacher_layers.names, self.student_groups, self.teacher_groups)
        record['monitor/seconds'] = seconds  # its cost, beside the epoch's training 'time'
        return record
