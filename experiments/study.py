"""A study: one paired, multi-seed comparison of training objectives, declared in a TOML file.

The file (`experiments/studies/<name>.toml`, or any path) holds the teacher's recipe (`[teacher]`),
what every student run shares (`[student]`), the rows (`[rows]`: each a list of train_student.py
arguments, the row's objective), the seeds, the reference row every paired test is taken against,
the CKA row, optionally the headline row, and optionally `[repeats]`: rows that run an earlier
study's row again on its seeds under this protocol (`kd = "resnet56_resnet8/kd"`). The study's name
is the file's stem; it names the results folder. `load_study` reads the file with tomllib and
refuses, in one line naming the file, the key and the fix, anything the runner could not train as
declared, before anything trains.

`Study.teacher_argv` and `Study.student_argv` are the arguments each run trains with; they enter
the runs' fingerprints, so a study with results keeps them exactly.
"""
import argparse
import contextlib
import io
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple

from experiments.evaluation import has_rebuildable_head
from helper.options import parse_student_options, parse_teacher_options, student_parser, teacher_parser
from runtime.errors import ConfigError

STUDIES_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'studies')
ROOT = os.path.dirname(os.path.dirname(STUDIES_FOLDER))
TEACHER_TRIAL = 'evidence'  # the teachers' --trial: names their run folders
LOCAL_PRINT_FREQ = '100000'  # the runner's runs print one line per epoch, not per batch


@dataclass(frozen=True)
class TeacherRecipe:
    """`[teacher]`: train_teacher.py's settings; studies with the same recipe share one teacher."""
    model: str
    epochs: int
    lr_decay_epochs: str
    learning_rate: float
    batch_size: int
    seed: int
    train_options: Tuple[str, ...]
    train_per_class: Optional[int] = None  # None: the whole training set
    val_per_class: Optional[int] = None  # test images per class evaluated each epoch (None: all)


@dataclass(frozen=True)
class StudentProtocol:
    """`[student]`: what every row's runs share, so that rows differ only in their objective."""
    model: str
    epochs: int
    lr_decay_epochs: str
    learning_rate: float
    batch_size: int
    train_options: Tuple[str, ...]
    train_per_class: Optional[int] = None  # None: the whole training set
    # the per-epoch curve's and the CKA monitor's images: the first val_per_class test images per
    # class, or val_split_per_class training images per class held out after train_per_class (then
    # only the final number touches the test set)
    val_per_class: Optional[int] = None
    val_split_per_class: Optional[int] = None

    @property
    def curve_images(self) -> str:
        """Which images the per-epoch curves and the CKA monitor measure, decided here once for the
        records, the summary's text and its figure: 'held_out' (val_split_per_class training images
        per class), 'test_subset' (the first val_per_class test images per class) or 'test' (all)."""
        if self.val_split_per_class:
            return 'held_out'
        return 'test_subset' if self.val_per_class else 'test'


@dataclass(frozen=True)
class Study:
    name: str
    source: str  # the TOML file, named by every refusal
    dataset: str
    teacher: TeacherRecipe
    student: StudentProtocol
    rows: Dict[str, Tuple[str, ...]]
    seeds: Tuple[int, ...]
    reference: str  # every row's paired difference against it forms the table's family of tests
    cka_row: str  # the row with CKA groups: the second baseline; flow CKA uses its groups
    headline: Optional[str] = None  # the row that answers the study's question, declared before it runs
    notes: str = ''
    # row -> '<study>/<row>': the earlier study's row whose seeds this row runs again under this
    # study's protocol (the summary sets their per-seed results side by side)
    repeats: Dict[str, str] = field(default_factory=dict)

    def method(self, row: str) -> str:
        """The row's --distill method (every row names one: `load_study` refuses a row without)."""
        argv = self.rows[row]
        return argv[argv.index('--distill') + 1]

    def teacher_argv(self) -> List[str]:
        """The teacher's train_teacher.py arguments, but for the local paths."""
        t = self.teacher
        return (['--model', t.model, '--dataset', self.dataset, '--epochs', str(t.epochs),
                 '--lr_decay_epochs', t.lr_decay_epochs, '--learning_rate', str(t.learning_rate),
                 '--batch_size', str(t.batch_size), '--seed', str(t.seed), '--trial', TEACHER_TRIAL]
                + _given('--train_per_class', t.train_per_class) + _given('--val_per_class', t.val_per_class)
                + list(t.train_options))

    def student_argv(self, row: str, seed: int, extra: Sequence[str] = ()) -> List[str]:
        """The run's train_student.py arguments, but for --path_t and the local paths: the shared
        protocol, the row's objective, the shared train options, then `extra`."""
        return self._protocol_argv(row, seed) + list(self.rows[row]) + list(self.student.train_options) + list(extra)

    def _protocol_argv(self, row: str, seed: int) -> List[str]:
        s = self.student
        return (['--model_s', s.model, '--dataset', self.dataset, '--epochs', str(s.epochs),
                 '--lr_decay_epochs', s.lr_decay_epochs, '--learning_rate', str(s.learning_rate),
                 '--batch_size', str(s.batch_size), '--seed', str(seed), '--trial', f'{row}-seed{seed}']
                + _given('--train_per_class', s.train_per_class)
                + _given('--val_split_per_class', s.val_split_per_class) + _given('--val_per_class', s.val_per_class))


