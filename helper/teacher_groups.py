"""`python -m helper.cka_groups`: a teacher's CKA matrix, its contiguous groups and a heatmap.

    python -m helper.cka_groups --path_t CKPT --dataset D [--data_folder F] \
        --n_groups N|auto --batches K --out DIR

writes DIR/cka_groups.json (layer names, the teacher matrix, the groups, every setting, and how
stable the boundaries are across batches) and DIR/cka_groups.png (the matrix with layer names, a
colour bar and the groups outlined). train_student.py --distill ckagroup runs the same code when
given no --cka_group_file, and accepts the JSON as --cka_group_file.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from dataset import DATASET_NAMES
from distiller_zoo.ckagroup import (GROUPS_FILE, LayerOutputs, compute_teacher_groups, min_cka_samples,
                                    parse_n_groups)
from helper.checkpoint import load_teacher
from helper.errors import ConfigError
from helper.heatmap import save_png, teacher_caption, teacher_figure
from helper.train import load_data, select_device


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser('python -m helper.cka_groups', description=__doc__.split('\n')[0])
    p.add_argument('--path_t', required=True, help='teacher checkpoint')
    p.add_argument('--dataset', default='cifar100', choices=DATASET_NAMES)
    p.add_argument('--data_folder', default='./data')
    p.add_argument('--train_per_class', type=int, default=None)
    p.add_argument('--n_groups', default='4', help="number of groups, or 'auto'")
    p.add_argument('--batches', type=int, default=10, help='training batches for minibatch CKA')
    p.add_argument('--batch_size', type=int, default=64)
    p.add_argument('--layers', default='blocks', choices=['blocks', 'stages'])
    p.add_argument('--estimator', default='debiased', choices=['biased', 'debiased'])
    p.add_argument('--kernel', default='linear', choices=['linear', 'rbf'])
    p.add_argument('--seed', type=int, default=0, help='which random batches are drawn')
    p.add_argument('--device', default='auto')
    p.add_argument('--out', required=True, help='output folder')
    return p


def run(argv=None) -> dict:
    opt = parser().parse_args(argv)
    n_groups = parse_n_groups(opt.n_groups, '--n_groups')
    if opt.batches < 1:
        raise ConfigError(f'--batches {opt.batches}: give at least 1 batch')
    needed = min_cka_samples(opt.estimator)
    if opt.batch_size < needed:
        raise ConfigError(f'--batch_size {opt.batch_size}: the {opt.estimator} CKA estimator needs at least '
                          f'{needed} images per batch; raise --batch_size')
    device = select_device(opt.device)
    opt.num_workers = 0
    data = load_data(opt, augment=False)
    teacher, arch = load_teacher(opt.path_t, data.num_classes, opt.dataset, device)
    layers = LayerOutputs(teacher, opt.layers, tuple(data.train[0][0].shape))
    record = compute_teacher_groups(
        teacher, layers, data.train, n_groups, opt.batches, opt.batch_size,
        opt.kernel, opt.estimator == 'debiased', opt.seed, device,
        extra_settings={'teacher': arch, 'path_t': os.path.abspath(opt.path_t), 'dataset': opt.dataset})
    os.makedirs(opt.out, exist_ok=True)
    with open(os.path.join(opt.out, GROUPS_FILE), 'w') as f:
        json.dump(record, f, indent=1)
    save_png(teacher_figure(record['matrix'], record['layer_names'], record['groups'], title=f'{arch}: teacher CKA',
                            caption=teacher_caption(record['settings'])),
             os.path.join(opt.out, 'cka_groups.png'))
    stability = record['stability']
    print(f'{arch}: {len(layers)} {opt.layers.rstrip("s")}-level layers, groups {record["groups"]}')
    print(f'boundaries {stability["boundaries"]} recur in {stability["agreement"]} of '
          f'{stability["num_batches"]} single batches (exact match {stability["exact_match"]:.2f})')
    print(f'wrote {os.path.join(opt.out, GROUPS_FILE)} and cka_groups.png')
    return record


def main(argv=None) -> int:
    try:
        run(argv)
    except ConfigError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    return 0
