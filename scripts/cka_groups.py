"""A teacher's CKA matrix, its contiguous groups and a heatmap, computed apart from training:

    python scripts/cka_groups.py --path_t CKPT --dataset D [--data_folder F] [--train_per_class N] \
        [--cka_groups N|auto] [--cka_layers blocks|stages] [--cka_estimator biased|debiased] \
        [--cka_kernel linear|rbf] [--cka_batches K] [--batch_size B] [--seed S] --out DIR

writes DIR/cka_groups.json (layer names, the teacher matrix, the groups, every setting, and how
stable the boundaries are across batches) and DIR/cka_groups.png (the matrix with layer names, a
colour bar and the groups outlined); train_student.py accepts the JSON as --cka_group_file. The
grouping flags are train_student.py's, with its defaults, and group the teacher as a run does.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import models  # noqa: E402
from cka import save_png, teacher_caption, teacher_figure  # noqa: E402
from dataset import DATASET_NAMES  # noqa: E402
from distiller_zoo.ckagroup import (GROUP_COMMAND, GROUPING_FLAGS, CKASettings, add_options,  # noqa: E402
                                    check_batch_size, compute_teacher_groups)
from helper.checkpoint import load_teacher  # noqa: E402
from helper.run_folder import GROUPS_FILE, GROUPS_PNG, write_json_atomic  # noqa: E402
from helper.setup import load_data, select_device  # noqa: E402
from helper.train import main  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(GROUP_COMMAND, description="a teacher's CKA matrix, its contiguous groups and a heatmap")
    p.add_argument('--path_t', required=True, help='teacher checkpoint')
    p.add_argument('--dataset', default='cifar100', choices=DATASET_NAMES)
    p.add_argument('--data_folder', default='./data')
    p.add_argument('--train_per_class', type=int, default=None)
    p.add_argument('--batch_size', type=int, default=64)
    add_options(p, only=GROUPING_FLAGS)
    p.add_argument('--seed', type=int, default=0, help='which random batches are drawn')
    p.add_argument('--device', default='auto')
    p.add_argument('--out', required=True, help='output folder')
    return p


def run(argv=None) -> dict:
    opt = parser().parse_args(argv)
    settings = CKASettings.from_options(opt)
    check_batch_size(opt.batch_size, settings.estimator)
    device = select_device(opt.device)
    data = load_data(opt, augment=False)
    teacher, arch = load_teacher(opt.path_t, data.num_classes, opt.dataset, device)
    names = models.layer_names(teacher, settings.layers, tuple(data.train[0][0].shape))
    record = compute_teacher_groups(
        teacher, settings, names, data.train, opt.batch_size, opt.seed, device,
        extra_settings={'teacher': arch, 'path_t': os.path.abspath(opt.path_t), 'dataset': opt.dataset})
    write_json_atomic(record, os.path.join(opt.out, GROUPS_FILE))
    save_png(teacher_figure(record['matrix'], record['layer_names'], record['groups'], title=f'{arch}: teacher CKA',
                            caption=teacher_caption(record['settings'])),
             os.path.join(opt.out, GROUPS_PNG))
    stability = record['stability']
    print(f'{arch}: {len(names)} {settings.layers.rstrip("s")}-level layers, groups {record["groups"]}')
    print(f'boundaries {stability["boundaries"]} recur in {stability["agreement"]} of '
          f'{stability["num_batches"]} single batches (exact match {stability["exact_match"]:.2f})')
    print(f'wrote {os.path.join(opt.out, GROUPS_FILE)} and {GROUPS_PNG}')
    return record


if __name__ == '__main__':
    sys.exit(main(run))
