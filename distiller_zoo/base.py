"""The one interface every distillation method implements.

The training loop knows nothing method-specific: it asks the distiller what to compute
(`needs_feats`, `needs_preact`), calls it with student and teacher outputs, and adds
`beta * sum(terms)` to the usual `cls * CE + div * KD` loss.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import nn


@dataclass
class ModelOutputs:
    """What one forward pass of a model produced for the loop."""

    logits: torch.Tensor
    feats: Optional[list] = None  # is_feat stage outputs, then the pooled vector


@dataclass
class Batch:
    images: torch.Tensor
    targets: torch.Tensor
    extra: Sequence[torch.Tensor] = ()  # what a wrapped data set adds (CRD: index, contrast indices)


@dataclass
class DistillContext:
    """Everything a distiller may need to build itself, gathered once by the entry script."""

    student: nn.Module
    teacher: nn.Module
    student_name: str
    teacher_name: str
    num_classes: int
    input_shape: tuple  # (C, H, W) of one training image
    num_train_samples: int
    device: torch.device
    opt: argparse.Namespace
    run_dir: Optional[str] = None
    # Returns the training set with evaluation transforms, for methods that precompute from data.
    eval_train_set: Optional[Callable] = None
    extras: dict = field(default_factory=dict)


class Distiller(nn.Module):
    """Base class: owns the method's trainable modules, returns its named loss terms.

    The teacher is kept out of the module tree (stored in a plain tuple) so that its parameters
    are never handed to the optimiser, saved with the distiller, or wrapped for training.
    """

    needs_feats = False
    needs_preact = False

    def __init__(self, ctx: DistillContext):
        super().__init__()
        self._frozen = (ctx.teacher,)

    @property
    def teacher(self) -> nn.Module:
        return self._frozen[0]

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

        `run` is the run folder (`log_figure(tag, matplotlib_figure, step)`, `write_json(name, obj)`,
        `file(name)`; it does nothing on ranks other than 0). Accumulators are reset here.
        """
        return {}
