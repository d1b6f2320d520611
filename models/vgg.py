"""VGG with batch norm for CIFAR: vgg8, vgg11, vgg13, vgg16, vgg19.

Five conv blocks ``block0..block4`` (nn.Sequential of conv-BN-ReLU units; keys
``block<k>.<3j>`` conv, ``block<k>.<3j+1>`` BN), max-pools between blocks, global average pool
and one ``classifier`` Linear, as in the older repos. Their blocks dropped the last ReLU and
applied it in ``forward``; here the ReLU module is kept at the end of each block (stateless, so
the state-dict keys are unchanged) so every unit's post-ReLU output has a module to tap.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

from ._common import StagedModel

CFG = {
    'vgg8': [[64], [128], [256], [512], [512]],
    'vgg11': [[64], [128], [256, 256], [512, 512], [512, 512]],
    'vgg13': [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    'vgg16': [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    'vgg19': [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


class VGGBlock(nn.Sequential):
    """conv-(BN)-ReLU units; ``forward(x, preact=True)`` returns ``(out, out_before_last_relu)``."""

    def forward(self, x, preact: bool = False):
        last = len(self) - 1
        for index, module in enumerate(self):
            if preact and index == last:
                return module(x), x
            x = module(x)
        return x


def _make_block(widths: Sequence[int], batch_norm: bool, in_channels: int) -> VGGBlock:
    layers: List[nn.Module] = []
    for v in widths:
        layers.append(nn.Conv2d(in_channels, v, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU())
        in_channels = v
    return VGGBlock(*layers)


class VGG(StagedModel):
    """``forward(x, is_feat=True)`` -> ``([f0, f1, f2, f3, f4, pooled], logits)``, the post-ReLU
    block outputs (f1..f4 pre-ReLU with ``preact=True``)."""

    classifier_name = 'classifier'
    stage_names = ('block1', 'block2', 'block3', 'block4')

    def __init__(self, cfg: Sequence[Sequence[int]], batch_norm: bool = True, num_classes: int = 100):
        super().__init__()
        self.cfg = [list(c) for c in cfg]
        self.batch_norm = batch_norm
        in_ch = 3
        for k, widths in enumerate(self.cfg):
            setattr(self, f'block{k}', _make_block(widths, batch_norm, in_ch))
            in_ch = widths[-1]
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(in_ch, num_classes)
        self._initialize_weights()

    def _initialize_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def block_layer_names(self) -> List[str]:
        """The ReLU of every conv-BN-ReLU unit; the first unit of block0 is the stem."""
        step = 3 if self.batch_norm else 2
        return [f'block{k}.{step * j + step - 1}'
                for k, widths in enumerate(self.cfg) for j in range(len(widths))]

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.block0(x)

    def _enter_stage(self, index: int, x: torch.Tensor, input_height: int) -> torch.Tensor:
        if index < 3:
            return getattr(self, f'pool{index}')(x)
        if input_height == 64:  # the older repos' rule: one more pool for 64x64 inputs
            return self.pool3(x)
        return x

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool4(x).flatten(1)


def _vgg(name: str):
    def build(num_classes: int = 100) -> VGG:
        return VGG(CFG[name], batch_norm=True, num_classes=num_classes)
    build.__name__ = build.__qualname__ = name
    build.__doc__ = f'{name} with batch norm (the older repos\' {name}_bn).'
    return build


vgg8 = _vgg('vgg8')
vgg11 = _vgg('vgg11')
vgg13 = _vgg('vgg13')
vgg16 = _vgg('vgg16')
vgg19 = _vgg('vgg19')
