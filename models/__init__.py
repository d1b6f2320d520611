"""Model zoo: the CIFAR and ImageNet classifiers of the CRD / SemCKD / SimKD repo family.

``model_dict`` maps a name to a constructor taking ``num_classes``; every model's state_dict
matches the older repos (their ``{'model': state_dict}`` checkpoints load with ``strict=True``).
Every model provides ``forward(x, is_feat=False, preact=False)``, ``block_layer_names()`` and
``get_classifier()``; ``models.taps.FeatureTap`` records per-layer outputs.

The ``ResNet50`` name clash
---------------------------
The older repos used ``ResNet50`` for two different networks: a CIFAR-style bottleneck ResNet-50
(3x3 stem, no max-pool; CIFAR tables) and the torchvision ImageNet ResNet-50 (ImageNet tables).
Here ``model_dict['ResNet50']`` is always the CIFAR model and the ImageNet one is
``'ResNet50@imagenet'``. ``resolve_model_name(name, dataset)`` / ``build_model(name, ...,
dataset)`` map a plain ``'ResNet50'`` to ``'ResNet50@imagenet'`` when the data set is
ImageNet-sized, i.e. its name, lower-cased without ``-`` / ``_``, starts with ``imagenet``
(``imagenet``, ``ImageNet-1k``, ``imagenet100``; not ``tinyimagenet``). Every other name,
including an explicit ``'ResNet50@imagenet'``, is used as given.
"""
from __future__ import annotations

import difflib
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .imagenet import (MobileNetV2_Imagenet, ResNet10x2, ResNet18, ResNet18x2, ResNet34, ResNet34x2,
                       ResNet50_imagenet, ShuffleV2_Imagenet, resnext50_32x4d, wrn_50_2)
from .mobilenetv2 import mobile_half, mobilenet_v2_1_0
from .resnet import (resnet8, resnet8x4, resnet14, resnet14x2, resnet14x4, resnet20, resnet32, resnet32x4,
                     resnet38, resnet38x2, resnet38x4, resnet44, resnet56, resnet110, resnet110x2, resnet116)
from .resnetv2 import ResNet50
from .shufflenetv1 import ShuffleV1
from .shufflenetv2 import ShuffleV2, ShuffleV2_1_5
from .taps import FeatureTap, keep_tap, open_tap
from .vgg import vgg8, vgg11, vgg13, vgg16, vgg19
from .wrn import wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2

IMAGENET_RESNET50 = 'ResNet50@imagenet'

model_dict: Dict[str, Callable[..., nn.Module]] = {
    # CIFAR ResNets (basic blocks, 3 stages)
    'resnet8': resnet8, 'resnet14': resnet14, 'resnet20': resnet20, 'resnet32': resnet32,
    'resnet38': resnet38, 'resnet44': resnet44, 'resnet56': resnet56, 'resnet110': resnet110,
    'resnet116': resnet116, 'resnet14x2': resnet14x2, 'resnet38x2': resnet38x2,
    'resnet110x2': resnet110x2, 'resnet8x4': resnet8x4, 'resnet14x4': resnet14x4,
    'resnet32x4': resnet32x4, 'resnet38x4': resnet38x4,
    # CIFAR bottleneck ResNet-50 (see the name-clash note above)
    'ResNet50': ResNet50,
    # CIFAR wide ResNets
    'wrn_16_1': wrn_16_1, 'wrn_16_2': wrn_16_2, 'wrn_40_1': wrn_40_1, 'wrn_40_2': wrn_40_2,
    # CIFAR VGG (batch norm)
    'vgg8': vgg8, 'vgg11': vgg11, 'vgg13': vgg13, 'vgg16': vgg16, 'vgg19': vgg19,
    # CIFAR mobile networks
    'MobileNetV2': mobile_half, 'MobileNetV2_1_0': mobilenet_v2_1_0,
    'ShuffleV1': ShuffleV1, 'ShuffleV2': ShuffleV2, 'ShuffleV2_1_5': ShuffleV2_1_5,
    # ImageNet (torchvision layouts)
    'ResNet18': ResNet18, 'ResNet34': ResNet34, IMAGENET_RESNET50: ResNet50_imagenet,
    'ResNet10x2': ResNet10x2, 'ResNet18x2': ResNet18x2, 'ResNet34x2': ResNet34x2,
    'wrn_50_2': wrn_50_2, 'resnext50_32x4d': resnext50_32x4d,
    'MobileNetV2_Imagenet': MobileNetV2_Imagenet, 'ShuffleV2_Imagenet': ShuffleV2_Imagenet,
}

