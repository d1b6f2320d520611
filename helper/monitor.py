"""CKA monitoring for any --distill method: how close is the student's processing flow to the
teacher's, measured the same way for every method.

At the end of each epoch the student and the teacher (both in eval mode, no gradient) run on a
fixed set of held-out batches (the first images of a seeded shuffle of the validation set); the
student x teacher CKA matrix is pooled over those batches (minibatch CKA: HSIC terms averaged,
then the ratio) and reduced to one value per paired group, with the same teacher groups, student
groups, estimator and reduction (`cka.group_values`) as --distill ckagroup. It is logged like
ckagroup's own matrix: TensorBoard scalars `monitor/group_<i>`, `monitor/group_mean` and
`monitor/seconds` (its own cost), the heatmap `monitor/student_x_teacher` with the group blocks
outlined, and the per-epoch matrices in `cka_monitor.json`.
"""
from __future__ import annotations

import time

import numpy as np
import torch

import models
from cka import CKAAccumulator, PairedGroups, block_masks, group_values, min_cka_samples
from distiller_zoo.ckagroup import CKASettings

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


def monitor_wanted(val_set, settings: CKASettings, batch_size: int) -> bool:
    """Whether the run is monitored: --cka_monitor, and batches of the test set large enough for
    the estimator (if not, a note says why, now rather than after the first epoch)."""
    if not settings.monitor:
        return False
    needed = min_cka_samples(settings.estimator)
    if min(len(val_set), batch_size) < needed:
        what = (f'the test set holds {len(val_set)} images' if len(val_set) < batch_size
                else f'--batch_size is {batch_size}')
        print(f'note: CKA monitoring is off for this run: {what} and the {settings.estimator} CKA estimator '
              f'needs at least {needed} per batch')
        return False
    return True


def build_monitor(student, teacher, groups: PairedGroups, val_set, settings: CKASettings, *, batch_size: int,
                  seed: int, input_shape, device) -> 'CKAMonitor':
    """The monitor of a run, measuring with the run's paired groups and --cka_* settings on
    `settings.monitor_batches` held-out batches of `batch_size` drawn by `seed`."""
    kind = settings.layers
    images = held_out_batches(val_set, settings.monitor_batches, batch_size, seed)
    return CKAMonitor(student, teacher, kind, models.layer_names(student, kind, input_shape),
                      models.layer_names(teacher, kind, input_shape), groups.student, groups.teacher,
                      images, settings.kernel, settings.debiased, settings.reduce, device)


class CKAMonitor:
    def __init__(self, student, teacher, kind: str, student_names, teacher_names, student_groups,
                 teacher_groups, images: list, kernel: str, debiased: bool, reduce: str, device):
        self.student, self.teacher, self.kind = student, teacher, kind
        self.student_names, self.teacher_names = student_names, teacher_names
        self.student_groups, self.teacher_groups = student_groups, teacher_groups
        self.images, self.kernel, self.debiased, self.reduce = images, kernel, debiased, reduce
        self.device = device
        self.masks = block_masks(student_groups, teacher_groups)

    @torch.no_grad()
    def measure(self) -> tuple:
        """(student x teacher matrix, per-group values) on the held-out batches, as numpy/lists."""
        accumulator = CKAAccumulator(kernel=self.kernel, debiased=self.debiased)
        was_training = self.student.training
        self.student.eval()
        try:
            for images in self.images:
                images = images.to(self.device)
                accumulator.update(models.layer_outputs(self.student, images, self.kind),
                                   models.layer_outputs(self.teacher, images, self.kind))
        finally:
            self.student.train(was_training)
        matrix = accumulator.matrix().float().cpu()
        groups = group_values(matrix, self.masks, self.reduce)
        return matrix.numpy().astype(np.float64), groups.tolist()

    def end_epoch(self, epoch: int, run) -> dict:
        start = time.perf_counter()
        matrix, groups = self.measure()
        seconds = time.perf_counter() - start
        record = run.log_cka_matrix('monitor', MONITOR_FILE, epoch, matrix, groups, self.student_names,
                                    self.teacher_names, self.student_groups, self.teacher_groups)
        record['monitor/seconds'] = seconds  # its cost, beside the epoch's training 'time'
        return record
