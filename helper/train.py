"""What train_teacher.py and train_student.py do, importable so that tests call it directly, and
the wiring of a distillation (`build_distillation`) that the student run, the step benchmark and
the tests' fixtures share."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import models
from cka import PairedGroups
from dataset import ContrastiveDataset
from distiller_zoo import DistillContext, Distiller, distiller_class
from distiller_zoo.ckagroup import CKASettings, check_resume_options, pair_teacher_groups
from helper import distributed
from helper import options as options_mod
from helper.checkpoint import freeze, load_teacher
from helper.loops import CrossEntropyObjective, DistillObjective, validate
from helper.monitor import CKAMonitor, build_monitor, monitor_wanted
from helper.options import plain_options
from helper.run_folder import GROUPS_FILE, RunFolder
from helper.setup import (build_model, consistency, load_data, make_eval_loader, make_loaders, prepare_model,
                          prepare_process)
from helper.trainer import Trainer, resume_path
from runtime import collectives
from runtime.errors import ConfigError, DistributedFailure


def run_teacher(argv=None) -> dict:
    """train_teacher.py: in this process, or on every rank of a distributed run."""
    return distributed.launch(_teacher, options_mod.parse_teacher_options(argv))


def run_student(argv=None) -> dict:
    """train_student.py: in this process, or on every rank of a distributed run."""
    return distributed.launch(_student, options_mod.parse_student_options(argv))


def _teacher(opt) -> dict:
    started = time.time()
    device = prepare_process(opt)
    data = collectives.local_main_first(lambda: load_data(opt))
    model = build_model(opt.model, data.num_classes, opt.dataset)
    arch = models.resolve_model_name(opt.model, opt.dataset)
    run = RunFolder(os.path.join(opt.save_dir, 'teachers', options_mod.teacher_run_name(opt)),
                    plain_options(opt), resume=opt.resume is not None, enabled=collectives.is_main())
    prepare_model(model.to(device), opt)
    loaders = make_loaders(opt, data.train, data.val, device, data)
    trainer = Trainer(opt, run, model, CrossEntropyObjective(model), model, model.parameters(),
                      device, *loaders,
                      checkpoint_extra={'arch': arch, 'dataset': opt.dataset,
                                        'num_classes': data.num_classes},
                      consistency=consistency(opt, data), started=started, rounded_family_files=True,
                      **_final_test(opt, data, device))
    resume = resume_path(opt, run)
    if resume:
        trainer.resume(resume)
    print(f'training {arch} on {opt.dataset} ({len(data.train)} images) on {device}; run folder {run.path}')
    try:
        return trainer.fit()
    finally:
        run.close()


def _student(opt) -> dict:
    started = time.time()
    device = prepare_process(opt)
    if opt.path_t is None:
        raise ConfigError('--path_t is required: the teacher checkpoint to distil from')
    data = collectives.local_main_first(lambda: load_data(opt))
    teacher, teacher_arch = load_teacher(opt.path_t, data.num_classes, opt.dataset, device)
    opt.model_t = teacher_arch
    student = build_model(opt.model_s, data.num_classes, opt.dataset).to(device)
    student_arch = models.resolve_model_name(opt.model_s, opt.dataset)
    run = RunFolder(os.path.join(opt.save_dir, 'students', options_mod.student_run_name(opt, teacher_arch)),
                    plain_options(opt), resume=opt.resume is not None, enabled=collectives.is_main())
    check_resume_options(opt, run.saved_options)
    note = zero_weight_note(opt, distiller_class(opt.distill))
    if note and collectives.is_main():
        print(note)
    distillation = build_distillation(
        opt, CKASettings.from_options(opt), student, teacher, names=(student_arch, teacher_arch),
        input_shape=tuple(data.train[0][0].shape), num_classes=data.num_classes,
        num_train_samples=len(data.train), device=device, grouping_set=lambda: load_data(opt, augment=False).train,
        held_out=data.val, resumed_groups=(lambda: run.read_json(GROUPS_FILE)) if opt.resume is not None else None)
    distiller, monitor, groups = distillation.distiller, distillation.monitor, distillation.groups
    freeze(teacher)
    loaders = make_loaders(opt, distiller.wrap_train_dataset(data.train), data.val, device, data)
    predict = lambda images: distiller.predict(student, images)
    trainer = Trainer(opt, run, student, distillation.objective, predict, distillation.trainable, device, *loaders,
                      checkpoint_extra={'arch': student_arch, 'dataset': opt.dataset,
                                        'num_classes': data.num_classes, 'teacher_arch': teacher_arch,
                                        'distill': opt.distill},
                      extra_state={'distiller': distiller},
                      consistency=consistency(opt, data, teacher, groups), started=started,
                      **_final_test(opt, data, device))
    resume = resume_path(opt, run)
    if resume:
        trainer.resume(resume)
    elif not opt.skip_validation:
        teacher_acc = validate(teacher, loaders[1], device, trainer.step_options)
        print(f'teacher {teacher_arch} {trainer.val_name} top1 {teacher_acc["top1"]:.2f}'
              + (" (held out from the student's training images, perhaps not from the teacher's)"
                 if data.test is not None else ''))
        run.write_json('teacher_accuracy.json', teacher_acc)
    if groups is not None and not (resume and os.path.exists(run.file(GROUPS_FILE))):
        run.log_teacher_groups(groups.record, step=trainer.start_epoch)
    print(f'distilling {teacher_arch} -> {student_arch} with {opt.distill} on {device}; run folder {run.path}')
    try:
        return trainer.fit(end_epoch_hook=lambda epoch: {
            **distiller.end_epoch(epoch, run), **(monitor.end_epoch(epoch, run) if monitor else {})})
    finally:
        run.close()


def _final_test(opt, data, device) -> dict:
    """The Trainer's test set when the epochs evaluate on images held out from training: the full
    test set, evaluated once after the last epoch."""
    if data.test is None:
        return {}
    return {'test_loader': make_eval_loader(opt, data.test, device, data), 'test_images': len(data.test)}


@dataclass
class Distillation:
    """A student's distillation, wired: its context, the method, the step's objective, the paired
    CKA groups (for the method's term or the monitor; None when neither needs them) and the
    CKA monitor (None when the run is not monitored)."""

    ctx: DistillContext
    distiller: Distiller
    objective: DistillObjective
    groups: Optional[PairedGroups]
    monitor: Optional[CKAMonitor]

    @property
    def trainable(self) -> list:
        """What the optimiser trains: the student's parameters, then the distiller's own."""
        return list(self.ctx.student.parameters()) + list(self.distiller.parameters())


def build_distillation(opt, settings: CKASettings, student, teacher, *, names: tuple, input_shape, num_classes: int,
                       num_train_samples: int, device, grouping_set: Callable, held_out=None,
                       resumed_groups: Optional[Callable] = None) -> Distillation:
    """`--distill`'s method on `student` and `teacher` (`names`: their architectures), with what
    it needs from the run, and the objective of its training step.

    `settings`: the run's parsed --cka_* options. The paired CKA groups are found when the
    method's term or the CKA monitor needs them (`pair_teacher_groups`: a teacher pass over
    `grouping_set()`, --cka_group_file, or `resumed_groups()`, the record a resumed run left); the
    monitor measures on `held_out` (None: no monitor). Both models are prepared for
    --channels_last / --compile (their blocks kept tapped when a step taps them). A method's own
    check of its options against these models (ValueError) becomes a one-line ConfigError.
    """
    method = distiller_class(opt.distill)
    monitored = held_out is not None and monitor_wanted(held_out, settings, opt.batch_size)
    groups = None
    if _term_needs_groups(opt, method) or monitored:
        try:
            groups = pair_teacher_groups(settings, student, teacher, input_shape, grouping_set, device,
                                         batch_size=opt.batch_size, seed=opt.seed, teacher_name=names[1],
                                         resumed_record=resumed_groups)
        except ConfigError as exc:
            if method.needs_teacher_groups:  # its own --cka_* options are wrong, whatever -b says
                raise
            # for the monitor alone: these models cannot be grouped so, and training goes on
            print(f'note: CKA monitoring is off for this run: {exc}')
    ctx = DistillContext(student=student, teacher=teacher, student_name=names[0], teacher_name=names[1],
                         num_classes=num_classes, input_shape=tuple(input_shape),
                         num_train_samples=num_train_samples, device=device, opt=opt,
                         groups=groups if _term_needs_groups(opt, method) else None, cka=settings,
                         contrastive_dataset=ContrastiveDataset)
    try:
        distiller = method(ctx).to(device)
    except ValueError as exc:  # a method's own check of its options against these models
        raise ConfigError(f'--distill {opt.distill}: {exc}') from None
    monitor = None
    if monitored and groups is not None:
        monitor = build_monitor(student, teacher, groups, held_out, settings, batch_size=opt.batch_size,
                                seed=opt.seed, input_shape=input_shape, device=device)
    tapped = distiller.taps is not None or monitor is not None
    prepare_model(student, opt, taps=tapped)
    prepare_model(teacher, opt, taps=tapped)
    return Distillation(ctx, distiller, DistillObjective(student, teacher, distiller, opt), groups, monitor)


def zero_weight_note(opt, method) -> Optional[str]:
    """The line said before training when -b 0 gives a feature method's term weight 0 (None
    otherwise), naming the weight of the method's published script."""
    if opt.beta != 0 or method.published_beta is None:
        return None
    cost = 'not computed' if method.needs_teacher_groups else 'still computed'
    return (f'note: --distill {opt.distill} with -b 0: its term has weight 0 ({cost}) and only -c CE and '
            f'-d KD train the student; its published script uses -b {method.published_beta:g}')


def _term_needs_groups(opt, method) -> bool:
    """Whether the method's term needs the paired groups: at -b 0 it is not computed (see
    Distiller.needs_teacher_groups)."""
    return method.needs_teacher_groups and opt.beta != 0


def main(run, argv=None) -> int:
    """Entry-script wrapper: user errors become one line on stderr and exit status 2 (under torchrun,
    from rank 0 alone); a rank of a distributed run that died or crashed, one line and exit status 1."""
    try:
        run(argv)
    except ConfigError as exc:
        if getattr(exc, 'quiet', False):
            # torchrun: rank 0 says what every rank found and fails the launch. Were this rank to
            # fail too, torchrun could stop rank 0 before it prints.
            return 0
        print(f'error: {exc}', file=sys.stderr)
        return 2
    except DistributedFailure as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    return 0
