"""Which CKA estimator should ckagroup use? Measure both on real data with a trained teacher.

    python scripts/measure_cka_estimators.py --path_t TEACHER.pth --dataset cifar10 --data_folder ./data \
        --model_s resnet8 --batches 10 --batch_size 64

For the biased and the debiased linear estimator, on `--batches` random training batches (eval
transforms), it prints:
- teacher: the spread of its off-diagonal layer-by-layer CKA (what the grouping has to work with),
  its groups for n = 4, and how often a single batch's groups equal the pooled ones;
- untrained student vs teacher, same images: the per-group CKA the loss starts from (the loss is
  1 - that, so a value near 1 leaves the loss nothing to do);
- control: untrained student vs teacher on *different* images (a shuffled batch), where the true
  similarity is 0: what each estimator reports for unrelated features.
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import models  # noqa: E402
from cka import (CKAAccumulator, block_masks, boundary_stability, contiguous_groups, even_split,  # noqa: E402
                 group_values)
from helper.checkpoint import load_teacher  # noqa: E402
from helper.setup import load_data  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--path_t', required=True)
    parser.add_argument('--dataset', default='cifar10')
    parser.add_argument('--data_folder', default='./data')
    parser.add_argument('--model_s', default='resnet8')
    parser.add_argument('--batches', type=int, default=10)
    parser.add_argument('--batch_size', type=int, default=64)
    parser.add_argument('--n_groups', type=int, default=4)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    args.train_per_class, args.val_per_class = None, None
    torch.manual_seed(args.seed)
    data = load_data(args, augment=False)
    teacher, arch = load_teacher(args.path_t, data.num_classes, args.dataset, torch.device('cpu'))
    student = models.build_model(args.model_s, data.num_classes).eval()
    num_t, num_s = len(teacher.block_layer_names()), len(student.block_layer_names())
    loader = torch.utils.data.DataLoader(data.train, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(args.seed))
    batches = []
    for index, (images, _) in enumerate(loader):
        if index == args.batches:
            break
        batches.append(images)
    with torch.no_grad():
        t_feats = [models.layer_outputs(teacher, x, 'blocks') for x in batches]
        s_feats = [models.layer_outputs(student, x, 'blocks') for x in batches]
    print(f'teacher {arch} ({num_t} block layers), untrained student {args.model_s} '
          f'({num_s}), {args.batches} batches of {args.batch_size} {args.dataset} training images')
    for debiased in (False, True):
        name = 'debiased' if debiased else 'biased'
        teacher_acc = CKAAccumulator(debiased=debiased, keep_per_batch=True)
        paired, control = CKAAccumulator(debiased=debiased), CKAAccumulator(debiased=debiased)
        for index, feats in enumerate(t_feats):
            teacher_acc.update(feats)
            paired.update(s_feats[index], feats)
            control.update(s_feats[(index + 1) % len(s_feats)], feats)  # other images: unrelated
        matrix = teacher_acc.matrix().numpy()
        off_diagonal = matrix[~np.eye(len(matrix), dtype=bool)]
        groups = contiguous_groups(matrix, args.n_groups)
        stability = boundary_stability([m.numpy() for m in teacher_acc.per_batch], args.n_groups, pooled=matrix)
        masks = block_masks(even_split(num_s, args.n_groups), groups)
        start = group_values(paired.matrix().float(), masks).numpy()
        unrelated = group_values(control.matrix().float(), masks).numpy()
        print(f'\n[{name}]')
        print(f'  teacher off-diagonal CKA: min {off_diagonal.min():.3f}, median {np.median(off_diagonal):.3f}, '
              f'max {off_diagonal.max():.3f}')
        print(f'  teacher groups (n={args.n_groups}): {groups}; single-batch groups equal the pooled ones '
              f'in {stability["exact_match"]:.0%} of batches, boundary agreement {stability["agreement"]}')
        print(f'  untrained student vs teacher, same images, group CKA: {[round(float(v), 3) for v in start]}')
        print(f'  control, different images (true value 0), group CKA: {[round(float(v), 3) for v in unrelated]}')


if __name__ == '__main__':
    main()
