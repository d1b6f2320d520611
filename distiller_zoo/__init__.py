"""Distillation methods: name -> Distiller class, all with the interface of `base.Distiller`."""
import importlib

from distiller_zoo.base import Batch, DistillContext, Distiller, ModelOutputs
from distiller_zoo.kd import KD, kd_loss

__all__ = ['Batch', 'DistillContext', 'Distiller', 'KD', 'ModelOutputs', 'build_distiller',
           'distiller_class', 'distiller_names', 'kd_loss']

# Imported on demand so that one method's optional pieces never slow down or break another.
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
        from runtime.errors import ConfigError
        raise ConfigError(f'--distill {name} is not built yet; available: {", ".join(_REGISTRY)}')
    module, cls = _REGISTRY[name].split(':')
    return getattr(importlib.import_module(module), cls)


def build_distiller(name: str, ctx: DistillContext) -> Distiller:
    return distiller_class(name)(ctx)