def _given(flag: str, value) -> List[str]:
    return [] if value is None else [flag, str(value)]


def teacher_local_flags(data_folder: str, num_workers: int, save_dir: str, resume: bool) -> List[str]:
    """What the runner adds to a teacher's arguments: this machine's paths (not in the fingerprint)."""
    return (['--data_folder', data_folder, '--num_workers', str(num_workers), '--save_dir', save_dir,
             '--print_freq', LOCAL_PRINT_FREQ] + (['--resume'] if resume else []))


def student_local_flags(teacher_checkpoint: str, data_folder: str, num_workers: int, save_dir: str,
                        resume: bool) -> List[str]:
    """What the runner adds to a student's arguments: the teacher's checkpoint and this machine's
    paths (not in the fingerprint; the teacher enters it by its weights' digest)."""
    return (['--path_t', teacher_checkpoint, '--data_folder', data_folder, '--num_workers', str(num_workers),
             '--save_dir', save_dir, '--print_freq', LOCAL_PRINT_FREQ, '--skip-validation']
            + (['--resume'] if resume else []))


def with_budget(study: Study, **overrides) -> Study:
    """The study at another budget (smoke tests, a subset of the seeds): `teacher_<field>` and
    `student_<field>` set the tables' fields, other keys (`seeds`, `rows`, `name`, ...) the study's;
    None leaves a value as declared. Every setting enters the fingerprints, so such runs never mix
    with the declared ones."""
    given = {k: v for k, v in overrides.items() if v is not None}

    def fields(prefix):
        return {k[len(prefix):]: v for k, v in given.items() if k.startswith(prefix)}
    own = {k: v for k, v in given.items() if not k.startswith(('teacher_', 'student_'))}
    return replace(study, teacher=replace(study.teacher, **fields('teacher_')),
                   student=replace(study.student, **fields('student_')), **own)


# ---- reading a study file ----

def study_error(source: str, key: str, problem: str) -> ConfigError:
    """The one-line refusal of a study: its file, the key, what is wrong and the fix."""
    return ConfigError(f'{source}: {key}: {problem}')


_KINDS = {  # kind -> (test, what the value must be)
    'text': (lambda v: isinstance(v, str), 'a string in quotes'),
    'count': (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, 'a positive whole number'),
    'integer': (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, 'a whole number >= 0'),
    'number': (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, 'a positive number'),
    'flags': (lambda v: isinstance(v, list) and all(isinstance(a, str) for a in v),
              'a list of command-line arguments as strings, e.g. ["--data_on_device"]'),
    'decays': (lambda v: isinstance(v, str) and re.fullmatch(r'\d+(,\d+)*', v) is not None,
               'the epochs after which the learning rate decays, e.g. "20,25"'),
    'seeds': (lambda v: isinstance(v, list) and bool(v) and all(_KINDS['integer'][0](s) for s in v)
              and len(set(v)) == len(v), 'a non-empty list of distinct whole numbers >= 0'),
    'table': (lambda v: isinstance(v, dict), 'a table ([name] and its keys)'),
}
# key -> (kind, required); [teacher] and [student] have one key per field of their dataclass
_STUDY_KEYS = {'notes': ('text', False), 'dataset': ('text', True), 'seeds': ('seeds', True),
               'reference': ('text', True), 'cka_row': ('text', True), 'headline': ('text', False),
               'teacher': ('table', True), 'student': ('table', True), 'rows': ('table', True),
               'repeats': ('table', False)}
_TEACHER_KEYS = {'model': ('text', True), 'epochs': ('count', True), 'lr_decay_epochs': ('decays', True),
                 'learning_rate': ('number', True), 'batch_size': ('count', True), 'seed': ('integer', True),
                 'train_options': ('flags', True), 'train_per_class': ('count', False),
                 'val_per_class': ('count', False)}
