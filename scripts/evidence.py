"""Paired, multi-seed evidence on whether CKA grouping matters (issue 17; protocol in docs/EVIDENCE.md).

    python scripts/evidence.py list
    python scripts/evidence.py run resnet56_resnet8 --data_folder ./data      # or: run all
    python scripts/evidence.py summarise resnet56_resnet8                    # from the raw runs so far
    python scripts/evidence.py estimate --smoke /tmp/smoke/resnet56_resnet8  # CPU-hours at full budget

`run` trains the comparison's teacher, then every (row, seed) student with the same seeds for every
row, writing each finished run's raw JSON to <results>/<comparison>/runs/ as it finishes, and the
summary (summary.json, summary.md, curves.png, forest.png) at the end. Run it again after an
interruption: finished runs are skipped, an interrupted one resumes from its last checkpoint.
Budget overrides (--epochs, --teacher_epochs, seeds beyond the declared ones, ...) are for smoke
tests and need a --results folder outside docs/results. `--seeds` with some of the declared seeds
splits a comparison over processes: start the second once teacher.json is written, give each other
seeds; each summary covers every finished run on disk. Arguments after `--` go to every student run.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helper import evidence  # noqa: E402
from runtime.errors import ConfigError  # noqa: E402

EVIDENCE_RESULTS = os.path.join('docs', 'results')
BUDGET = ('epochs', 'lr_decay_epochs', 'train_per_class', 'val_per_class', 'val_split_per_class', 'seeds',
          'teacher_epochs', 'teacher_lr_decay_epochs', 'teacher_train_per_class')


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='command', required=True)
    sub.add_parser('list', help='the declared comparisons')
    for name in ('run', 'summarise'):
        q = sub.add_parser(name)
        q.add_argument('comparison', choices=list(evidence.COMPARISONS) + (['all'] if name == 'run' else []))
        q.add_argument('--results', default=EVIDENCE_RESULTS, help='where the raw runs and summaries go')
        q.add_argument('--work', default=os.path.join('save', 'evidence'),
                       help='run folders and checkpoints (keep the teacher checkpoints: the runs name their digest)')
        q.add_argument('--data_folder', default='./data')
        if name == 'run':
            q.add_argument('--rows', nargs='+', default=None, help='a subset of the rows (default: all)')
            q.add_argument('--num_workers', type=int, default=1)
            q.add_argument('--epochs', type=int)
            q.add_argument('--lr_decay_epochs')
            q.add_argument('--train_per_class', type=int)
            q.add_argument('--val_per_class', type=int)
            q.add_argument('--val_split_per_class', type=int)
            q.add_argument('--seeds', type=int, nargs='+')
            q.add_argument('--teacher_epochs', type=int)
            q.add_argument('--teacher_lr_decay_epochs')
            q.add_argument('--teacher_train_per_class', type=int)
    q = sub.add_parser('estimate')
    q.add_argument('--smoke', required=True, help='a smoke run\'s <results>/<comparison> folder')
    return p


def _comparison(args, name):
    overrides = {k: getattr(args, k, None) for k in BUDGET}
    if overrides['seeds'] is not None:
        overrides['seeds'] = tuple(overrides['seeds'])
    declared = evidence.COMPARISONS[name].seeds
    # a subset of the declared seeds splits the comparison over processes, not its budget
    split = overrides['seeds'] is not None and set(overrides['seeds']) <= set(declared)
    overridden = {k: v for k, v in overrides.items() if v is not None and not (k == 'seeds' and split)}
    if overridden and os.path.abspath(args.results).startswith(os.path.abspath(EVIDENCE_RESULTS)):
        raise ConfigError(f'budget overrides ({", ".join(overridden)}) make smoke results, not evidence; '
                          f'pass --results outside {EVIDENCE_RESULTS}')
    comparison = evidence.with_budget(evidence.COMPARISONS[name], **overrides)
    if args.command == 'run' and args.rows:
        unknown = [r for r in args.rows if r not in comparison.rows]
        if unknown:
            raise ConfigError(f'unknown rows {unknown} for {name}; choose from {", ".join(comparison.rows)}')
    return comparison


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index('--') + 1:] if '--' in argv else []
    argv = argv[:argv.index('--')] if '--' in argv else argv
    args = parser().parse_args(argv)
    try:
        if args.command == 'list':
            for c in evidence.COMPARISONS.values():
                print(f'{c.name}: {c.teacher.model} -> {c.student}, seeds {list(c.seeds)}, rows {", ".join(c.rows)}'
                      f' ({c.notes})')
        elif args.command == 'run':
            names = list(evidence.COMPARISONS) if args.comparison == 'all' else [args.comparison]
            for name in names:
                comparison = _comparison(args, name)
                instrument = evidence.Instrument(comparison, args.results, args.work, args.data_folder,
                                                 args.num_workers, extra)
                instrument.run(args.rows)
                print(open(os.path.join(args.results, name, 'summary.md')).read())
        elif args.command == 'summarise':
            comparison = evidence.COMPARISONS[args.comparison]
            folder = os.path.join(args.results, args.comparison)
            teacher = json.load(open(os.path.join(folder, 'teacher.json')))
            evidence.summarise(comparison, teacher, evidence.load_runs(folder), folder)
            print(open(os.path.join(folder, 'summary.md')).read())
        else:
            smoke = {'teacher': json.load(open(os.path.join(args.smoke, 'teacher.json'))),
                     'runs': evidence.load_runs(args.smoke)}
            student = smoke['runs'][0]['argv'][smoke['runs'][0]['argv'].index('--model_s') + 1] if smoke['runs'] else None
            for c in evidence.COMPARISONS.values():
                if (c.teacher.model, c.student) != (smoke['teacher']['model'], student):
                    print(f'{c.name}: no estimate (the smoke ran {smoke["teacher"]["model"]} -> {student})')
                    continue
                hours = evidence.estimate_hours(c, smoke)
                rows = ', '.join(f'{r} {h:.1f}' for r, h in hours['student_hours'].items())
                print(f'{c.name}: {hours["total_hours"]:.1f} CPU-hours (teacher {hours["teacher_hours"]:.1f}; '
                      f'{len(c.seeds)} seeds per row: {rows})')
    except ConfigError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
