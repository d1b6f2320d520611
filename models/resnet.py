"""CIFAR ResNets (3x3 stem, three stages, basic blocks): resnet8 ... resnet116, x2 / x4 widths.

Depth ``d`` gives ``n = (d - 2) / 6`` basic blocks per stage. State-dict layout of the older
repos: ``conv1``, ``bn1``, ``layer{1,2,3}.<i>.{conv1,bn1,conv2,bn2,downsample.{0,1}}``, ``fc``.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from ._common import Stage, StagedModel, init_conv_bn_fan_out


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x, preact: bool = False):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        pre = out + identity
        out = self.relu(pre)
        return (out, pre) if preact else out


class ResNet(StagedModel):
    """CIFAR ResNet. ``forward(x, is_feat=True)`` -> ``([f0, f1, f2, f3, pooled], logits)``:
    f0 the post-ReLU stem, f1..f3 the post-ReLU stage outputs (pre-ReLU with ``preact=True``)."""

    classifier_name = 'fc'

    def __init__(self, depth: int, num_filters: Sequence[int], num_classes: int = 100):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f'CIFAR ResNet depth must be 6n+2, got {depth}')
        n = (depth - 2) // 6
        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(3, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(num_filters[1], n)
        self.layer2 = self._make_layer(num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(num_filters[3], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(num_filters[3] * BasicBlock.expansion, num_classes)
        init_conv_bn_fan_out(self)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> Stage:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * BasicBlock.expansion, kernel_size=1, stride=stride,
                          bias=False),
                nn.BatchNorm2d(planes * BasicBlock.expansion),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return Stage(*layers)


def _cifar_resnet(name: str, depth: int, filters: Sequence[int]):
    def build(num_classes: int = 100) -> ResNet:
        return ResNet(depth, filters, num_classes=num_classes)
    build.__name__ = build.__qualname__ = name
    build.__doc__ = f'CIFAR ResNet-{depth}, stage widths {list(filters)}.'
    return build


_W1, _W2, _W4 = [16, 16, 32, 64], [16, 32, 64, 128], [32, 64, 128, 256]

resnet8 = _cifar_resnet('resnet8', 8, _W1)
resnet14 = _cifar_resnet('resnet14', 14, _W1)
resnet20 = _cifar_resnet('resnet20', 20, _W1)
resnet32 = _cifar_resnet('resnet32', 32, _W1)
resnet38 = _cifar_resnet('resnet38', 38, _W1)
resnet44 = _cifar_resnet('resnet44', 44, _W1)
resnet56 = _cifar_resnet('resnet56', 56, _W1)
resnet110 = _cifar_resnet('resnet110', 110, _W1)
resnet116 = _cifar_resnet('resnet116', 116, _W1)
resnet14x2 = _cifar_resnet('resnet14x2', 14, _W2)
resnet38x2 = _cifar_resnet('resnet38x2', 38, _W2)
resnet110x2 = _cifar_resnet('resnet110x2', 110, _W2)
resnet8x4 = _cifar_resnet('resnet8x4', 8, _W4)
resnet14x4 = _cifar_resnet('resnet14x4', 14, _W4)
resnet32x4 = _cifar_resnet('resnet32x4', 32, _W4)
resnet38x4 = _cifar_resnet('resnet38x4', 38, _W4)

