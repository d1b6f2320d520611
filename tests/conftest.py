"""Scaffolding shared by the tests: the argv of tiny training runs, parsed student options with
every method's own defaults, a distillation (or its DistillContext) wired by
helper.train.build_distillation, as a student run wires it, and a tiny study file for the lab.

Test modules import these helpers (`from conftest import ...`; pytest puts tests/ on sys.path).
"""
import os

import pytest
import torch

import models
from distiller_zoo import DistillContext
from distiller_zoo.ckagroup import CKASettings
from helper.options import parse_student_options
from helper.train import Distillation, build_distillation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def few_threads():
    """At most 2 torch threads for a module (`pytestmark = pytest.mark.usefixtures('few_threads')`):
    its many small forwards gain nothing from more, and CI has 2 cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, before))
    yield
    torch.set_num_threads(before)


def tiny_argv(train_per_class: int, val_per_class: int, batch_size: int, print_freq: int = 5,
              learning_rate: float = 0.02, *extra: str) -> list:
    """Flags of a tiny CPU run on the built-in synthetic data set (no download, no workers)."""
    return ['--dataset', 'synthetic', '--train_per_class', str(train_per_class), '--val_per_class',
            str(val_per_class), '--batch_size', str(batch_size), '--num_workers', '0', '--device', 'cpu',
            '--print_freq', str(print_freq), '--learning_rate', str(learning_rate), *extra]


def save_teacher(folder, arch: str, *, record_arch: bool = False, num_classes: int = 10):
    """An untrained `arch` teacher (seed 0) saved as `folder/<arch>_vanilla/ckpt.pth`: in the older
    repos' form `{'model': state_dict}` (the architecture read from the folder name), or with `arch`
    and `num_classes` recorded as our checkpoints are. Returns (path, model)."""
    torch.manual_seed(0)
    model = models.build_model(arch, num_classes)
    path = folder / f'{arch}_vanilla' / 'ckpt.pth'
    path.parent.mkdir(parents=True)
    state = {'model': model.state_dict()}
    if record_arch:
        state.update(arch=arch, num_classes=num_classes)
    torch.save(state, path)
    return path, model


def synthetic_test_top1(checkpoint, arch: str = 'resnet8') -> tuple:
    """(top-1 in %, image count) of a student checkpoint over every image of the synthetic test set,
    evaluated in float64 by the model alone: the reference a run's own test evaluation must meet."""
    from dataset import build_datasets
    student = models.build_model(arch, num_classes=10).double().eval()
    student.load_state_dict(torch.load(checkpoint, weights_only=True)['model'])
    test = build_datasets('synthetic').val
    with torch.no_grad():
        images = torch.stack([test[i][0] for i in range(len(test))]).double()
        correct = (student(images).argmax(1) == torch.as_tensor(test.targets)).sum().item()
    return 100.0 * correct / len(test), len(test)


def student_options(*argv: str, **values):
    """train_student.py's options: every default from the parser (each method's own included),
    `argv` parsed and finished as train_student.py does, then `values` set as they are."""
    opt = parse_student_options(list(argv))
    for name, value in values.items():
        setattr(opt, name, value)
    return opt


def distillation(student, teacher, opt, *, input_shape=(3, 32, 32), num_classes: int = 10,
                 num_train_samples: int = 64, train_set=None, names=('student', 'teacher')) -> Distillation:
    """`opt.distill`'s distillation as train_student.py builds it (`helper.train.build_distillation`),
    on the CPU and without a CKA monitor. When the method's term needs the teacher groups (-b not
    0), they are paired from a teacher pass over `train_set` (or read from --cka_group_file)."""
    return build_distillation(opt, CKASettings.from_options(opt), student, teacher, names=tuple(names),
                              input_shape=tuple(input_shape), num_classes=num_classes,
                              num_train_samples=num_train_samples, device=torch.device('cpu'),
                              grouping_set=lambda: train_set)


def distill_context(student, teacher, opt, **kwargs) -> DistillContext:
    """The DistillContext of `distillation(student, teacher, opt, **kwargs)`, for a test that builds
    a method from it itself."""
    return distillation(student, teacher, opt, **kwargs).ctx


# ---- a tiny study file, for the lab's tests (experiments/) ----

TINY_STUDY = '''notes = "a tiny study"
dataset = "synthetic"
seeds = {seeds}
reference = "kd"
cka_row = "ckagroup"

[teacher]
model = "resnet8"
epochs = 1
lr_decay_epochs = "1"
learning_rate = 0.05
batch_size = 8
seed = 0
train_per_class = 4
val_per_class = 4
train_options = ["--data_on_device", "--channels_last"]

[student]
model = "resnet8"
epochs = 1
lr_decay_epochs = "1"
learning_rate = 0.05
batch_size = 8
train_per_class = 4
{validation}
train_options = ["--data_on_device", "--channels_last"]

[rows]
kd = ["--distill", "kd", "-c", "1", "-d", "1", "-b", "0", "--cka_groups", "2"]
ckagroup = ["--distill", "ckagroup", "-c", "1", "-d", "1", "-b", "5", "--cka_groups", "2"]
{rows}'''
RANDOM_ROW = 'random_groups = ["--distill", "ckagroup", "-c", "1", "-d", "1", "-b", "5", "--cka_groups", "2", ' \
             '"--cka_teacher_split", "random"]'
CRD_ROW = 'crd = ["--distill", "crd", "-c", "1", "-d", "1", "-b", "0.8", "--cka_groups", "2", "--nce_k", "16"]'
FAMILY_ROWS = CRD_ROW + '\nsimkd = ["--distill", "simkd", "-c", "0", "-d", "0", "-b", "1", "--cka_groups", "2"]'


def tiny_study_text(seeds: str = '[0, 1]', validation: str = 'val_per_class = 4', rows: str = RANDOM_ROW) -> str:
    """A study file's text: resnet8 teaching resnet8 for one epoch on 4 synthetic images per class,
    rows kd and ckagroup plus `rows` (TOML lines), `validation` the student's held-out key."""
    return TINY_STUDY.format(seeds=seeds, validation=validation, rows=rows)