_STUDENT_KEYS = {'model': ('text', True), 'epochs': ('count', True), 'lr_decay_epochs': ('decays', True),
                 'learning_rate': ('number', True), 'batch_size': ('count', True), 'train_options': ('flags', True),
                 'train_per_class': ('count', False), 'val_per_class': ('count', False),
                 'val_split_per_class': ('count', False)}
ROW_NAME = re.compile(r'[A-Za-z0-9_-]+')  # a row names files and run folders


def _read_table(table: dict, keys: dict, prefix: str, source: str) -> dict:
    """The table's values, checked against `keys` (kind, required)."""
    for key in table:
        if key not in keys:
            raise study_error(source, prefix + key, f'unknown key; remove it or use one of {", ".join(keys)}')
    values = {}
    for key, (kind, required) in keys.items():
        if key not in table:
            if required:
                raise study_error(source, prefix + key, f'missing; add it ({_KINDS[kind][1]})')
            continue
        test, what = _KINDS[kind]
        if not test(table[key]):
            raise study_error(source, prefix + key, f'{table[key]!r} is not {what}; write it as {what}')
        values[key] = tuple(table[key]) if isinstance(table[key], list) else table[key]
    return values


def study_names() -> List[str]:
    """The studies shipped in experiments/studies/, by name."""
    return sorted(name[:-len('.toml')] for name in os.listdir(STUDIES_FOLDER) if name.endswith('.toml'))


def study_path(name_or_path: str) -> str:
    """A shipped study's file by its name, or a study file's path as given."""
    if name_or_path.endswith('.toml') or os.sep in name_or_path:
        if not os.path.isfile(name_or_path):
            raise ConfigError(f'{name_or_path}: no such study file; give the path of a .toml study')
        return name_or_path
    path = os.path.join(STUDIES_FOLDER, f'{name_or_path}.toml')
    if not os.path.isfile(path):
        raise ConfigError(f'{name_or_path!r} is no shipped study; name one of {", ".join(study_names())} '
                          'or give the path of a .toml study')
    return path


def load_study(name_or_path: str) -> Study:
    """The study of a shipped name or a TOML file, checked (`check_study`)."""
    path = study_path(name_or_path)
    source = os.path.relpath(path, ROOT) if os.path.dirname(path) == STUDIES_FOLDER else name_or_path
    try:
        with open(path, 'rb') as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f'{source}: not valid TOML ({exc}); fix the syntax there') from None
    top = _read_table(data, _STUDY_KEYS, '', source)
    rows = {}
    for row, argv in top['rows'].items():
        if not ROW_NAME.fullmatch(row):
            raise study_error(source, f'rows.{row}', 'a row name holds only letters, digits, _ and - (it names '
                                                     'files); rename it')
        if not _KINDS['flags'][0](argv) or not argv:
            raise study_error(source, f'rows.{row}', f'{argv!r} is not a list of train_student.py arguments as '
                                                     'strings; write it as e.g. ["--distill", "kd", "-b", "0"]')
        rows[row] = tuple(argv)
    study = Study(name=os.path.splitext(os.path.basename(path))[0], source=source, dataset=top['dataset'],
                  teacher=TeacherRecipe(**_read_table(top['teacher'], _TEACHER_KEYS, 'teacher.', source)),
                  student=StudentProtocol(**_read_table(top['student'], _STUDENT_KEYS, 'student.', source)),
                  rows=rows, seeds=top['seeds'], reference=top['reference'], cka_row=top['cka_row'],
                  headline=top.get('headline'), notes=top.get('notes', ''),
                  repeats={row: _repeated_row(source, row, earlier) for row, earlier in top.get('repeats', {}).items()})
    check_study(study)
    return study


def _repeated_row(source: str, row: str, earlier) -> str:
    """A `[repeats]` entry checked: '<shipped study>/<one of its rows>'."""
    key = f'repeats.{row}'
    if not isinstance(earlier, str) or earlier.count('/') != 1:
        raise study_error(source, key, f'{earlier!r} is not "<study>/<row>"; name the earlier run\'s study and row, '
                                       'e.g. "resnet56_resnet8/kd"')
    name, earlier_row = earlier.split('/')
    try:
        with open(study_path(name), 'rb') as f:
            rows = tomllib.load(f).get('rows', {})
    except ConfigError as exc:
        raise study_error(source, key, str(exc)) from None
    if earlier_row not in rows:
        raise study_error(source, key, f'{name} has no row {earlier_row!r}; name one of {", ".join(rows)}')
    return earlier


# ---- what train_teacher.py and train_student.py would make of it ----

class _ParserRefusal(Exception):
    """What argparse would print before exiting (strict parsers raise it instead)."""


