"""Paired, multi-seed studies of distillation objectives (protocol and study files: docs/EVIDENCE.md).

    python scripts/evidence.py list
    python scripts/evidence.py run resnet56_resnet8 --data_folder ./data      # a shipped study, or: run all
    python scripts/evidence.py run my_study.toml --data_folder ./data         # your own study file
    python scripts/evidence.py summarise resnet56_resnet8                    # from the raw runs so far
    python scripts/evidence.py estimate --smoke /tmp/smoke/resnet56_resnet8  # CPU-hours at full budget
    python scripts/evidence.py cost resnet56_resnet8_family                  # each row's step / kd's

A study is a TOML file: the shipped ones are experiments/studies/<name>.toml, named by <name>; any
other is given by its path and named by its file's stem. `run` trains the study's teacher, then
every (row, seed) student with the same seeds for every row, writing each finished run's raw JSON to
<results>/<study>/runs/ as it finishes, and the summary (summary.json, summary.md, curves.png,
forest.png) at the end. Run it again after an interruption: finished runs are skipped, an
interrupted one resumes from its last checkpoint. Budget overrides (--epochs, --teacher_epochs,
seeds beyond the declared ones, ...) are for smoke tests and need a --results folder outside
docs/results. `--seeds` with some of the declared seeds splits a study over processes: start the
second once teacher.json is written, give each other seeds; each summary covers every finished run
on disk. `--teacher_only` trains (or reuses) the teacher and stops. Arguments after `--` go to every
student run. `cost` times each row's training step interleaved with the reference row's on this
machine (experiments/step_cost.py) and writes <results>/<study>/cost.json, which the summary then
shows as a ratio to the reference; run it on a quiet machine, in one session, for every row at once.
"""
import argparse
import json
import os
import sys

import torch

from experiments.cost import estimate_hours, smoke_pair
from experiments.provenance import read_json
from experiments.runner import StudyRunner
from experiments.step_cost import row_step_costs
from experiments.study import Study, load_study, study_names, with_budget
from experiments.summary import COST_FILE, load_runs, summarise
from helper.run_folder import write_json_atomic
from helper.setup import select_device
from runtime.errors import ConfigError

EVIDENCE_RESULTS = os.path.join('docs', 'results')
# budget flag -> the with_budget key it overrides
BUDGET = {'epochs': 'student_epochs', 'lr_decay_epochs': 'student_lr_decay_epochs',
          'train_per_class': 'student_train_per_class', 'val_per_class': 'student_val_per_class',
          'val_split_per_class': 'student_val_split_per_class', 'seeds': 'seeds',
          'teacher_epochs': 'teacher_epochs', 'teacher_lr_decay_epochs': 'teacher_lr_decay_epochs',
          'teacher_train_per_class': 'teacher_train_per_class', 'teacher_val_per_class': 'teacher_val_per_class'}
STUDY_HELP = 'a shipped study\'s name (see list) or the path of a study file (.toml)'


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='command', required=True)
    sub.add_parser('list', help='the shipped studies')
    for name in ('run', 'summarise'):
        q = sub.add_parser(name)
        q.add_argument('study', help=STUDY_HELP + (', or all: every shipped one' if name == 'run' else ''))
        q.add_argument('--results', default=EVIDENCE_RESULTS, help='where the raw runs and summaries go')
        if name == 'run':
            q.add_argument('--work', default=os.path.join('save', 'evidence'),
                           help='run folders and checkpoints (keep the teacher checkpoints: the runs name their digest)')
            q.add_argument('--data_folder', default='./data')
            q.add_argument('--rows', nargs='+', default=None, help='a subset of the rows (default: all)')
            q.add_argument('--num_workers', type=int, default=1)
            q.add_argument('--teacher_only', action='store_true',
                           help='train (or reuse) the teacher and stop, e.g. on a GPU before the students run on CPUs')
            q.add_argument('--seeds', type=int, nargs='+',
                           help='some of the declared seeds (a share of the study), or others (a smoke budget)')
            smoke = q.add_argument_group('smoke budget (results outside docs/results only)')
            smoke.add_argument('--epochs', type=int, help='the students\' epochs')
            smoke.add_argument('--lr_decay_epochs', help='the students\' decay epochs, e.g. 1,2')
            smoke.add_argument('--train_per_class', type=int, help='the students\' training images per class')
            smoke.add_argument('--val_per_class', type=int, help='the students\' per-epoch test images per class')
            smoke.add_argument('--val_split_per_class', type=int,
                               help='the students\' per-epoch held-out training images per class')
            smoke.add_argument('--teacher_epochs', type=int)
            smoke.add_argument('--teacher_lr_decay_epochs')
            smoke.add_argument('--teacher_train_per_class', type=int)
            smoke.add_argument('--teacher_val_per_class', type=int, help='the teacher\'s per-epoch test images per class')
    q = sub.add_parser('cost', help="each row's training step timed against the reference row's")
    q.add_argument('study', help=STUDY_HELP)
    q.add_argument('--results', default=EVIDENCE_RESULTS, help='where cost.json goes (<results>/<study>/)')
    q.add_argument('--rows', nargs='+', default=None,
                   help='a subset of the rows (default: all but the reference), timed into an earlier pass '
                        'on this machine')
    q.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    q.add_argument('--repeats', type=int, default=15, help='interleaved steps per row and run')
    q.add_argument('--runs', type=int, default=3, help='interleaved runs per row (the ratio is their median)')
    q = sub.add_parser('estimate')
    q.add_argument('--smoke', required=True, help='a smoke run\'s <results>/<study> folder')
    q.add_argument('studies', nargs='*', help=STUDY_HELP + 's (default: every shipped one)')
    return p


