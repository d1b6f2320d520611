"""One folder per run: options, per-epoch metrics as JSON, TensorBoard events, checkpoints, the
teacher's CKA groups and the per-epoch CKA matrices with their figures."""
from __future__ import annotations

import json
import os

import numpy as np

from cka import save_png, student_teacher_figure, teacher_caption, teacher_figure
from helper.family_files import FAMILY_SCALARS
from runtime.errors import ConfigError

OPTIONS_FILE = 'options.json'
METRICS_FILE = 'metrics.json'
LAST_CKPT = 'ckpt_last.pth'
# the teacher's CKA groups of a run (scripts/cka_groups.py writes the same two outside a run)
GROUPS_FILE = 'cka_groups.json'
GROUPS_PNG = 'cka_groups.png'


def write_json_atomic(obj, path: str) -> None:
    """Write `obj` as JSON to `path` (its folder created) through a temporary file, so that a
    reader never sees half a file."""
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


class RunFolder:
    """The run's folder. Refuses to overwrite a finished or interrupted run unless resuming.

    In a distributed run only rank 0's folder is `enabled`: the others write nothing (no files,
    no TensorBoard events) but keep the history, and refuse a used folder alike, so that every
    rank stops together.

    Nothing is written until the run writes its first file: a command rejected before that leaves
    the folder exactly as it was (`saved_options`: the options.json a resumed run found there).
    """

    def __init__(self, path: str, options: dict, resume: bool, enabled: bool = True):
        self.path = path
        self.enabled = enabled  # False on every rank but 0 of a distributed run
        self._writer = None
        self._options = options
        last = os.path.join(path, LAST_CKPT)
        if not resume and os.path.exists(last):
            raise ConfigError(f'run folder {path!r} already holds a checkpoint; pass --resume to '
                              'continue it, or change --trial / --save_dir for a new run')
        self.saved_options = self.read_json(OPTIONS_FILE) if resume else None

    def read_json(self, name: str):
        """The folder's JSON file `name` as a resumed run finds it, or None when there is none."""
        path = self.file(name)
        if not os.path.isfile(path):
            return None
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError) as exc:
            raise ConfigError(f'--resume: {path!r} is unreadable ({type(exc).__name__}); '
                              'restore it, or start a new --trial') from None

    def _open(self) -> None:
        """Create the folder and write options.json, once, before the run's first file."""
        if self._options is None:
            return
        os.makedirs(self.path, exist_ok=True)
        write_json_atomic(self._options, self.file(OPTIONS_FILE))
        self._options = None

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def writer(self):
        if self._writer is None and self.enabled:
            self._open()
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(log_dir=self.path)
        return self._writer

    def log_epoch(self, history: list, record: dict) -> None:
        """Append one epoch's record to the history (every rank); rank 0 writes it as JSON and
        its scalars to TensorBoard."""
        history.append(record)
        if not self.enabled:
            return
        self._open()
        write_json_atomic(history, self.file(METRICS_FILE))
        epoch = record['epoch']
        for key, value in record.items():
            if key != 'epoch' and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, epoch)
                if key in FAMILY_SCALARS:  # the older repos' name too, so their curves overlay ours
                    self.writer.add_scalar(FAMILY_SCALARS[key], value, epoch)
        self.writer.flush()

    def log_figure(self, tag: str, figure, step: int) -> None:
        """A matplotlib figure as a TensorBoard image; the figure is closed (freed) afterwards."""
        if self.enabled:
            self.writer.add_figure(tag, figure, step, close=True)
            self.writer.flush()

    def write_json(self, name: str, obj) -> None:
        if self.enabled:
            self._open()
            write_json_atomic(obj, self.file(name))

    def log_teacher_groups(self, record: dict, step: int) -> None:
        """The run's teacher groups (`cka.groups_to_json`'s record): GROUPS_FILE, GROUPS_PNG and the
        TensorBoard figure `cka/teacher`."""
        self.write_json(GROUPS_FILE, record)
        if self.enabled:
            figure = teacher_figure(record['matrix'], record['layer_names'], record['groups'],
                                    caption=teacher_caption(record['settings']))
            save_png(figure, self.file(GROUPS_PNG))
            self.log_figure('cka/teacher', figure, step)

    def log_cka_matrix(self, prefix: str, filename: str, epoch: int, matrix, group_values: list,
                       student_names, teacher_names, student_groups, teacher_groups) -> dict:
        """Log one epoch's student x teacher CKA matrix: the figure `<prefix>/student_x_teacher`
        (paired group blocks outlined, each block's value written in it), the epoch appended to the
        folder's `filename` (an earlier record of the same or a later epoch, left by an interrupted
        run, is replaced), and the scalars `<prefix>/group_<i>` and `<prefix>/group_mean`, returned
        for the epoch's metrics record."""
        if self.enabled:
            self.log_figure(f'{prefix}/student_x_teacher', student_teacher_figure(
                matrix, student_names, teacher_names, student_groups, teacher_groups, group_values,
                title=f'{prefix}: student x teacher CKA, epoch {epoch}'), epoch)
            history = [h for h in _read_json(self.file(filename)) if h['epoch'] < epoch]
            history.append({'epoch': epoch, 'student_layers': list(student_names),
                            'teacher_layers': list(teacher_names), 'student_groups': student_groups,
                            'teacher_groups': teacher_groups, 'matrix': np.asarray(matrix).tolist(),
                            'group_cka': list(group_values)})
            self.write_json(filename, history)
        record = {f'{prefix}/group_{i}': value for i, value in enumerate(group_values)}
        record[f'{prefix}/group_mean'] = float(np.mean(group_values))
        return record

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _read_json(path: str) -> list:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)
