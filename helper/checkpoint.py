"""Checkpoints: atomic writes, safe loading, and teacher reconstruction.

Every checkpoint is read with `torch.load(..., weights_only=True)`: a teacher file downloaded from
the web must not be able to run code. Our checkpoints record the architecture, data set and class
count; the older repos' `{'model': state_dict}` files are also accepted, the architecture then
parsed from the folder name (``save/models/resnet32x4_vanilla/ckpt_epoch_240.pth``).
"""
from __future__ import annotations

import os
import re

import torch

import models
from runtime.errors import ConfigError


def save_atomic(obj: dict, path: str) -> None:
    """Write to a temporary file and rename, so an interrupted save never leaves a broken file."""
    tmp = f'{path}.tmp{os.getpid()}'
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f'checkpoint {path!r} does not exist; check --path_t / --resume')
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:  # unpickling refused or corrupt file: say which, in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f'cannot read checkpoint {path!r} safely (weights only): {first}') from None
    if not isinstance(ckpt, dict) or 'model' not in ckpt:
        raise ConfigError(f"checkpoint {path!r} has no 'model' entry; expected {{'model': state_dict, ...}}")
    return ckpt


def arch_from_path(path: str):
    """Architecture named by the folder holding an older-style checkpoint, or None.

    The longest registered model name that the folder name starts with (followed by '_' or the
    end) wins, so multi-word names such as ShuffleV2_1_5, MobileNetV2_1_0, wrn_40_2 and
    resnext50_32x4d parse right. Student run folders ``S-<name>_T-...`` / ``S:<name>_T:...``
    name their student.
    """
    folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
    match = re.match(r'S[:\-~](.+?)_T[:\-~]', folder)
    if match and match.group(1) in models.model_dict:
        return match.group(1)
    candidates = [name for name in models.model_dict
                  if folder == name or folder.startswith(name + '_')]
    return max(candidates, key=len) if candidates else None


def _num_classes_of(state_dict: dict, arch: str) -> int:
    """Class count from the classifier's bias: the last 1-D tensor of a Linear head."""
    model = models.build_model(arch, num_classes=7)
    head = model.get_classifier()
    for name, module in model.named_modules():
        if module is head:
            key = f'{name}.bias'
            if key in state_dict:
                return int(state_dict[key].shape[0])
    raise ConfigError(f'cannot tell the class count of the {arch} checkpoint (no classifier bias)')


def load_teacher(path: str, num_classes: int, dataset: str, device) -> tuple:
    """Build the teacher of `path`, load its weights strictly; returns (model, arch)."""
    ckpt = load_checkpoint(path)
    arch = ckpt.get('arch') or arch_from_path(path)
    if arch is None:
        raise ConfigError(f'cannot tell the teacher architecture of {path!r}: the checkpoint has no '
                          "'arch' and its folder is not named <model>_..., e.g. resnet32x4_vanilla")
    try:
        arch = models.resolve_model_name(arch, dataset)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    state = ckpt['model']
    ckpt_classes = ckpt.get('num_classes') or _num_classes_of(state, arch)
    if ckpt_classes != num_classes:
        raise ConfigError(f'teacher {path!r} has {ckpt_classes} classes but --dataset {dataset} has '
                          f'{num_classes}; use a teacher trained on {dataset}')
    model = models.build_model(arch, num_classes=num_classes, dataset=dataset)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f'weights in {path!r} do not fit {arch}: {first} '
                          "(wrong architecture in the folder name or 'arch'?)") from None
    model.to(device)
    freeze(model)
    return model, arch


def freeze(model: torch.nn.Module) -> None:
    """Teacher: no gradients, eval mode (BN statistics never move)."""
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
