"""CIFAR-style bottleneck ResNet-50 (3x3 stride-1 stem, no max-pool, four stages).

This is the model the older repos call ``ResNet50`` in their CIFAR tables. State-dict layout:
``conv1``, ``bn1``, ``layer{1..4}.<i>.{conv1..3,bn1..3,shortcut.{0,1}}``, ``linear``.
The ImageNet ResNet-50 (torchvision layout) is ``ResNet50@imagenet`` (see ``models/__init__``).
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from ._common import Stage, StagedModel, init_conv_bn_fan_out


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out_planes = self.expansion * planes
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x, preact: bool = False):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        pre = out + self.shortcut(x)
        out = self.relu(pre)
        return (out, pre) if preact else out


class CifarResNetBottleneck(StagedModel):
    """``forward(x, is_feat=True)`` -> ``([f0, f1, f2, f3, f4, pooled], logits)``: post-ReLU stem
    and stage outputs (stage outputs pre-ReLU with ``preact=True``)."""

    classifier_name = 'linear'
    stage_names = ('layer1', 'layer2', 'layer3', 'layer4')

    def __init__(self, num_blocks: Sequence[int], num_classes: int = 100):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(512, num_blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512 * Bottleneck.expansion, num_classes)
        init_conv_bn_fan_out(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> Stage:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(Bottleneck(self.in_planes, planes, s))
            self.in_planes = planes * Bottleneck.expansion
        return Stage(*layers)


def ResNet50(num_classes: int = 100) -> CifarResNetBottleneck:
    """CIFAR bottleneck ResNet-50 (the older repos' CIFAR ``ResNet50``)."""
    return CifarResNetBottleneck([3, 4, 6, 3], num_classes=num_classes)
