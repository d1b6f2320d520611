"""Runs a study: its teacher once, then every (row, seed) student with the same seeds for every row,
so that rows differ only in their training objective; the training itself is
`helper.train.run_teacher` / `run_student`, in this process.

Each finished run leaves one raw JSON, `<results>/<study>/runs/<row>_seed<s>.json`, holding its
fingerprint (the exact training arguments and the teacher's weights digest); a later invocation
skips the runs whose JSON matches, reuses a matching run of another study under the same results
folder, resumes an interrupted run from its last checkpoint, and refuses a JSON whose fingerprint
differs (stale results are never mixed in silently).

Several processes may run one study at once, each over all its rows: a run in progress is locked
(an advisory lock of the operating system, dropped when its process dies), so the others pass it
by and take the next one; a teacher in training makes the others wait for it.
"""
import contextlib
import os
import shutil
import statistics
import time
from typing import Iterator, List, Optional, Sequence

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one process per study there
    fcntl = None

import torch

from experiments.evaluation import evaluate_checkpoint
from experiments.provenance import CKA_CODE_HASH, file_digest, fingerprint, read_json, run_environment
from experiments.study import Study, check_study, student_local_flags, study_error, teacher_local_flags
from experiments.summary import load_runs, plateau, summarise
from helper.options import parse_student_options
from helper.run_folder import write_json_atomic
from helper.setup import load_data
from runtime.errors import ConfigError


