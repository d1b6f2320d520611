"""The --cka_* settings, declared once and parsed by one function into `CKASettings`, which the
CKA-group term, the teacher-group precompute (and its command, scripts/cka_groups.py) and the CKA
monitor of every method take.

Every value that needs neither models nor data is refused here, in one line naming the flag:
`CKASettings.from_options` runs when train_student.py's options are parsed (whatever --distill:
the monitor groups with them too) and again to build the one settings object of a run.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

import models
from cka import KERNELS, REDUCTIONS, min_cka_samples
from runtime.errors import ConfigError

# The flags of the group command: what grouping a teacher needs.
GROUPING_FLAGS = ('cka_groups', 'cka_batches', 'cka_layers', 'cka_estimator', 'cka_kernel')
# The monitor's own flags, which train_student.py lists among its common flags.
MONITOR_FLAGS = ('cka_monitor', 'cka_monitor_batches')
GROUP_COMMAND = 'python scripts/cka_groups.py'


def add_options(parser, only: Optional[Sequence[str]] = None, exclude: Sequence[str] = ()) -> None:
    """Every --cka_* flag with its default, or those named in `only`, less those in `exclude`."""
    def add(flag, **kwargs):
        if (only is None or flag[2:] in only) and flag[2:] not in exclude:
            parser.add_argument(flag, **kwargs)

    add('--cka_groups', type=str, default='4', help="number of layer groups n, or 'auto'")
    add('--cka_group_file', type=str, default=None,
        help=f'cka_groups.json from {GROUP_COMMAND} (instead of grouping the teacher here)')
    add('--cka_batches', type=int, default=10, help='training batches used to compute the teacher groups')
    add('--cka_layers', type=str, default='blocks', choices=list(models.LAYER_KINDS))
    add('--cka_estimator', type=str, default='debiased', choices=['biased', 'debiased'])
    add('--cka_kernel', type=str, default='linear', choices=list(KERNELS))
    add('--cka_student_split', type=str, default='even', choices=['even', 'proportional'])
    add('--cka_teacher_split', type=str, default='cka', choices=['cka', 'even', 'random'],
        help="teacher groups from its CKA matrix, or (ablations) 'even': uniform groups, "
             "'random': a random contiguous partition drawn from --seed")
    add('--cka_pairing', type=str, default='forward', choices=['forward', 'reversed'],
        help="student group i with teacher group i, or 'reversed' (ablation: with group n-1-i)")
    add('--cka_reduce', type=str, default='mean', choices=list(REDUCTIONS))
    add('--cka_agg', type=str, default='mean', choices=['mean', 'sum', 'weighted'])
    add('--cka_weights', type=str, default=None, help='comma list of n group weights for --cka_agg weighted')
    add('--cka_compile', type=str, default='auto', choices=['auto', 'on', 'off'],
        help="compile the CKA term as one graph (torch.compile; falls back to eager with a note "
             "if that fails): 'auto' on CUDA and under --compile")
    add('--cka_gather', action='store_true',
        help='distributed runs: compute the CKA term on the global batch (every tapped layer output '
             "is all-gathered, with gradient) instead of on each process's own batch")
    add('--cka_monitor', action=argparse.BooleanOptionalAction, default=True,
        help='log the student x teacher CKA matrix on held-out batches each epoch, for any method '
             '(with the --distill ckagroup grouping options)')
    add('--cka_monitor_batches', type=int, default=4,
        help='held-out validation batches (of --batch_size) the monitor measures on')


def _defaults() -> dict:
    parser = argparse.ArgumentParser(add_help=False)
    add_options(parser)
    return vars(parser.parse_args([]))


@dataclass(frozen=True)
class CKASettings:
    """The --cka_* options of a run, parsed (see `add_options` for each one's meaning)."""

    n_groups: Optional[int]  # None: 'auto'
    group_file: Optional[str]
    batches: int
    layers: str
    estimator: str
    kernel: str
    student_split: str
    teacher_split: str
    pairing: str
    reduce: str
    agg: str
    weights: Optional[Tuple[float, ...]]  # with --cka_agg weighted
    compile: str
    gather: bool
    monitor: bool
    monitor_batches: int

    @property
    def debiased(self) -> bool:
        return self.estimator == 'debiased'

    @classmethod
    def from_options(cls, opt) -> 'CKASettings':
        """The settings of `opt`'s --cka_* values (a flag the command does not declare: its
        default), each bad one refused in one line naming the flag."""
        values = {**_defaults(), **{k: v for k, v in vars(opt).items() if k.startswith('cka_')}}
        n = parse_n_groups(values['cka_groups'])
        if values['cka_batches'] < 1:
            raise ConfigError(f'--cka_batches {values["cka_batches"]}: give at least 1 batch')
        group_file = values['cka_group_file']
        if group_file is not None and not os.path.isfile(group_file):
            raise ConfigError(f'--cka_group_file {group_file!r} does not exist; write one with {GROUP_COMMAND}, '
                              'or drop the flag to group the teacher before training')
        weights = _parse_weights(values['cka_weights'], values['cka_agg'], n)
        settings = cls(n_groups=n, group_file=group_file, batches=values['cka_batches'],
                       layers=values['cka_layers'], estimator=values['cka_estimator'], kernel=values['cka_kernel'],
                       student_split=values['cka_student_split'], teacher_split=values['cka_teacher_split'],
                       pairing=values['cka_pairing'], reduce=values['cka_reduce'], agg=values['cka_agg'],
                       weights=weights, compile=values['cka_compile'], gather=bool(values['cka_gather']),
                       monitor=bool(values['cka_monitor']), monitor_batches=values['cka_monitor_batches'])
        if n is not None and group_file is None:  # with a group file the count is known with its groups
            settings.group_weights(n)
        if settings.monitor_batches < 1:
            raise ConfigError(f'--cka_monitor_batches {settings.monitor_batches}: give at least 1 batch')
        return settings

    def compiles_term(self, device, model_compile: Optional[str]) -> bool:
        """Whether the CKA term is compiled: --cka_compile on/off, or auto: on CUDA, where a term
        of many small kernels is bound by their launches, and under --compile (`model_compile`)."""
        if self.compile != 'auto':
            return self.compile == 'on'
        return torch.device(device).type == 'cuda' or model_compile is not None

    def group_weights(self, n: int) -> Optional[List[float]]:
        """The weights of `--cka_agg weighted` for n groups (None otherwise), refused unless there
        are n of them."""
        if self.weights is not None and len(self.weights) != n:
            raise ConfigError(f'--cka_weights has {len(self.weights)} values but there are {n} groups; '
                              f'give exactly {n}')
        return None if self.weights is None else list(self.weights)


def parse_n_groups(value) -> Optional[int]:
    """`--cka_groups`: a positive integer, or 'auto' (returned as None)."""
    if str(value).lower() == 'auto':
        return None
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"--cka_groups {value!r}: give a positive integer or 'auto'") from None
    if n < 1:
        raise ConfigError(f'--cka_groups {n}: give at least 1 group')
    return n


