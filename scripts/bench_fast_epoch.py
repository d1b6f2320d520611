"""Images/s of a whole training epoch, classic against fast options, for kd and ckagroup.

    python scripts/bench_fast_epoch.py [--teacher resnet32x4 --student resnet8x4 --dataset cifar10
        --data_folder ./data --train_per_class 500 --epochs 2 --batch_size 64 --device cuda]

Each configuration is a real train_student.py run (data loading, teacher and student forward,
losses, backward, optimiser step; the epoch time of the training loop, evaluation excluded) from an
untrained teacher checkpoint written here (speed does not depend on the teacher's weights; the CKA
groups then come from its untrained matrix). The classic path is the PIL DataLoader with
--num_workers workers in float32; the fast one adds --data_on_device --amp --channels_last, and
on a GPU --compile reduce-overhead (torch.compile with CUDA graphs); --fast_args replaces that
list. The rate of the last epoch is reported, so compilation in the first one is left out: use
--epochs 2 at least with --compile. The last column is the final test top-1 of each run (short
runs: only a sanity check that the fast path trains as well).

Prints one table row per method and configuration and a final line of fast/classic ratios.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import models  # noqa: E402
from dataset import build_datasets  # noqa: E402
from helper.loops import cpu_has_native_bf16  # noqa: E402
from helper.train import run_student  # noqa: E402


def write_teacher(name: str, dataset: str, data_folder: str, folder: str) -> str:
    num_classes = build_datasets(dataset, data_folder, download=False).num_classes
    torch.manual_seed(0)
    model = models.build_model(name, num_classes=num_classes, dataset=dataset)
    path = os.path.join(folder, f'{name}_untrained.pth')
    torch.save({'model': model.state_dict(), 'arch': models.resolve_model_name(name, dataset),
                'dataset': dataset, 'num_classes': num_classes, 'epoch': 0}, path)
    return path


def run(args, teacher: str, method: str, label: str, extra: list, save: str) -> dict:
    argv = ['--path_t', teacher, '--model_s', args.student, '--dataset', args.dataset,
            '--data_folder', args.data_folder, '--distill', method, '-b', '1' if method == 'ckagroup' else '0',
            '--epochs', str(args.epochs), '--lr_decay_epochs', str(args.epochs + 1),
            '--batch_size', str(args.batch_size), '--num_workers', str(args.num_workers),
            '--device', args.device, '--trial', label, '--save_dir', save, '--skip-validation',
            '--no-cka_monitor', '--print_freq', '100000', '--seed', '0']
    if args.train_per_class:
        argv += ['--train_per_class', str(args.train_per_class)]
    print(f'== {method}, {label}: {" ".join(extra) or "(classic)"}', flush=True)
    run_student(argv + extra)
    students = os.path.join(save, 'students')
    folder = next(d for d in os.listdir(students) if d.endswith('_' + label) and f'_{method}_' in d)
    with open(os.path.join(students, folder, 'metrics.json')) as f:
        last = json.load(f)[-1]
    return {'images_per_s': last['train/images_per_s'], 'epoch_s': last['time'], 'top1': last['test/top1']}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--teacher', default='resnet32x4')
    parser.add_argument('--student', default='resnet8x4')
    parser.add_argument('--dataset', default='synthetic')
    parser.add_argument('--data_folder', default='./data')
    parser.add_argument('--train_per_class', type=int, default=None)
    parser.add_argument('--epochs', type=int, default=2)
    parser.add_argument('--batch_size', type=int, default=64)
    parser.add_argument('--num_workers', type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--methods', nargs='+', default=['kd', 'ckagroup'])
    parser.add_argument('--fast_args', default=None,
                        help='the fast options as one string (default: --data_on_device --amp '
                             '--channels_last, plus --compile reduce-overhead on CUDA)')
    parser.add_argument('--out', default=None, help='keep the run folders here (default: a temporary folder)')
    parser.add_argument('--json', default=None, help='also write every figure to this JSON file')
    args = parser.parse_args()
    fast = (args.fast_args.split() if args.fast_args is not None else
            ['--data_on_device', '--amp', '--channels_last']
            + (['--compile', 'reduce-overhead'] if args.device.startswith('cuda') else []))
    save = args.out or tempfile.mkdtemp(prefix='bench_fast_')
    os.makedirs(save, exist_ok=True)
    try:
        teacher = write_teacher(args.teacher, args.dataset, args.data_folder, save)
        results = {(m, label): run(args, teacher, m, label, extra, save)
                   for m in args.methods for label, extra in (('classic', []), ('fast', fast))}
    finally:
        if args.out is None:
            shutil.rmtree(save, ignore_errors=True)
    if args.device.startswith('cuda'):
        device = torch.cuda.get_device_name()
    else:
        bf16 = 'native bf16' if cpu_has_native_bf16() else 'no native bf16: --amp is emulated'
        device = (f'CPU capability {torch.backends.cpu.get_cpu_capability()} ({bf16}), '
                  f'{torch.get_num_threads()} threads, {args.num_workers} loader workers')
    print(f'\n{args.teacher} -> {args.student}, {args.dataset}, batch {args.batch_size}, {device}, '
          f'torch {torch.__version__}; fast = {" ".join(fast)}')
    print(f'{"method":10s} {"path":8s} {"images/s":>10s} {"epoch s":>9s} {"top-1":>7s}  machine')
    for (method, label), r in results.items():
        print(f'{method:10s} {label:8s} {r["images_per_s"]:10.0f} {r["epoch_s"]:9.1f} {r["top1"]:7.2f}  {device}')
    ratios = {m: results[(m, 'fast')]['images_per_s'] / results[(m, 'classic')]['images_per_s']
              for m in args.methods}
    print('fast/classic images per second: ' + ', '.join(f'{m} {r:.2f}x' for m, r in ratios.items())
          + f' [{device}]')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'machine': device, 'torch': torch.__version__, 'teacher': args.teacher,
                       'student': args.student, 'dataset': args.dataset, 'batch_size': args.batch_size,
                       'fast_args': fast, 'runs': [{'method': m, 'path': label, **r}
                                                   for (m, label), r in results.items()],
                       'fast_over_classic': ratios}, f, indent=1)


if __name__ == '__main__':
    main()