def budgeted_study(args, study: Study) -> Study:
    """The study at the command's budget; overrides other than a subset of the declared seeds make
    smoke results, refused inside docs/results."""
    overrides = {key: getattr(args, flag) for flag, key in BUDGET.items()}
    if overrides['seeds'] is not None:
        overrides['seeds'] = tuple(overrides['seeds'])
    # a subset of the declared seeds splits the study over processes, not its budget
    split = overrides['seeds'] is not None and set(overrides['seeds']) <= set(study.seeds)
    overridden = [flag for flag, key in BUDGET.items() if overrides[key] is not None and not (key == 'seeds' and split)]
    if overridden and os.path.abspath(args.results).startswith(os.path.abspath(EVIDENCE_RESULTS)):
        raise ConfigError(f'budget overrides ({", ".join(overridden)}) make smoke results, not evidence; '
                          f'pass --results outside {EVIDENCE_RESULTS}')
    study = with_budget(study, **overrides)
    unknown = [r for r in args.rows or () if r not in study.rows]
    if unknown:
        raise ConfigError(f'unknown rows {unknown} for {study.name}; choose from {", ".join(study.rows)}')
    return study


def _run(args, extra) -> None:
    for name in study_names() if args.study == 'all' else [args.study]:
        study = budgeted_study(args, load_study(name))
        runner = StudyRunner(study, args.results, args.work, args.data_folder, args.num_workers, extra)
        if args.teacher_only:
            teacher = runner.teacher()
            print(f'{study.name}: teacher {teacher["model"]} {teacher["test_top1_full"]:.2f} on the full test set, '
                  f'{teacher["seconds"] / 60:.1f} min; checkpoint {teacher["checkpoint"]}')
            continue
        runner.run(args.rows)
        with open(os.path.join(args.results, study.name, 'summary.md')) as f:
            print(f.read())


def _summarise(args) -> None:
    study = load_study(args.study)
    folder = os.path.join(args.results, study.name)
    with open(os.path.join(folder, 'teacher.json')) as f:
        teacher = json.load(f)
    summarise(study, teacher, load_runs(folder), folder)
    with open(os.path.join(folder, 'summary.md')) as f:
        print(f.read())


def _cost(args) -> None:
    study = load_study(args.study)
    path = os.path.join(args.results, study.name, COST_FILE)
    if args.repeats < 1 or args.runs < 1:
        raise ConfigError(f'--repeats {args.repeats} --runs {args.runs}: give at least 1 of each')
    costs = row_step_costs(study, args.rows, device=cost_device(args.device), repeats=args.repeats, runs=args.runs)
    if args.rows and os.path.exists(path):
        costs = merged_costs(read_json(path), costs, study, path)
    write_json_atomic(costs, path)
    print(f'{study.name}: step / {study.reference} on {costs["machine"]}: '
          + ', '.join(f'{row} {r["ratio"]:.2f}' for row, r in costs['rows'].items()))


def cost_device(name: str) -> torch.device:
    """--device of `cost`, refused in one line when torch does not know it or it is absent."""
    try:
        return select_device(name)
    except RuntimeError:
        raise ConfigError(f'--device {name!r}: give cpu, cuda or cuda:N') from None


def merged_costs(earlier: dict, new: dict, study: Study, path: str) -> dict:
    """`new` rows timed into an earlier pass of the same study on the same machine (rows no longer
    in the study dropped); a pass on another machine or with other settings is refused: its
    ratios would not compare."""
    keys = ('reference', 'order', 'machine', 'device', 'batch_size', 'train_images', 'repeats', 'warmup')
    differ = [k for k in keys if earlier.get(k) != new[k]]
    if differ:
        raise ConfigError(f'{path} was timed with another {differ[0]} ({earlier.get(differ[0])!r}, now '
                          f'{new[differ[0]]!r}); time every row again without --rows')
    rows = {row: r for row, r in earlier['rows'].items() if row in study.rows}
    return dict(new, rows={row: new['rows'].get(row, rows.get(row)) for row in study.rows
                           if row in new['rows'] or row in rows})


def _estimate(args) -> None:
    with open(os.path.join(args.smoke, 'teacher.json')) as f:
        smoke = {'teacher': json.load(f), 'runs': load_runs(args.smoke)}
    ran = smoke_pair(smoke)
    for study in map(load_study, args.studies or study_names()):
        if (study.teacher.model, study.student.model) != ran:
            print(f'{study.name}: no estimate (the smoke ran {ran[0]} -> {ran[1]})')
            continue
        hours = estimate_hours(study, smoke)
        rows = ', '.join(f'{r} {h:.1f}' for r, h in hours['student_hours'].items())
        print(f'{study.name}: {hours["total_hours"]:.1f} CPU-hours (teacher {hours["teacher_hours"]:.1f}; '
              f'{len(study.seeds)} seeds per row: {rows})')


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index('--') + 1:] if '--' in argv else []
    argv = argv[:argv.index('--')] if '--' in argv else argv
    args = parser().parse_args(argv)
    try:
        if args.command == 'list':
            for study in map(load_study, study_names()):
                print(f'{study.name}: {study.teacher.model} -> {study.student.model}, seeds {list(study.seeds)}, '
                      f'rows {", ".join(study.rows)} ({study.notes})')
        elif args.command == 'run':
            _run(args, extra)
        elif args.command == 'summarise':
            _summarise(args)
        elif args.command == 'cost':
            _cost(args)
        else:
            _estimate(args)
    except ConfigError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    return 0
