"""Small building blocks shared by the model families (private to ``models``)."""
from __future__ import annotations

import math
from typing import List, Tuple

import torch
from torch import nn


class Stage(nn.Sequential):
    """An ``nn.Sequential`` of blocks whose last block can also return its pre-activation.

    ``stage(x)`` behaves like ``nn.Sequential``; ``stage(x, preact=True)`` returns
    ``(out, preact_of_last_block)``. Calling the stage through ``__call__`` in both cases keeps
    forward hooks on the stage itself working (a tap on it takes the first tensor of the tuple).
    State-dict keys are those of ``nn.Sequential`` (``<stage>.<index>.<...>``).
    """

    def forward(self, x, preact: bool = False):
        last = len(self) - 1
        for index, block in enumerate(self):
            if preact and index == last:
                return block(x, preact=True)
            x = block(x)
        return x


class ZooModel(nn.Module):
    """Interface shared by every model of the zoo.

    Subclasses set ``classifier_name`` (the module name of the final ``nn.Linear``) and
    implement ``block_layer_names()`` and ``forward(x, is_feat=False, preact=False)``, or take
    both from `StagedModel`.
    """

    classifier_name: str = 'fc'
    #: whether ``forward(..., preact=True)`` returns pre-ReLU stage features
    supports_preact: bool = True

    def get_classifier(self) -> nn.Linear:
        """The final ``nn.Linear`` (its input is the pooled vector, the last is_feat feature)."""
        return self.get_submodule(self.classifier_name)

    def block_layer_names(self) -> List[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_preact(self, preact: bool) -> None:
        if preact and not self.supports_preact:
            raise NotImplementedError(
                f'{type(self).__name__} has no pre-activation features; call it with preact=False')



class StagedModel(ZooModel):
    """A stem, stages of blocks, a pooled vector, the classifier: the forward and block names of
    the CIFAR ResNets, ResNet50, VGG, the ShuffleNets and the ImageNet ResNets / ShuffleNetV2.

    ``stage_names`` are the stage attributes, each a sequence of blocks (a `Stage`, or any
    sequential that returns ``(out, preact)`` for ``preact=True`` when the model supports it).
    ``stem_tap`` is the module whose output is the stem's (the first block-level layer).
    Subclasses override `_stem` (default conv1-bn1-relu), `_pooled` (default ``avgpool``) and
    `_enter_stage` (default nothing) where theirs differ.
    """

    stage_names: Tuple[str, ...] = ('layer1', 'layer2', 'layer3')
    stem_tap: str = 'relu'

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(self.conv1(x)))

    def _enter_stage(self, index: int, x: torch.Tensor, input_height: int) -> torch.Tensor:
        """What runs on ``x`` before stage ``index`` (VGG: its max-pools)."""
        return x

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier input from the last stage's output."""
        return self.avgpool(x).flatten(1)

    def block_layer_names(self) -> List[str]:
        names = [self.stem_tap]
        for stage in self.stage_names:
            names += [f'{stage}.{i}' for i in range(len(getattr(self, stage)))]
        return names

    def forward(self, x, is_feat: bool = False, preact: bool = False):
        """Logits, or ``(feats, logits)`` with ``is_feat``: the stem output, each stage output
        (post-ReLU, or its last block's pre-ReLU output with ``preact``), the pooled vector."""
        self._check_preact(preact)
        input_height = x.shape[2]
        x = self._stem(x)
        feats = [x]
        for index, name in enumerate(self.stage_names):
            x = self._enter_stage(index, x, input_height)
            stage = getattr(self, name)
            if preact:
                x, pre = stage(x, preact=True)
                feats.append(pre)
            else:
                x = stage(x)
                feats.append(x)
        vec = self._pooled(x)
        logits = self.get_classifier()(vec)
        if not is_feat:
            return logits
        return feats + [vec], logits

def init_conv_bn_fan_out(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, relu) convolutions, BN weight 1 / bias 0 (the older ResNets' init)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


def init_conv_normal_fan_out(model: nn.Module, linear_std=None) -> None:
    """Convolutions N(0, sqrt(2 / (k*k*out))), zero conv bias, BN 1 / 0, zero Linear bias;
    Linear weights N(0, linear_std) when given (the older WRN / MobileNetV2 init)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.data.normal_(0, math.sqrt(2.0 / n))
            if m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1)
            m.bias.data.zero_()
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                m.weight.data.normal_(0, linear_std)
            if m.bias is not None:
                m.bias.data.zero_()


def no_inplace_activations(model: nn.Module) -> None:
    """Make every in-place activation out-of-place (no state change): a tapped tensor is then
    never overwritten later in the forward pass."""
    for m in model.modules():
        if hasattr(m, 'inplace') and isinstance(m, (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU)):
            m.inplace = False


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def pooled(x: torch.Tensor) -> torch.Tensor:
    """Global average pool to a (N, C) vector."""
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
