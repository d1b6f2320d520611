"""The one interface every distillation method implements.

The training loop knows nothing method-specific: it asks the distiller what to compute
(`needs_feats`, `needs_preact`, `taps`), calls it with student and teacher outputs, and adds
`beta * sum(terms)` to the usual `cls * CE + div * KD` loss. A method declares its command-line
flags once (`add_options`); `helper.options` collects them from the registry.

Nothing here imports `helper/`: what a distiller needs from the run is in its `DistillContext`
(the contrastive data set wrapper, the paired CKA groups) or in the bottom package `runtime/`
(the user-error type, the collectives).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import torch
from torch import nn

from cka import PairedGroups

if TYPE_CHECKING:  # the settings' package builds on this module
    from distiller_zoo.ckagroup.settings import CKASettings


@dataclass
class ModelOutputs:
    """What one forward pass of a model produced for the loop."""

    logits: torch.Tensor
    feats: Optional[list] = None  # is_feat stage outputs, then the pooled vector
    blocks: Optional[list] = None  # block-level layer outputs (`taps = 'blocks'`), in block_layer_names order
    # what the distiller kept of a teacher's outputs (`Distiller.prepare_teacher`; ckagroup: its Grams)
    prepared: Optional[torch.Tensor] = None


@dataclass
class Batch:
    images: torch.Tensor
    targets: torch.Tensor
    extra: Sequence[torch.Tensor] = ()  # what a wrapped data set adds (CRD: index, contrast indices)


@dataclass
class DistillContext:
    """Everything a distiller may need to build itself, gathered once by `helper.train`."""

    student: nn.Module
    teacher: nn.Module
    student_name: str
    teacher_name: str
    num_classes: int
    input_shape: tuple  # (C, H, W) of one training image
    num_train_samples: int
    device: torch.device
    opt: argparse.Namespace
    # The teacher's CKA groups paired with the student's (`needs_teacher_groups`), computed or
    # loaded by distiller_zoo.ckagroup.pair_teacher_groups before the distiller is built, and the
    # run's parsed --cka_* options (distiller_zoo.ckagroup.CKASettings) they were paired with.
    groups: Optional[PairedGroups] = None
    cka: Optional['CKASettings'] = None
    # `(dataset, k, mode) -> dataset` adding CRD's sample and contrast indices (dataset.ContrastiveDataset).
    contrastive_dataset: Optional[Callable] = None


class Distiller(nn.Module):
    """Base class: owns the method's trainable modules, returns its named loss terms.

    The teacher is kept out of the module tree (stored in a plain tuple) so that its parameters
    are never handed to the optimiser, saved with the distiller, or wrapped for training.
    """

    needs_feats = False  # call the models with is_feat=True: ModelOutputs.feats
    needs_preact = False
    taps: Optional[str] = None  # 'blocks': the loop hooks block_layer_names() around each forward
    # ctx.groups must hold the paired CKA groups; helper.train builds such a method without them at
    # -b 0, and it then computes nothing (its term would add nothing, its taps and groups cost time)
    needs_teacher_groups = False
    # The -b of the method's published script (scripts/<method>.sh, tests check they agree), named
    # when a run gives the method's term weight 0; None where -b weighs no feature term (kd: none;
    # simkd: -b is its only loss)
    published_beta: Optional[float] = None

    @classmethod
    def add_options(cls, parser) -> None:
        """Add the method's own flags, with their defaults, to `parser` (an argparse group)."""

    @classmethod
    def check_options(cls, opt) -> None:
        """Refuse bad values of the method's flags as soon as they are parsed (`ConfigError`),
        when the check needs neither models nor data."""

    def __init__(self, ctx: DistillContext):
        super().__init__()
        self._frozen = (ctx.teacher,)

    @property
    def teacher(self) -> nn.Module:
        return self._frozen[0]

    def prepare_teacher(self, teacher_out: ModelOutputs) -> ModelOutputs:
        """Called right after the teacher's forward, under no_grad: what of it `forward` will
        need. A method that needs only something computed from the teacher's features (ckagroup:
        their Grams) returns that alone, so the features are freed before the student's forward."""
        return teacher_out

    def forward(self, student_out: ModelOutputs, teacher_out: ModelOutputs, batch: Batch) -> dict:
        return {}

    def student_logits(self, student_out: ModelOutputs) -> torch.Tensor:
        return student_out.logits

    def predict(self, student: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Logits of the student as deployed; methods that change the head override this."""
        if not self.needs_feats:
            return student(images)
        feats, logits = student(images, is_feat=True, preact=self.needs_preact)
        return self.student_logits(ModelOutputs(logits=logits, feats=feats))

    def deploy_state(self) -> dict:
        """What, besides the student's weights, the deployed student needs (saved as 'deploy')."""
        return {}

    def wrap_train_dataset(self, dataset):
        return dataset

    def end_epoch(self, epoch: int, run) -> dict:
        """Called once per epoch after training; returns scalars for the metrics record.

        `run` is the run folder (`log_cka_matrix(...)`, `log_figure(tag, figure, step)`, `write_json(name, obj)`,
        `file(name)`; it does nothing on ranks other than 0). Accumulators are reset here.
        """
        return {}
