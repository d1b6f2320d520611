"""Per-layer feature taps: record the outputs of named submodules in one forward pass.

    with FeatureTap(model, model.block_layer_names()) as tap:
        logits = model(x)
    feats = tap.outputs          # list of tensors, in names order

Works on any ``nn.Module``: names are those of ``module.named_modules()`` / ``get_submodule``.
The hooks only read: outputs, parameters and BN statistics are exactly those of the same forward
without the tap. Recorded tensors are *not* detached (a loss on a student's tapped features
back-propagates); call ``clear()`` to drop them. If a hooked module returns a tuple / list, its
first tensor is recorded; if a module runs several times in one pass, its last output is kept.
An in-place operation applied later in the pass to a recorded tensor changes it too; the models
of this zoo use no in-place operations on their block-level outputs.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Union

import torch
from torch import nn

_MISSING = object()


def _first_tensor(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    return output


class FeatureTap:
    """Forward hooks on ``module``'s submodules ``names``; ``.outputs`` in ``names`` order."""

    def __init__(self, module: nn.Module, names: Union[str, Iterable[str]]):
        self.names: List[str] = [names] if isinstance(names, str) else list(names)
        targets, unknown = [], []
        for name in self.names:
            try:
                targets.append(module.get_submodule(name))
            except AttributeError:
                unknown.append(name)
        if unknown:
            raise ValueError(f'FeatureTap: no submodule named {", ".join(map(repr, unknown))} in '
                             f'{type(module).__name__}; use names from model.named_modules() '
                             '(e.g. model.block_layer_names())')
        self._slots: list = [_MISSING] * len(self.names)
        self._handles = [target.register_forward_hook(self._make_hook(index))
                         for index, target in enumerate(targets)]

    def _make_hook(self, index: int):
        def hook(_module, _inputs, output):
            self._slots[index] = _first_tensor(output)
        return hook

    @property
    def outputs(self) -> List[torch.Tensor]:
        """Outputs of the latest forward pass through each named module, in ``names`` order."""
        missing = [n for n, v in zip(self.names, self._slots) if v is _MISSING]
        if missing:
            raise RuntimeError(f'FeatureTap: nothing recorded for {", ".join(map(repr, missing))}; '
                               'run a forward pass through them first (after the last clear())')
        return list(self._slots)

    def as_dict(self) -> Dict[str, torch.Tensor]:
        return dict(zip(self.names, self.outputs))

    def clear(self) -> None:
        """Forget the recorded outputs (the hooks stay)."""
        self._slots = [_MISSING] * len(self.names)

    def remove(self) -> None:
        """Remove the hooks (idempotent); already recorded outputs stay readable."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def __len__(self) -> int:
        return len(self.names)

    def __enter__(self) -> 'FeatureTap':
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = 'active' if self._handles else 'removed'
        return f'FeatureTap({len(self.names)} layers, {state})'
