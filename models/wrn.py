"""Wide ResNets for CIFAR (pre-activation blocks): wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2.

WRN-d-k has ``n = (d - 4) / 6`` blocks per stage and stage widths 16k, 32k, 64k. State-dict
layout of the older repos: ``conv1``, ``block{1,2,3}.layer.<i>.{bn1,conv1,bn2,conv2,convShortcut}``,
``bn1``, ``fc``.

Pre-activation blocks output the raw residual sum; the BN-ReLU that activates it is the *next*
block's ``bn1`` / ``relu1`` (after the last block: the model's ``bn1`` / ``relu``). So:

* ``is_feat`` features are post-ReLU like every other family: f0 = ``block1.layer.0.relu1``
  (the activated stem), f1 / f2 = ``block2.layer.0.relu1`` / ``block3.layer.0.relu1``, f3 = the
  final ``relu``; the pooled f3 is exactly the classifier input. With ``preact=True`` f1..f3 are
  the same tensors before the ReLU (the BN outputs; f0 stays post-ReLU). The older repos returned
  the raw residual sums here (and applied the next BN a second time for ``preact``); these are
  computed in the one forward pass, without touching BN statistics twice.
* block-level taps are post-activation too: the stem and each block are tapped at the ReLU that
  activates their output (``block_layer_names()``).
"""
from __future__ import annotations

from typing import List

import torch.nn.functional as F
from torch import nn

from ._common import ZooModel, init_conv_normal_fan_out


class BasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus (projected) shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(
            in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)

    def forward(self, x, return_act: bool = False):
        """Block output; with ``return_act`` also ``(bn1(x), relu1(bn1(x)))``, the activated input."""
        pre = self.bn1(x)
        act = self.relu1(pre)
        shortcut = x if self.equal_in_out else self.convShortcut(act)
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = shortcut + self.conv2(out)
        return (out, pre, act) if return_act else out


class _ActSequential(nn.Sequential):
    """Sequential of blocks that can report its first block's activated input."""

    def forward(self, x, return_act: bool = False):
        if not return_act:
            return super().forward(x)
        x, pre, act = self[0](x, return_act=True)
        for index in range(1, len(self)):
            x = self[index](x)
        return x, pre, act


class NetworkBlock(nn.Module):
    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int,
                 drop_rate: float = 0.0):
        super().__init__()
        self.layer = _ActSequential(*[
            BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
            for i in range(nb_layers)])

    def forward(self, x, return_act: bool = False):
        return self.layer(x, return_act=return_act)


class WideResNet(ZooModel):
    classifier_name = 'fc'

    def __init__(self, depth: int, num_classes: int = 100, widen_factor: int = 1, drop_rate: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f'WRN depth must be 6n+4, got {depth}')
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[3], num_classes)
        self.nChannels = channels[3]
        init_conv_normal_fan_out(self)

    def block_layer_names(self) -> List[str]:
        """Post-activation taps: the stem at ``block1.layer.0.relu1``, then each block at the ReLU
        that activates its output (the next block's ``relu1``, the model's ``relu`` for the last)."""
        acts = [f'block{s}.layer.{i}.relu1'
                for s in (1, 2, 3) for i in range(len(getattr(self, f'block{s}').layer))]
        return acts + ['relu']

    def forward(self, x, is_feat: bool = False, preact: bool = False):
        out = self.conv1(x)
        out, _, a0 = self.block1(out, return_act=True)
        out, p1, a1 = self.block2(out, return_act=True)
        out, p2, a2 = self.block3(out, return_act=True)
        p3 = self.bn1(out)
        a3 = self.relu(p3)
        vec = self.avgpool(a3).flatten(1)
        logits = self.fc(vec)
        if not is_feat:
            return logits
        feats = [a0, p1, p2, p3] if preact else [a0, a1, a2, a3]
        return feats + [vec], logits


def _wrn(name: str, depth: int, widen: int):
    def build(num_classes: int = 100, drop_rate: float = 0.0) -> WideResNet:
        return WideResNet(depth, num_classes=num_classes, widen_factor=widen, drop_rate=drop_rate)
    build.__name__ = build.__qualname__ = name
    build.__doc__ = f'WRN-{depth}-{widen} for CIFAR.'
    return build


wrn_16_1 = _wrn('wrn_16_1', 16, 1)
wrn_16_2 = _wrn('wrn_16_2', 16, 2)
wrn_40_1 = _wrn('wrn_40_1', 40, 1)
wrn_40_2 = _wrn('wrn_40_2', 40, 2)