def _parse_weights(text: Optional[str], agg: str, n: Optional[int]) -> Optional[Tuple[float, ...]]:
    """`--cka_weights` for `--cka_agg`: finite, non-negative floats with `weighted` (one per group:
    `CKASettings.group_weights` checks the count), else None. `n`: the group count, if known."""
    if agg != 'weighted':
        if text:
            raise ConfigError('--cka_weights is only used with --cka_agg weighted')
        return None
    if not text:
        raise ConfigError('--cka_agg weighted needs --cka_weights w1,...,wn, one weight per group')
    try:
        weights = tuple(float(w) for w in text.split(','))
    except ValueError:
        raise ConfigError(f'--cka_weights {text!r}: give {n or "n"} comma-separated numbers') from None
    if not all(np.isfinite(w) and w >= 0 for w in weights):
        raise ConfigError(f'--cka_weights {text!r}: give finite, non-negative weights')
    return weights


def check_batch_size(batch_size: int, estimator: str) -> None:
    """Refuse batches too small for one CKA value of `estimator`."""
    needed = min_cka_samples(estimator)
    if batch_size < needed:
        raise ConfigError(f'--batch_size {batch_size}: the {estimator} CKA estimator needs at least '
                          f'{needed} images per batch; raise --batch_size')


def check_resume_options(opt, saved_options: Optional[dict]) -> None:
    """Refuse a --resume whose --cka_* options differ from those the run folder recorded
    (`saved_options`, its options.json): they decide the teacher groups, the CKA term and what is
    logged, so a changed one would silently switch them mid-run."""
    if not saved_options:
        return
    current = vars(opt)
    changed = [key for key in sorted(current) if key.startswith('cka_') and key in saved_options
               and saved_options[key] != current[key]]
    if changed:
        key = changed[0]
        raise ConfigError(f'--resume: --{key} {current[key]!r} differs from the run\'s {saved_options[key]!r} '
                          f'(options.json); resume with the run\'s --cka_* options, or start a new --trial')
