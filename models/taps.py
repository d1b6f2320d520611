"""Per-layer feature taps: record the outputs of named submodules in one forward pass.

    with FeatureTap(model, model.block_layer_names()) as tap:
        logits = model(x)
    feats = tap.outputs          # list of tensors, in names order

`open_tap` is what the loops use: it also serves modules that must keep their hooks (`keep_tap`:
compiled modules).

Works on any ``nn.Module``: names are those of ``module.named_modules()`` / ``get_submodule``.
The hooks only read: outputs, parameters and BN statistics are exactly those of the same forward
without the tap. Recorded tensors are *not* detached (a loss on a student's tapped features
back-propagates); call ``clear()`` to drop them. If a hooked module returns a tuple / list, its
first tensor is recorded; if a module runs several times in one pass, its last output is kept.
An in-place operation applied later in the pass to a recorded tensor changes it too; the models
of this zoo use no in-place operations on their block-level outputs.
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Dict, Iterable, Iterator, List, Union

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


# Taps kept for a module's lifetime (keep_tap), by module.
_KEPT: 'weakref.WeakKeyDictionary[nn.Module, FeatureTap]' = weakref.WeakKeyDictionary()


def keep_tap(module: nn.Module, names: Iterable[str]) -> FeatureTap:
    """Attach a tap on ``names`` for ``module``'s lifetime; `open_tap` then uses it.

    Call it before the first call of a compiled module: torch.compile does not guard on the
    hooks of submodules, so a graph traced without hooks ignores hooks added later, and a tap
    opened around each forward would record nothing. Kept hooks are part of every trace."""
    names = list(names)
    kept = _KEPT.get(module)
    if kept is not None:
        if kept.names != names:
            raise ValueError(f'keep_tap: {type(module).__name__} already keeps a tap on other layers')
        return kept
    kept = _KEPT[module] = FeatureTap(module, names)
    return kept


@contextlib.contextmanager
def open_tap(module: nn.Module, names: Iterable[str]) -> Iterator[FeatureTap]:
    """A tap on ``names`` for the forward passes inside the block: the module's kept tap
    (cleared before and after) if it has one, else hooks attached for the block only. Read
    ``tap.outputs`` inside the block."""
    names = list(names)
    kept = _KEPT.get(module)
    if kept is None:
        with FeatureTap(module, names) as tap:
            yield tap
        return
    if kept.names != names:
        raise ValueError(f'open_tap: {type(module).__name__} keeps a tap on other layers '
                         f'({len(kept.names)}); a compiled module can only be tapped there')
    kept.clear()
    try:
        yield kept
    finally:
        kept.clear()  # drop the references to this pass's activations
