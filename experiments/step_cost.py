"""What one training step of a row costs against its study's reference row (kd): each row's step as
train_student.py wires it, timed interleaved with the reference's step so that machine load hits
both alike, reported as the ratio of their medians.

The step is the whole of a training iteration (teacher forward, student forward, the method's
losses, backward, SGD step) on one fixed batch of the built-in synthetic set, sized as the study's
student subset (so CRD's memory bank and its contrast indices are those of the real runs). What a
run does outside its steps (loading, the per-epoch evaluation and CKA monitor, the teacher-group
precompute) is not in the ratio. The models are untrained: speed does not depend on the weights,
but the teacher's BatchNorm statistics are first set from the batch, as a trained teacher's track
its data (otherwise the CKA term meets block outputs whose offsets no trained teacher has).
"""
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

import models
from dataset import build_datasets
from distiller_zoo.ckagroup import CKASettings
from experiments.provenance import cpu_model
from experiments.study import Study
from helper.checkpoint import freeze
from helper.loops import StepOptions, cpu_has_native_bf16, train_step
from helper.options import parse_student_options
from helper.train import build_distillation
from helper.trainer import sgd
from runtime.errors import ConfigError

# the synthetic set stands in for these (itself included): same image shape and class count
SYNTHETIC_STAND_IN = {'cifar10': 10, 'synthetic': 10}


@torch.no_grad()
def set_bn_statistics(model: torch.nn.Module, images: torch.Tensor, passes: int = 5) -> None:
    """BatchNorm running statistics from `images`, as a trained model's track its data."""
    model.train()
    for _ in range(passes):
        model(images)
    model.eval()


def build_teacher(name: str, num_classes: int, images: torch.Tensor, teacher_bn: str = 'data') -> torch.nn.Module:
    """An untrained, frozen teacher; `teacher_bn` 'data': its BatchNorm statistics from `images`
    ('init': the initial ones)."""
    teacher = models.build_model(name, num_classes=num_classes).to(images.device)
    if teacher_bn == 'data':
        set_bn_statistics(teacher, images)
    freeze(teacher)
    return teacher


def build_step(argv: Sequence[str], teacher: torch.nn.Module, student_name: str, teacher_name: str, *,
               train_set, index: torch.Tensor, num_classes: int, device: torch.device,
               compile_mode: Optional[str] = None) -> Callable[[], None]:
    """One training step of train_student.py's `argv` (its method and options) on the batch
    `index` of `train_set`, wired by `helper.train.build_distillation` with the run's SGD.
    The method's wrapped data set adds its per-batch extras (CRD's contrast indices), drawn once.
    Returns a callable (with the student, the distiller, the objective and the batch as attributes)."""
    opt = parse_student_options(list(argv))
    if compile_mode is not None:
        opt.compile = compile_mode
    student = models.build_model(student_name, num_classes=num_classes).to(device)
    wired = build_distillation(opt, CKASettings.from_options(opt), student, teacher,
                               names=(student_name, teacher_name), input_shape=tuple(train_set[0][0].shape),
                               num_classes=num_classes, num_train_samples=len(train_set), device=device,
                               grouping_set=lambda: train_set)
    images = torch.stack([train_set[i][0] for i in index.tolist()])
    targets = torch.as_tensor([int(train_set[i][1]) for i in index.tolist()])
    wrapped = wired.distiller.wrap_train_dataset(train_set)
    extras = wrapped.batch_extras(index, torch.Generator().manual_seed(0)) if hasattr(wrapped, 'batch_extras') else ()
    options = StepOptions.from_opt(opt)
    objective, optimizer = wired.objective, sgd(opt, wired.trainable)
    batch = options.batch((images, targets, *extras), device)
    objective.train()

    def step():
        train_step(batch, objective, optimizer, device, options)
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    step.student, step.distiller, step.objective, step.batch = student, wired.distiller, objective, batch
    step.options = options
    return step


STEP_ORDER = 'alternating'  # cost.json's 'order': which step of a turn goes first


def interleaved(steps: Dict[str, Callable[[], None]], repeats: int, warmup: int) -> Dict[str, List[float]]:
    """Seconds of each step, the steps taken in turn `repeats` times after `warmup` untimed turns;
    the order reverses every turn, so that what a step leaves behind (caches, allocator, clock)
    weighs on each step alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times, order = {name: [] for name in steps}, list(steps.items())
    for turn in range(repeats):
        for name, step in (order if turn % 2 == 0 else reversed(order)):
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return times


def row_step_costs(study: Study, rows: Optional[Sequence[str]] = None, *, device: torch.device,
                   repeats: int = 15, warmup: int = 2, runs: int = 3, log: Callable[[str], None] = print) -> dict:
    """Each row's step against the reference's (`runs` interleaved runs of `repeats` steps each):
    medians in ms and their ratio per run, and the median ratio over the runs."""
    if study.dataset not in SYNTHETIC_STAND_IN:
        raise ConfigError(f'{study.source}: the step cost stands the synthetic set in for '
                          f'{", ".join(SYNTHETIC_STAND_IN)} only, not {study.dataset}')
    unknown = [r for r in rows or () if r not in study.rows]
    if unknown:
        raise ConfigError(f'{study.source}: no row {unknown[0]!r}; rows: {", ".join(study.rows)}')
    num_classes = SYNTHETIC_STAND_IN[study.dataset]
    train_set = build_datasets('synthetic', train_per_class=study.student.train_per_class, augment=False).train
    index = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0))[:study.student.batch_size]
    images = torch.stack([train_set[i][0] for i in index.tolist()]).to(device)
    reference = study.reference

    def step_of(row):
        torch.manual_seed(0)
        teacher = build_teacher(study.teacher.model, num_classes, images)
        return build_step(study.student_argv(row, seed=0), teacher, study.student.model, study.teacher.model,
                          train_set=train_set, index=index, num_classes=num_classes, device=device)

    out = {'study': study.name, 'reference': reference, 'order': STEP_ORDER, 'device': str(device),
           'machine': machine(device), 'batch_size': study.student.batch_size,
           'train_images': len(train_set), 'repeats': repeats, 'warmup': warmup, 'rows': {}}
    for row in [r for r in rows or study.rows if r != reference]:
        steps = {reference: step_of(reference), row: step_of(row)}
        per_run = []
        for run in range(runs):
            times = interleaved(steps, repeats, warmup if run == 0 else 1)
            medians = {name: 1000 * statistics.median(t) for name, t in times.items()}
            per_run.append({'reference_ms': medians[reference], 'row_ms': medians[row],
                            'ratio': medians[row] / medians[reference]})
            log(f'{row:20s} run {run + 1}: {reference} {medians[reference]:7.1f} ms, {row} {medians[row]:7.1f} ms, '
                f'ratio {per_run[-1]["ratio"]:.3f}')
        out['rows'][row] = {'runs': per_run, 'ratio': statistics.median(r['ratio'] for r in per_run)}
    return out


def machine(device: torch.device) -> str:
    """The device a figure was measured on, in words: the GPU, or the CPU with its torch capability."""
    if device.type == 'cuda':
        return f'{torch.cuda.get_device_name(device)}, torch {torch.__version__}'
    bf16 = 'native bf16' if cpu_has_native_bf16() else 'no native bf16'
    return (f'{cpu_model()}, CPU capability {torch.backends.cpu.get_cpu_capability()} ({bf16}), '
            f'{torch.get_num_threads()} threads, torch {torch.__version__}')
