"""ImageNet models, built on ``torchvision.models`` (same state-dict layout as torchvision):
ResNet18/34, ``ResNet50@imagenet``, the double-width ResNet10x2/18x2/34x2, wrn_50_2,
resnext50_32x4d, MobileNetV2_Imagenet and ShuffleV2_Imagenet.

Only ``forward(x, is_feat=False, preact=False)``, ``block_layer_names()`` and ``get_classifier()``
are added. Activations are made out-of-place (no state involved) so tapped tensors are never
overwritten later in the pass. These models have no pre-activation features
(``preact=True`` raises ``NotImplementedError``), like the older repos' ImageNet models.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn
from torchvision.models import mobilenetv2 as tv_mobilenetv2
from torchvision.models import resnet as tv_resnet
from torchvision.models import shufflenetv2 as tv_shufflenetv2

from ._common import StagedModel, ZooModel, no_inplace_activations

_TV_WIDTHS = (64, 128, 256, 512)


class ImageNetResNet(StagedModel, tv_resnet.ResNet):
    """torchvision ResNet (optionally with other stage widths, e.g. the x2 models).

    ``forward(x, is_feat=True)`` -> ``([f0, f1, f2, f3, f4, pooled], logits)``: f0 the stem output
    after the max-pool (post-ReLU), f1..f4 the stage outputs.
    """

    classifier_name = 'fc'
    supports_preact = False
    stage_names = ('layer1', 'layer2', 'layer3', 'layer4')
    stem_tap = 'maxpool'  # the stem is tapped after its max-pool, = is_feat f0

    def __init__(self, block, layers: Sequence[int], num_classes: int = 1000,
                 widths: Sequence[int] = _TV_WIDTHS, **kwargs):
        tv_resnet.ResNet.__init__(self, block, list(layers), num_classes=num_classes, **kwargs)
        if tuple(widths) != _TV_WIDTHS:
            # torchvision fixes the stage widths; rebuild the stages with its own _make_layer.
            self.inplanes = 64
            self.layer1 = self._make_layer(block, widths[0], layers[0])
            self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
            self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
            self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
            self.fc = nn.Linear(widths[3] * block.expansion, num_classes)
            for m in (self.layer1, self.layer2, self.layer3, self.layer4):
                for sub in m.modules():
                    if isinstance(sub, nn.Conv2d):
                        nn.init.kaiming_normal_(sub.weight, mode='fan_out', nonlinearity='relu')
        no_inplace_activations(self)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


class _CollectSequential(nn.Sequential):
    """``nn.Sequential`` that can also return the outputs of chosen children (same keys)."""

    def forward(self, x, collect: Sequence[int] = ()):
        outs = []
        for index, module in enumerate(self):
            x = module(x)
            if index in collect:
                outs.append(x)
        return (x, outs) if collect else x


class ImageNetMobileNetV2(ZooModel, tv_mobilenetv2.MobileNetV2):
    """torchvision MobileNetV2. ``forward(x, is_feat=True)`` -> ``([f0, .., f4, pooled], logits)``:
    f0 the stem ``features.0``, f1..f4 the outputs of ``features.3 / 6 / 13 / 17``."""

    classifier_name = 'classifier.1'
    supports_preact = False
    FEATURE_INDICES = (0, 3, 6, 13, 17)

    def __init__(self, num_classes: int = 1000, **kwargs):
        tv_mobilenetv2.MobileNetV2.__init__(self, num_classes=num_classes, **kwargs)
        self.features = _CollectSequential(*self.features)
        no_inplace_activations(self)

    def block_layer_names(self) -> List[str]:
        """The stem ``features.0`` (conv-BN-ReLU6), then every inverted-residual block."""
        return [f'features.{i}' for i in range(len(self.features) - 1)]

    def forward(self, x, is_feat: bool = False, preact: bool = False):
        self._check_preact(preact)
        x, feats = self.features(x, collect=self.FEATURE_INDICES)
        vec = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        logits = self.classifier(vec)
        if not is_feat:
            return logits
        return feats + [vec], logits


class ImageNetShuffleNetV2(StagedModel, tv_shufflenetv2.ShuffleNetV2):
    """torchvision ShuffleNetV2. ``forward(x, is_feat=True)`` -> ``([f0, f1, f2, f3, pooled], logits)``:
    f0 the stem after its max-pool, f1..f3 the stage outputs, then the pooled ``conv5`` output."""

    classifier_name = 'fc'
    supports_preact = False
    stage_names = ('stage2', 'stage3', 'stage4')
    stem_tap = 'maxpool'  # stem conv1 (conv-BN-ReLU) + max-pool

    def __init__(self, stages_repeats: Sequence[int], stages_out_channels: Sequence[int],
                 num_classes: int = 1000):
        tv_shufflenetv2.ShuffleNetV2.__init__(self, list(stages_repeats), list(stages_out_channels),
                                              num_classes=num_classes)
        no_inplace_activations(self)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.conv1(x))

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv5(x).mean([2, 3])


def _resnet(name: str, block, layers, widths=_TV_WIDTHS, doc: str = '', **kwargs):
    def build(num_classes: int = 1000) -> ImageNetResNet:
        return ImageNetResNet(block, layers, num_classes=num_classes, widths=widths, **kwargs)
    build.__name__ = build.__qualname__ = name.replace('@', '_')
    build.__doc__ = doc
    return build


_BB, _BN = tv_resnet.BasicBlock, tv_resnet.Bottleneck
_X2 = (128, 256, 512, 1024)

ResNet18 = _resnet('ResNet18', _BB, [2, 2, 2, 2], doc='torchvision resnet18.')
ResNet34 = _resnet('ResNet34', _BB, [3, 4, 6, 3], doc='torchvision resnet34.')
ResNet50_imagenet = _resnet('ResNet50_imagenet', _BN, [3, 4, 6, 3],
                            doc='torchvision resnet50 (model_dict name ``ResNet50@imagenet``).')
ResNet10x2 = _resnet('ResNet10x2', _BB, [1, 1, 1, 1], _X2, doc='ResNet-10, double stage widths.')
ResNet18x2 = _resnet('ResNet18x2', _BB, [2, 2, 2, 2], _X2, doc='ResNet-18, double stage widths.')
ResNet34x2 = _resnet('ResNet34x2', _BB, [3, 4, 6, 3], _X2, doc='ResNet-34, double stage widths.')
wrn_50_2 = _resnet('wrn_50_2', _BN, [3, 4, 6, 3], width_per_group=128, doc='torchvision wide_resnet50_2.')
resnext50_32x4d = _resnet('resnext50_32x4d', _BN, [3, 4, 6, 3], groups=32, width_per_group=4,
                          doc='torchvision resnext50_32x4d.')


def MobileNetV2_Imagenet(num_classes: int = 1000) -> ImageNetMobileNetV2:
    """torchvision mobilenet_v2 (width 1.0)."""
    return ImageNetMobileNetV2(num_classes=num_classes)


def ShuffleV2_Imagenet(num_classes: int = 1000) -> ImageNetShuffleNetV2:
    """torchvision shufflenet_v2_x1_0 layout."""
    return ImageNetShuffleNetV2([4, 8, 4], [24, 116, 232, 464, 1024], num_classes=num_classes)