@contextlib.contextmanager
def run_lock(path: str, wait: bool) -> Iterator[bool]:
    """Holds an exclusive lock on the file `path` (created if missing) for the block: yields True
    when held; False at once when another process holds it and `wait` is False. The kernel drops
    the lock with its process, so a run killed with its session leaves no stale lock behind."""
    if fcntl is None:
        yield True
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'a') as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class StudyRunner:
    """Runs one study into `<results>/<study.name>/`; `work` holds the run folders (checkpoints:
    kept out of docs/). `extra`: arguments appended to every student run (they enter its
    fingerprint)."""

    def __init__(self, study: Study, results: str, work: str, data_folder: str,
                 num_workers: int = 1, extra: Sequence[str] = (), log=print):
        check_study(study)
        self.study, self.extra, self.log = study, list(extra), log
        self.data_folder, self.num_workers = data_folder, num_workers
        self.out = os.path.join(results, study.name)
        self.work = os.path.join(work, study.name)
        self.results_root = results

    def student_argv(self, row: str, seed: int) -> List[str]:
        return self.study.student_argv(row, seed, self.extra)

    def check_held_out_images(self) -> None:
        """The CKA monitor measures on whole held-out batches: refuse, before anything trains, a
        validation set too small for the batches a monitored run asks for."""
        seed = self.study.seeds[0]
        options = [parse_student_options(self.student_argv(row, seed)) for row in self.study.rows]
        monitored = [opt for opt in options if opt.cka_monitor]
        if not monitored:
            return
        opt = max(monitored, key=lambda o: o.cka_monitor_batches * o.batch_size)
        opt.data_folder = self.data_folder
        data = load_data(opt, augment=False)  # downloads where allowed; a missing set: one line
        if len(data.val) < opt.cka_monitor_batches * opt.batch_size:
            key = 'student.val_split_per_class' if opt.val_split_per_class else 'student.val_per_class'
            raise study_error(self.study.source, key, f'leaves {len(data.val)} held-out images, fewer than the CKA '
                                                      f'monitor\'s {opt.cka_monitor_batches} batches of '
                                                      f'{opt.batch_size}; raise it')

    # ---- the teacher ----
    def teacher_save_dir(self) -> str:
        """The teacher's --save_dir: shared by the studies under `work` that declare the same teacher."""
        key = fingerprint(self.study.teacher_argv())
        return os.path.join(os.path.dirname(self.work), 'teachers', f'{self.study.teacher.model}_{key}')

    def teacher(self) -> dict:
        """Train (or resume, or reuse) the teacher; returns teacher.json's record. A process that
        finds the teacher in training by another waits for it (every run needs it)."""
        with run_lock(self.teacher_save_dir() + '.lock', wait=True):
            return self._teacher()

    def _teacher(self) -> dict:
        from helper.train import run_teacher
        argv = self.study.teacher_argv()
        key = fingerprint(argv)
        record_path = os.path.join(self.out, 'teacher.json')
        save_dir = self.teacher_save_dir()
        if os.path.exists(record_path):
            record = read_json(record_path)
            if record['fingerprint'] != key:
                raise ConfigError(f'{record_path} holds a teacher trained with other settings; '
                                  'move it away (or pass another --results) to start this study afresh')
            self._check_teacher_checkpoint(record, record_path)
            self.log(f'== teacher {record["model"]}: reused ({record_path})')
            return record
        earlier = self._reusable(key, teacher=True)
        if earlier:  # trained for another study: its record keeps its training time and machine
            record = dict(read_json(earlier), reused_from=os.path.relpath(earlier, self.results_root))
            self._check_teacher_checkpoint(record, earlier)
            write_json_atomic(record, record_path)
            self.log(f'== teacher {record["model"]}: reused {record["reused_from"]}')
            return record
        run_dir = self._run_folder(save_dir, 'teachers')
        self.log(f'== teacher {self.study.teacher.model} ({self.study.name})')
        run_teacher(argv + teacher_local_flags(self.data_folder, self.num_workers, save_dir, resume=bool(run_dir)))
        run_dir = self._run_folder(save_dir, 'teachers')
        history = read_json(os.path.join(run_dir, 'metrics.json'))
        curve = [h['test/top1'] for h in history]
        checkpoint = os.path.join(run_dir, 'ckpt_last.pth')
        final = evaluate_checkpoint(checkpoint, self.study.dataset, self.data_folder, self.study.teacher.batch_size,
                                    self.study.teacher.train_per_class)
        record = {'fingerprint': key, 'argv': argv, 'checkpoint': checkpoint,
                  'digest': file_digest(checkpoint), 'model': self.study.teacher.model,
                  'train_images': final['train_images'], 'epochs': len(history),
                  'test_top1_full': final['top1'], 'test_images_full': final['images'],
                  'curve': curve, 'plateau_gain': plateau(curve),
                  # the training time the checkpoint carries over resumes, not this call's (which only
                  # reopens a run that had finished before teacher.json was written)
                  'seconds': torch.load(checkpoint, map_location='cpu', weights_only=True)['total_time_s'],
                  'images_per_s': statistics.fmean(h['train/images_per_s'] for h in history),
                  **run_environment(run_dir)}
        write_json_atomic(record, record_path)
        return record

    @staticmethod
    def _check_teacher_checkpoint(record: dict, record_path: str) -> None:
        if not (os.path.isfile(record['checkpoint']) and file_digest(record['checkpoint']) == record['digest']):
            raise ConfigError(f'the teacher checkpoint {record["checkpoint"]!r} recorded in {record_path} is '
                              'missing or changed; restore it (its runs were distilled from it)')

    # ---- the students ----
    def _curve_images(self) -> str:
        student = self.study.student
        return {'held_out': f'per epoch on {student.val_split_per_class} training images per class held out after '
                            f'the first {student.train_per_class} (--val_split_per_class)',
                'test_subset': 'per-epoch on --val_per_class',
                'test': 'per epoch on the full test set'}[student.curve_images]

    def run_path(self, row: str, seed: int) -> str:
        return os.path.join(self.out, 'runs', f'{row}_seed{seed}.json')

    def _reusable(self, key: str, teacher: bool = False) -> Optional[str]:
        """A finished run (`teacher`: a teacher.json, that study's own record rather than a copy)
        with this fingerprint anywhere under the results root (studies share them)."""
        if not os.path.isdir(self.results_root):
            return None
        for study in sorted(os.listdir(self.results_root)):
            if teacher:
                path = os.path.join(self.results_root, study, 'teacher.json')
                paths = [path] if os.path.isfile(path) else []
            else:
                runs = os.path.join(self.results_root, study, 'runs')
                paths = [os.path.join(runs, n) for n in sorted(os.listdir(runs)) if n.endswith('.json')] \
                    if os.path.isdir(runs) else []
            for path in paths:
                record = read_json(path)
                if record.get('fingerprint') == key and not (teacher and record.get('reused_from')):
                    return path
        return None

    def student(self, row: str, seed: int, teacher: dict) -> Optional[dict]:
        """The raw record of the (row, seed) run: read when finished, reused from another study,
        else trained (or resumed) and written; None when another process is running it. A finished
        record is read without the lock (records are written whole); the lock is taken to train,
        and the record looked for again under it, in case a process finished it meanwhile."""
        finished = self._finished(row, seed, teacher)
        if finished is not None:
            return finished
        with run_lock(os.path.join(self.work, f'{row}_seed{seed}.lock'), wait=False) as held:
            if not held:
                self.log(f'== {row}, seed {seed}: another process is running it; passed by')
                return None
            return self._finished(row, seed, teacher) or self._student(row, seed, teacher)

    def _finished(self, row: str, seed: int, teacher: dict) -> Optional[dict]:
        """The (row, seed) run's raw record when written, checked to be of this study's settings."""
        path = self.run_path(row, seed)
        if not os.path.exists(path):
            return None
        record = read_json(path)
        if record['fingerprint'] != self._student_key(self.student_argv(row, seed), teacher):
            raise ConfigError(f'{path} was run with other settings; move it away (or pass another '
                              '--results) rather than mix it into this study')
        return record

    @staticmethod
    def _student_key(argv: List[str], teacher: dict) -> str:
        """A student run's fingerprint: its arguments and its teacher's weights."""
        return fingerprint(['teacher ' + teacher['digest']] + argv)

    def _student(self, row: str, seed: int, teacher: dict) -> dict:
        from helper.train import run_student
        argv = self.student_argv(row, seed)
        key = self._student_key(argv, teacher)
        path = self.run_path(row, seed)
        earlier = self._reusable(key)
        if earlier:
            record = dict(read_json(earlier), row=row, reused_from=os.path.relpath(earlier, self.results_root))
            write_json_atomic(record, path)
            self.log(f'== {row}, seed {seed}: reused {record["reused_from"]}')
            return record
        save_dir = os.path.join(self.work, f'{row}_seed{seed}')
        resumed = self._run_folder(save_dir, 'students') is not None
        self.log(f'== {row}, seed {seed}' + (' (resuming)' if resumed else ''))
        start = time.time()
        run_student(argv + student_local_flags(teacher['checkpoint'], self.data_folder, self.num_workers, save_dir,
                                               resume=resumed))
        run_dir = self._run_folder(save_dir, 'students')
        record = self._record(row, seed, key, argv, teacher['digest'], run_dir, time.time() - start)
        record['resumed'] = resumed  # its wall time then covers only the part after the restart
        write_json_atomic(record, path)
        return record

    def _run_folder(self, save_dir: str, kind: str) -> Optional[str]:
        """The run folder under save_dir that holds a checkpoint (to resume or read), or None; a
        folder that died before its first checkpoint is cleared, so the run starts afresh."""
        root = os.path.join(save_dir, kind)
        folders = sorted(os.listdir(root)) if os.path.isdir(root) else []
        if len(folders) > 1:
            raise ConfigError(f'{root} holds several run folders; it should hold one run')
        if not folders:
            return None
        folder = os.path.join(root, folders[0])
        if os.path.exists(os.path.join(folder, 'ckpt_last.pth')):
            return folder
        shutil.rmtree(save_dir)
        return None

    def _record(self, row, seed, key, argv, teacher_digest, run_dir, seconds) -> dict:
        history = read_json(os.path.join(run_dir, 'metrics.json'))
        student = self.study.student
        final = evaluate_checkpoint(os.path.join(run_dir, 'ckpt_last.pth'), self.study.dataset, self.data_folder,
                                    student.batch_size, student.train_per_class)
        groups_file = os.path.join(run_dir, 'cka_groups.json')
        groups = read_json(groups_file) if os.path.exists(groups_file) else None
        monitor_file = os.path.join(run_dir, 'cka_monitor.json')
        monitor = read_json(monitor_file)[-1] if os.path.exists(monitor_file) else None
        return {'row': row, 'seed': seed, 'fingerprint': key, 'argv': argv, 'teacher_digest': teacher_digest,
                'test_top1_full': final['top1'], 'test_top5_full': final['top5'], 'test_images_full': final['images'],
                'deployed': final['deployed'],
                'curve': [h['test/top1'] for h in history], 'curve_val_images': self._curve_images(),
                'train_images': final['train_images'], 'epochs': len(history),
                'teacher_groups': groups['groups'] if groups else None,
                'teacher_split': groups['settings'].get('teacher_split', 'cka') if groups else None,
                'monitor_matrix': monitor['matrix'] if monitor else None,
                'monitor_student_groups': monitor['student_groups'] if monitor else None,
                'monitor_teacher_groups': monitor['teacher_groups'] if monitor else None,
                'monitor_group_mean': history[-1].get('monitor/group_mean'),
                'seconds': seconds, 'epoch_seconds': statistics.fmean(h['time'] for h in history),
                'images_per_s': statistics.fmean(h['train/images_per_s'] for h in history),
                'cka_code_hash': CKA_CODE_HASH, **run_environment(run_dir)}

    def run(self, rows: Optional[Sequence[str]] = None) -> dict:
        """Every run of the study (or of `rows`) not finished yet, then the summary of every finished
        run on disk, also those that other processes ran (other seeds or rows)."""
        self.check_held_out_images()
        teacher = self.teacher()
        for seed in self.study.seeds:  # seed-major: an early stop leaves complete pairs behind
            for row in rows or self.study.rows:
                self.student(row, seed, teacher)
        return summarise(self.study, teacher, load_runs(self.out), self.out)
