"""Does ckagroup bring the student closer to the teacher? One comparison, end to end.

    python scripts/evidence.py --path_t TEACHER.pth --dataset cifar10 --data_folder ./data \
        --model_s resnet8 --train_per_class 500 --epochs 5 --lr_decay_epochs 3,4 \
        --seeds 0 1 2 --ablation_seeds 0 --out results/cifar10_10pct

With the same teacher, data, schedule and seeds it trains the student alone (CE), KD, ckagroup
(CE + KD + beta x CKA-group term), SemCKD, and the ablations that tell whether the CKA grouping
itself matters: even teacher groups instead of CKA groups, reversed pairing, the biased estimator,
and 1 group instead of 4 (the default rows); `--rows` also offers every other classic method at its
published weights (hint, attention, similarity, vid, crd, srrl, simkd). Main rows (student, kd, ckagroup) run for every --seeds value, the other
rows for --ablation_seeds. Finished runs are reused, so an interrupted comparison continues.

Writes OUT/results.json and OUT/results.md (last-epoch and best top-1 as mean ± std over seeds,
mean epoch time, the monitored mean group CKA at the last epoch) and OUT/cka_matrices.png (the
teacher's matrix with its groups, then each row's final student x teacher matrix).
Any further arguments after `--` go to every train_student.py run.
"""
import argparse
import json
import os
import statistics
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helper.heatmap import matrices_figure, save_png, teacher_caption  # noqa: E402
from helper.train import run_student  # noqa: E402

MAIN_ROWS = ('student', 'kd', 'ckagroup')
# row -> the train_student.py arguments that define it
ROWS = {
    'student': ['--distill', 'kd', '-c', '1', '-d', '0', '-b', '0'],
    'kd': ['--distill', 'kd', '-c', '1', '-d', '1', '-b', '0'],
    'ckagroup': ['--distill', 'ckagroup', '-c', '1', '-d', '1', '-b', '5'],
    'semckd': ['--distill', 'semckd', '-c', '1', '-d', '1', '-b', '400'],
    # the other classic methods at their published weights (for a table of every method)
    'hint': ['--distill', 'hint', '-c', '1', '-d', '1', '-b', '100'],
    'attention': ['--distill', 'attention', '-c', '1', '-d', '1', '-b', '1000'],
    'similarity': ['--distill', 'similarity', '-c', '1', '-d', '1', '-b', '3000'],
    'vid': ['--distill', 'vid', '-c', '1', '-d', '1', '-b', '1'],
    'crd': ['--distill', 'crd', '-c', '1', '-d', '1', '-b', '0.8'],
    'srrl': ['--distill', 'srrl', '-c', '1', '-d', '1', '-b', '1'],
    'simkd': ['--distill', 'simkd', '-c', '0', '-d', '0', '-b', '1'],
    'ckagroup_even_teacher_groups': ['--distill', 'ckagroup', '-c', '1', '-d', '1', '-b', '5',
                                     '--cka_teacher_split', 'even'],
    'ckagroup_reversed_pairing': ['--distill', 'ckagroup', '-c', '1', '-d', '1', '-b', '5',
                                  '--cka_pairing', 'reversed'],
    'ckagroup_biased': ['--distill', 'ckagroup', '-c', '1', '-d', '1', '-b', '5',
                        '--cka_estimator', 'biased'],
    'ckagroup_1_group': ['--distill', 'ckagroup', '-c', '1', '-d', '1', '-b', '5', '--cka_groups', '1'],
}


def mean_std(values):
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(mean, std):
    return '–' if mean is None else f'{mean:.2f} ± {std:.2f}'


def run_one(args, row, seed, extra):
    trial = f'{row}-seed{seed}'
    argv = (['--path_t', args.path_t, '--dataset', args.dataset, '--data_folder', args.data_folder,
             '--model_s', args.model_s, '--epochs', str(args.epochs), '--lr_decay_epochs', args.lr_decay_epochs,
             '--learning_rate', str(args.learning_rate), '--batch_size', str(args.batch_size),
             '--num_workers', str(args.num_workers), '--seed', str(seed), '--trial', trial,
             '--save_dir', os.path.join(args.out, 'runs'), '--skip-validation', '--print_freq', '1000']
            + (['--train_per_class', str(args.train_per_class)] if args.train_per_class else [])
            + ROWS[row] + extra)
    students = os.path.join(args.out, 'runs', 'students')
    done = [d for d in (os.listdir(students) if os.path.isdir(students) else [])
            if d.endswith('_' + trial) and os.path.exists(os.path.join(students, d, 'summary.json'))
            and json.load(open(os.path.join(students, d, 'options.json')))['distill'] == ROWS[row][1]]
    if not done:
        print(f'== {row}, seed {seed}', flush=True)
        run_student(argv)
        done = [d for d in os.listdir(students) if d.endswith('_' + trial)]
    run_dir = os.path.join(students, done[0])
    with open(os.path.join(run_dir, 'summary.json')) as f:
        summary = json.load(f)
    with open(os.path.join(run_dir, 'metrics.json')) as f:
        history = json.load(f)
    return {'row': row, 'seed': seed, 'run_dir': run_dir, 'last_top1': summary['last_top1'],
            'best_top1': summary['best_top1'], 'epoch_time': statistics.fmean(h['time'] for h in history),
            'step_ms': 1000 * args.batch_size / statistics.fmean(h['train/images_per_s'] for h in history),
            'monitor_group_mean': history[-1].get('monitor/group_mean'),
            'monitor_groups': [history[-1][k] for k in sorted(history[-1]) if k.startswith('monitor/group_')
                               and k != 'monitor/group_mean']}


