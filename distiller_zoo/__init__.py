"""Distillation methods: name -> Distiller class, all with the interface of `base.Distiller`.

A new method is one line of `_REGISTRY` (its `--distill` name, its module and class); its flags
come with its class (`add_options`), see docs/ARCHITECTURE.md.
"""
import importlib

from distiller_zoo.base import Batch, DistillContext, Distiller, ModelOutputs
from distiller_zoo.kd import KD, kd_loss
from runtime.errors import ConfigError

__all__ = ['Batch', 'DistillContext', 'Distiller', 'KD', 'ModelOutputs', 'build_distiller',
           'distiller_class', 'distiller_names', 'kd_loss']

# `--distill` name -> 'module:Class', in the order of the --distill choices; imported on demand.
_REGISTRY = {
    'kd': 'distiller_zoo.kd:KD',
    'hint': 'distiller_zoo.fitnet:HintDistiller',
    'attention': 'distiller_zoo.attention:AttentionDistiller',
    'similarity': 'distiller_zoo.similarity:SimilarityDistiller',
    'vid': 'distiller_zoo.vid:VIDDistiller',
    'crd': 'distiller_zoo.crd:CRDDistiller',
    'semckd': 'distiller_zoo.semckd:SemCKDDistiller',
    'srrl': 'distiller_zoo.srrl:SRRLDistiller',
    'simkd': 'distiller_zoo.simkd:SimKDDistiller',
    'ckagroup': 'distiller_zoo.ckagroup:CKAGroupDistiller',
}


def distiller_names() -> tuple:
    return tuple(_REGISTRY)


def distiller_class(name: str) -> type:
    if name not in _REGISTRY:
        raise ConfigError(f'--distill {name} is not built yet; available: {", ".join(_REGISTRY)}')
    module, cls = _REGISTRY[name].split(':')
    return getattr(importlib.import_module(module), cls)


def build_distiller(name: str, ctx: DistillContext) -> Distiller:
    return distiller_class(name)(ctx)
