"""MobileNetV2 for CIFAR: ``MobileNetV2`` (expansion 6, width 0.5, the older repos'
``mobile_half``) and ``MobileNetV2_1_0`` (width 1.0).

State-dict layout of the older repos: ``conv1.{0,1}`` (stem conv-BN-ReLU, stride 2),
``blocks.<stage>.<i>.conv.{0,1,3,4,6,7}`` (inverted residuals), ``conv2.{0,1}`` (1x1 conv to 1280),
``classifier.0`` (Linear).

Stage outputs are linear-bottleneck outputs (no ReLU after them), so ``preact=True`` returns the
same features as ``preact=False``.
"""
from __future__ import annotations

from typing import List

from torch import nn

from ._common import ZooModel, init_conv_normal_fan_out

# t (expansion), c (channels), n (blocks), s (first stride)
SETTING = [
    [1, 16, 1, 1],
    [None, 24, 2, 1],
    [None, 32, 3, 2],
    [None, 64, 4, 2],
    [None, 96, 3, 1],
    [None, 160, 3, 2],
    [None, 320, 1, 1],
]
#: indices of ``blocks`` after which a stage feature is taken (f1..f4)
FEATURE_STAGES = (1, 2, 4, 6)


def conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.ReLU())


def conv_1x1_bn(inp: int, oup: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup), nn.ReLU())


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = inp * expand_ratio
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),  # pointwise expansion
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),  # depthwise
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),  # pointwise linear
            nn.BatchNorm2d(oup),
        )

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class MobileNetV2(ZooModel):
    """``forward(x, is_feat=True)`` -> ``([f0, f1, f2, f3, f4, pooled], logits)``: f0 the post-ReLU
    stem, f1..f4 the outputs of ``blocks[1]``, ``blocks[2]``, ``blocks[4]``, ``blocks[6]``."""

    classifier_name = 'classifier.0'

    def __init__(self, T: int = 6, width_mult: float = 0.5, num_classes: int = 100):
        super().__init__()
        input_channel = int(32 * width_mult)
        self.conv1 = conv_bn(3, input_channel, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in SETTING:
            t = T if t is None else t
            output_channel = int(c * width_mult)
            layers = []
            for stride in [s] + [1] * (n - 1):
                layers.append(InvertedResidual(input_channel, output_channel, stride, t))
                input_channel = output_channel
            self.blocks.append(nn.Sequential(*layers))
        self.last_channel = _make_divisible(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_1x1_bn(input_channel, self.last_channel)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        init_conv_normal_fan_out(self, linear_std=0.01)

    def block_layer_names(self) -> List[str]:
        """The stem ``conv1`` (conv-BN-ReLU), then every inverted-residual block."""
        return ['conv1'] + [f'blocks.{s}.{i}' for s, stage in enumerate(self.blocks)
                            for i in range(len(stage))]

    def forward(self, x, is_feat: bool = False, preact: bool = False):
        out = self.conv1(x)
        feats = [out]
        for index, stage in enumerate(self.blocks):
            out = stage(out)
            if index in FEATURE_STAGES:
                feats.append(out)
        out = self.conv2(out)
        vec = self.avgpool(out).flatten(1)
        logits = self.classifier(vec)
        if not is_feat:
            return logits
        return feats + [vec], logits


def mobilenetv2_T_w(T: int, W: float, num_classes: int = 100) -> MobileNetV2:
    return MobileNetV2(T=T, width_mult=W, num_classes=num_classes)


def mobile_half(num_classes: int = 100) -> MobileNetV2:
    """The older repos' ``MobileNetV2``: expansion 6, width 0.5."""
    return mobilenetv2_T_w(6, 0.5, num_classes)


def mobilenet_v2_1_0(num_classes: int = 100) -> MobileNetV2:
    """``MobileNetV2_1_0``: expansion 6, width 1.0 (SimKD)."""
    return mobilenetv2_T_w(6, 1.0, num_classes)