def _strict(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    def refuse_parse(message=None, status=2):
        raise _ParserRefusal(message or 'stops the parser')
    parser.error = refuse_parse
    parser.exit = lambda status=0, message=None: refuse_parse(message)
    return parser


_UNSET = object()


def _options_set(parser: argparse.ArgumentParser, argv: Sequence[str]) -> Tuple[set, List[str]]:
    """The options (argparse dests) that `argv` sets, and the arguments the parser does not know."""
    dests = vars(parser.parse_known_args([])[0])
    parsed, unknown = parser.parse_known_args(list(argv), namespace=argparse.Namespace(**dict.fromkeys(dests, _UNSET)))
    return {dest for dest, value in vars(parsed).items() if value is not _UNSET}, unknown


def _check_options(parser, parse, argv: List[str], source: str, key: str):
    """`argv` parsed as the training script would, its one-line refusals raised naming `key`; the
    script's notes (the MobileNet learning-rate rule) are for the runs, not for the check."""
    try:
        parser.parse_args(argv)
        with contextlib.redirect_stdout(io.StringIO()):
            return parse(argv)
    except (_ParserRefusal, ConfigError, ValueError) as exc:  # ValueError: a value the script cannot read
        raise study_error(source, key, str(exc)) from None


def _check_extra_flags(parser, argv: Sequence[str], reserved: set, source: str, key: str, script: str) -> set:
    """The options a row or train_options list sets: every argument known to `script`, none of
    those the study's tables or the runner set for every run."""
    try:
        given, unknown = _options_set(parser, argv)
    except _ParserRefusal as exc:
        raise study_error(source, key, str(exc)) from None
    if unknown:
        raise study_error(source, key, f'{unknown[0]!r} is not an argument of {script}; correct or remove it '
                                       f'(python {script} --help lists them)')
    clash = sorted(given & reserved)
    if clash:
        raise study_error(source, key, f'sets {", ".join(clash)}, which the study\'s tables or the runner set for '
                                       'every run; drop it here (a setting every run shares belongs in the table)')
    return given


def check_study(study: Study) -> None:
    """Refuse a study the runner cannot train or measure as declared, before anything trains."""
    source = study.source
    named = [(key, getattr(study, key)) for key in ('reference', 'cka_row', 'headline')]
    for key, row in named + [(f'repeats.{row}', row) for row in study.repeats]:
        if row is not None and row not in study.rows:
            raise study_error(source, key, f'{row!r} is not a row; name one of {", ".join(study.rows)}')
    if not study.seeds or len(set(study.seeds)) != len(study.seeds):
        raise study_error(source, 'seeds', f'{list(study.seeds)}: give distinct seeds, at least one')

    teacher = _strict(teacher_parser())
    # every flag the [teacher] table can give, whether this study gives it or not
    every_recipe_flag = replace(study, teacher=replace(study.teacher, train_per_class=1, val_per_class=1,
                                                       train_options=())).teacher_argv()
    reserved = _options_set(teacher, every_recipe_flag + teacher_local_flags('data', 1, 'save', True))[0]
    _check_extra_flags(teacher, study.teacher.train_options, reserved, source, 'teacher.train_options',
                       'train_teacher.py')
    _check_options(teacher, parse_teacher_options, study.teacher_argv(), source, 'teacher')

    student, seed, first_row = _strict(student_parser()), study.seeds[0], next(iter(study.rows), '')
    # every flag the [student] table can give, whether this study gives it or not
    every_protocol_flag = replace(study, student=replace(study.student, train_per_class=1, val_per_class=1,
                                                         val_split_per_class=1))._protocol_argv('row', seed)
    reserved = _options_set(student, every_protocol_flag + student_local_flags('T.pth', 'data', 1, 'save', True))[0]
    _check_extra_flags(student, study.student.train_options, reserved, source, 'student.train_options',
                       'train_student.py')
    _check_options(student, parse_student_options,
                   study._protocol_argv(first_row, seed) + list(study.student.train_options), source, 'student')
    for row, argv in study.rows.items():
        key = f'rows.{row}'
        if 'distill' not in _check_extra_flags(student, argv, reserved, source, key, 'train_student.py'):
            raise study_error(source, key, 'names no method; add "--distill", "<method>"')
        opt = _check_options(student, parse_student_options, study.student_argv(row, seed), source, key)
        if not has_rebuildable_head(opt.distill):
            raise study_error(source, key, f'--distill {opt.distill} predicts through its own head, which the final '
                                      'evaluation cannot rebuild; add its deployed model to '
                                      'experiments.evaluation.DEPLOYED_HEADS')

