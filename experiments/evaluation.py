"""The reported number of a run: its last checkpoint, deployed as its method deploys it, evaluated
on the full test set in float32."""
import importlib
from typing import Optional

import torch

import models
from dataset import build_datasets
from distiller_zoo import Distiller, distiller_class
from helper.checkpoint import load_checkpoint
from helper.loops import validate
from runtime.errors import ConfigError

# methods that predict through a head of their own: how the final evaluation rebuilds the deployed
# student from the checkpoint's 'deploy' entry ('module:function' taking the student and that entry)
DEPLOYED_HEADS = {'simkd': 'distiller_zoo.simkd:load_simkd_inference'}
EVAL_BATCH = 256  # the final evaluation's batch (eval-mode BN: the result does not depend on it)


def has_rebuildable_head(method: str) -> bool:
    """Whether the final evaluation can rebuild what `--distill method` deploys: the student alone,
    or a head of its own listed in DEPLOYED_HEADS."""
    method_class = distiller_class(method)
    own_head = (method_class.student_logits is not Distiller.student_logits
                or method_class.predict is not Distiller.predict)
    return not own_head or method in DEPLOYED_HEADS


def evaluate_checkpoint(path: str, dataset: str, data_folder: str, batch_size: int,
                        train_per_class: Optional[int] = None) -> dict:
    """Top-1/top-5 of a checkpoint's model as its method deploys it (the student alone, or with the
    head of its 'deploy' entry: SimKD's projector and the teacher's classifier) on the full test set
    (the numbers that are reported), with the sizes of that test set and of the training set the
    run used, and what was deployed."""
    ckpt = load_checkpoint(path)
    model = models.build_model(ckpt['arch'], num_classes=ckpt['num_classes'], dataset=dataset)
    model.load_state_dict(ckpt['model'])
    deployed = 'the model alone'
    if 'deploy' in ckpt:
        method = ckpt['deploy'].get('method')
        if method not in DEPLOYED_HEADS:
            raise ConfigError(f'{path!r} holds a deployed {method!r} head that the evaluation cannot rebuild; '
                              'add it to experiments.evaluation.DEPLOYED_HEADS')
        module, function = DEPLOYED_HEADS[method].split(':')
        model = getattr(importlib.import_module(module), function)(model, ckpt['deploy'])
        deployed = f'the model with the {method} head of the checkpoint\'s deploy entry'
    model.eval()
    data = build_datasets(dataset, data_folder, train_per_class=train_per_class, download=False)
    loader = torch.utils.data.DataLoader(data.val, batch_size=max(batch_size, EVAL_BATCH), shuffle=False)
    with torch.no_grad():
        result = validate(model, loader, torch.device('cpu'))
    return {'top1': float(result['top1']), 'top5': float(result['top5']), 'images': len(data.val),
            'train_images': len(data.train), 'deployed': deployed}