#: names whose models expect 224x224 ImageNet inputs (the others are CIFAR 32x32 models)
IMAGENET_MODELS = frozenset({
    'ResNet18', 'ResNet34', IMAGENET_RESNET50, 'ResNet10x2', 'ResNet18x2', 'ResNet34x2', 'wrn_50_2',
    'resnext50_32x4d', 'MobileNetV2_Imagenet', 'ShuffleV2_Imagenet'})


def is_imagenet_dataset(dataset: Optional[str]) -> bool:
    """True for ImageNet-sized data sets: the name, lower-cased without '-' / '_', starts with
    'imagenet' (so 'tinyimagenet' is not)."""
    if not dataset:
        return False
    return str(dataset).lower().replace('-', '').replace('_', '').startswith('imagenet')


def _unknown_name_message(name) -> str:
    close = difflib.get_close_matches(str(name), list(model_dict), n=3, cutoff=0.6)
    hint = f' (did you mean {", ".join(close)}?)' if close else ''
    return f'unknown model {name!r}{hint}; valid names: {", ".join(model_dict)}'


def resolve_model_name(name: str, dataset: Optional[str] = None) -> str:
    """The ``model_dict`` key for ``name`` on ``dataset``; only ``'ResNet50'`` depends on the data
    set (``'ResNet50@imagenet'`` for ImageNet-sized data, see the module docstring). Unknown names
    raise ``ValueError`` with a one-line message listing the valid names."""
    if name not in model_dict:
        raise ValueError(_unknown_name_message(name))
    if name == 'ResNet50' and is_imagenet_dataset(dataset):
        return IMAGENET_RESNET50
    return name


def build_model(name: str, num_classes: int, dataset: Optional[str] = None) -> nn.Module:
    """``model_dict[resolve_model_name(name, dataset)](num_classes=num_classes)``."""
    return model_dict[resolve_model_name(name, dataset)](num_classes=num_classes)


def feature_shapes(model: nn.Module, input_shape: Sequence[int]) -> List[Tuple[int, ...]]:
    """Per-sample shapes (no batch dimension) of the ``model(x, is_feat=True)`` features.

    ``input_shape`` is (C, H, W) (a leading batch dimension is accepted and ignored). One forward
    of a zero batch in eval mode under ``no_grad``; every submodule's train/eval mode is restored
    afterwards, so BN statistics never change.
    """
    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 4:
        shape = shape[1:]
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device('cpu')
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            feats, _ = model(torch.zeros((1,) + shape, device=device, dtype=dtype), is_feat=True)
    finally:
        for m, training in modes:
            m.training = training
    return [tuple(f.shape[1:]) for f in feats]


LAYER_KINDS = ('blocks', 'stages')


def layer_names(model: nn.Module, kind: str, input_shape: Sequence[int]) -> List[str]:
    """Names of the layers whose outputs `layer_outputs` returns: ``'blocks'``, the block-level
    layers (``block_layer_names()``, stem then every block); ``'stages'``, the is_feat stage
    outputs without the pooled vector (``is_feat[i]``)."""
    if kind == 'blocks':
        return list(model.block_layer_names())
    if kind == 'stages':
        return [f'is_feat[{i}]' for i in range(len(feature_shapes(model, input_shape)) - 1)]
    raise ValueError(f"unknown layer kind {kind!r}; valid: {', '.join(LAYER_KINDS)}")


def layer_widths(model: nn.Module, kind: str, input_shape: Sequence[int]) -> List[int]:
    """Per-sample sizes (C x H x W) of the ``layer_outputs(model, ..., kind)`` layers, from one
    forward of a zero image in eval mode under ``no_grad`` (modes restored: BN statistics never
    change)."""
    shape = tuple(int(d) for d in input_shape)[-3:]
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device('cpu')
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            outputs = layer_outputs(model, torch.zeros((1,) + shape, device=device), kind)
    finally:
        for m, training in modes:
            m.training = training
    return [int(o[0].numel()) for o in outputs]


def layer_outputs(model: nn.Module, images: torch.Tensor, kind: str) -> List[torch.Tensor]:
    """One forward of ``model`` on ``images``; the outputs of the ``layer_names(model, kind)``
    layers (recorded by `open_tap`). Gradient and mode as the caller set them."""
    if kind == 'stages':
        feats, _ = model(images, is_feat=True)
        return list(feats[:-1])
    with open_tap(model, model.block_layer_names()) as tap:
        model(images)
        return tap.outputs


__all__ = ['model_dict', 'build_model', 'resolve_model_name', 'feature_shapes',
           'FeatureTap', 'keep_tap', 'open_tap', 'LAYER_KINDS', 'layer_names', 'layer_outputs', 'layer_widths',
           'IMAGENET_RESNET50', 'IMAGENET_MODELS', 'is_imagenet_dataset']
