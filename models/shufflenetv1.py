"""ShuffleNet V1 for CIFAR (``ShuffleV1``: groups 3, widths 240/480/960, 4/8/4 units).

State-dict layout of the older repos: ``conv1``, ``bn1`` (1x1 stem, stride 1),
``layer{1,2,3}.<i>.{conv1,bn1,conv2,bn2,conv3,bn3}``, ``linear``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._common import Stage, StagedModel, channel_shuffle, pooled


class ShuffleBlock(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        return channel_shuffle(x, self.groups)


class Bottleneck(nn.Module):
    """ShuffleNet unit; stride 2 concatenates an average-pooled shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        mid_planes = out_planes // 4
        g = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.shuffle1 = ShuffleBlock(groups=g)
        self.conv2 = nn.Conv2d(mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1,
                               groups=mid_planes, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 2:
            self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1))

    def forward(self, x, preact: bool = False):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.shuffle1(out)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        pre = torch.cat([out, res], 1) if self.stride == 2 else out + res
        out = F.relu(pre)
        return (out, pre) if preact else out


class ShuffleNetV1(StagedModel):
    """``forward(x, is_feat=True)`` -> ``([f0, f1, f2, f3, pooled], logits)``: post-ReLU stem and
    stage outputs (stage outputs pre-ReLU with ``preact=True``)."""

    classifier_name = 'linear'

    def __init__(self, out_planes: Sequence[int], num_blocks: Sequence[int], groups: int,
                 num_classes: int = 100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.linear = nn.Linear(out_planes[2], num_classes)

    def _make_layer(self, out_planes: int, num_blocks: int, groups: int) -> Stage:
        layers = []
        for i in range(num_blocks):
            stride = 2 if i == 0 else 1
            cat_planes = self.in_planes if i == 0 else 0
            layers.append(Bottleneck(self.in_planes, out_planes - cat_planes, stride=stride, groups=groups))
            self.in_planes = out_planes
        return Stage(*layers)

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        return pooled(x)


def ShuffleV1(num_classes: int = 100) -> ShuffleNetV1:
    return ShuffleNetV1(out_planes=[240, 480, 960], num_blocks=[4, 8, 4], groups=3, num_classes=num_classes)