def figure(results, out_path):
    """The teacher's matrix and each row's final monitored student x teacher matrix (first seed)."""
    panels, teacher = [], None
    for row in ROWS:
        runs = [r for r in results if r['row'] == row]
        if not runs:
            continue
        run_dir = runs[0]['run_dir']
        groups_file = os.path.join(run_dir, 'cka_groups.json')
        if teacher is None and os.path.exists(groups_file):
            with open(groups_file) as f:
                teacher = json.load(f)
        monitor_file = os.path.join(run_dir, 'cka_monitor.json')
        if os.path.exists(monitor_file):
            with open(monitor_file) as f:
                last = json.load(f)[-1]
            panels.append(dict(last, title=f'{row}\nseed {runs[0]["seed"]}, epoch {last["epoch"]}'))
    if teacher is None or not panels:
        return
    save_png(matrices_figure(teacher, panels, caption=teacher_caption(teacher['settings'])), out_path)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index('--') + 1:] if '--' in argv else []
    argv = argv[:argv.index('--')] if '--' in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--path_t', required=True)
    parser.add_argument('--dataset', default='cifar10')
    parser.add_argument('--data_folder', default='./data')
    parser.add_argument('--model_s', default='resnet8x4')
    parser.add_argument('--train_per_class', type=int, default=None)
    parser.add_argument('--epochs', type=int, default=240)
    parser.add_argument('--lr_decay_epochs', default='150,180,210')
    parser.add_argument('--learning_rate', type=float, default=0.05)
    parser.add_argument('--batch_size', type=int, default=64)
    parser.add_argument('--num_workers', type=int, default=2)
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    parser.add_argument('--ablation_seeds', type=int, nargs='+', default=[0])
    parser.add_argument('--rows', nargs='+', default=[r for r in ROWS if r in MAIN_ROWS or r == 'semckd'
                                                      or r.startswith('ckagroup_')], choices=list(ROWS))
    parser.add_argument('--out', required=True)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    results = []
    for row in args.rows:
        for seed in (args.seeds if row in MAIN_ROWS else args.ablation_seeds):
            results.append(run_one(args, row, seed, extra))
    table = ['| row | seeds | last-epoch top-1 | best top-1 | epoch time (s) | ms/step | monitored group CKA (last epoch) |',
             '|---|---|---|---|---|---|---|']
    summary = {}
    for row in args.rows:
        runs = [r for r in results if r['row'] == row]
        last, best = mean_std([r['last_top1'] for r in runs]), mean_std([r['best_top1'] for r in runs])
        cka = [r['monitor_group_mean'] for r in runs if r['monitor_group_mean'] is not None]
        summary[row] = {'seeds': [r['seed'] for r in runs], 'last_top1': last, 'best_top1': best,
                        'epoch_time': statistics.fmean(r['epoch_time'] for r in runs),
                        'step_ms': statistics.fmean(r['step_ms'] for r in runs),
                        'monitor_group_mean': statistics.fmean(cka) if cka else None,
                        'monitor_groups': np.mean([r['monitor_groups'] for r in runs], axis=0).tolist()
                        if runs and runs[0]['monitor_groups'] else None}
        table.append(f'| {row} | {len(runs)} | {fmt(*last)} | {fmt(*best)} | {summary[row]["epoch_time"]:.1f} | {summary[row]["step_ms"]:.0f} | '
                     + (f'{summary[row]["monitor_group_mean"]:.3f}' if cka else '–') + ' |')
    with open(os.path.join(args.out, 'results.json'), 'w') as f:
        json.dump({'settings': vars(args), 'extra_args': extra, 'rows': summary, 'runs': results}, f, indent=1)
    with open(os.path.join(args.out, 'results.md'), 'w') as f:
        f.write('\n'.join(table) + '\n')
    figure(results, os.path.join(args.out, 'cka_matrices.png'))
    print('\n'.join(table))


if __name__ == '__main__':
    main()
