"""ShuffleNet V2 for CIFAR: ``ShuffleV2`` (net size 1.0) and ``ShuffleV2_1_5`` (net size 1.5).

State-dict layout of the older repos: ``conv1``, ``bn1`` (1x1 stem, stride 1),
``layer{1,2,3}.0.{conv1..5,bn1..5}`` (down-sampling unit), ``layer{s}.<i>.{conv1..3,bn1..3}``
(basic units), ``conv2``, ``bn2`` (1x1 head), ``linear``.

``preact=True`` returns each stage's last unit output before its final ReLU, channel-shuffled
like the output (the older repos returned it unshuffled, misaligned with the feature's channels).
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from ._common import Stage, StagedModel, channel_shuffle, pooled

CONFIGS = {
    0.5: {'out_channels': (48, 96, 192, 1024), 'num_blocks': (3, 7, 3)},
    1: {'out_channels': (116, 232, 464, 1024), 'num_blocks': (3, 7, 3)},
    1.5: {'out_channels': (176, 352, 704, 1024), 'num_blocks': (3, 7, 3)},
    2: {'out_channels': (224, 488, 976, 2048), 'num_blocks': (3, 7, 3)},
}


class ShuffleBlock(nn.Module):
    def __init__(self, groups: int = 2):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        return channel_shuffle(x, self.groups)


class SplitBlock(nn.Module):
    def __init__(self, ratio: float):
        super().__init__()
        self.ratio = ratio

    def forward(self, x):
        c = int(x.size(1) * self.ratio)
        return x[:, :c], x[:, c:]


class BasicBlock(nn.Module):
    """Stride-1 unit: split, transform one half, concatenate, shuffle."""

    def __init__(self, in_channels: int, split_ratio: float = 0.5):
        super().__init__()
        self.split = SplitBlock(split_ratio)
        c = int(in_channels * split_ratio)
        self.conv1 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, stride=1, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.shuffle = ShuffleBlock()

    def forward(self, x, preact: bool = False):
        x1, x2 = self.split(x)
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        pre = self.bn3(self.conv3(out))
        out = self.shuffle(torch.cat([x1, F.relu(pre)], 1))
        if preact:
            return out, self.shuffle(torch.cat([x1, pre], 1))
        return out


class DownBlock(nn.Module):
    """Stride-2 unit: two branches, concatenated and shuffled."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        # left branch
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=1,
                               groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right branch
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.shuffle = ShuffleBlock()

    def forward(self, x):
        out1 = self.bn1(self.conv1(x))
        out1 = F.relu(self.bn2(self.conv2(out1)))
        out2 = F.relu(self.bn3(self.conv3(x)))
        out2 = self.bn4(self.conv4(out2))
        out2 = F.relu(self.bn5(self.conv5(out2)))
        return self.shuffle(torch.cat([out1, out2], 1))


class ShuffleNetV2(StagedModel):
    """``forward(x, is_feat=True)`` -> ``([f0, f1, f2, f3, pooled], logits)``: post-ReLU stem and
    stage outputs, then the pooled output of the 1x1 head conv."""

    classifier_name = 'linear'

    def __init__(self, net_size: float = 1, num_classes: int = 100):
        super().__init__()
        out_channels = CONFIGS[net_size]['out_channels']
        num_blocks = CONFIGS[net_size]['num_blocks']
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        self.in_channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, stride=1, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)

    def _make_layer(self, out_channels: int, num_blocks: int) -> Stage:
        layers: List[nn.Module] = [DownBlock(self.in_channels, out_channels)]
        layers += [BasicBlock(out_channels) for _ in range(num_blocks)]
        self.in_channels = out_channels
        return Stage(*layers)

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        return pooled(F.relu(self.bn2(self.conv2(x))))  # the 1x1 head conv, then the pool


def ShuffleV2(num_classes: int = 100) -> ShuffleNetV2:
    return ShuffleNetV2(net_size=1, num_classes=num_classes)


def ShuffleV2_1_5(num_classes: int = 100) -> ShuffleNetV2:
    return ShuffleNetV2(net_size=1.5, num_classes=num_classes)
