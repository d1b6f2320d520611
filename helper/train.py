"""What train_teacher.py and train_student.py do, importable so that tests call it directly."""
from __future__ import annotations

import os
import random
import sys
import time
from typing import Optional

import numpy as np
import torch
from torch.utils.data.distributed import DistributedSampler

import models
from dataset import ContrastiveDataset, DatasetUnavailableError, build_datasets
from dataset.device_data import DeviceImageLoader, uint8_images
from distiller_zoo import DistillContext, distiller_class
from helper import distributed
from helper import family_files
from helper import options as options_mod
from helper import teacher_groups
from helper.checkpoint import freeze, load_checkpoint, load_teacher, save_atomic
from helper.loops import (CrossEntropyObjective, DistillObjective, StepOptions, amp_cpu_note, train_epoch,
                          validate)
from helper.monitor import build_monitor, monitor_wanted
from helper.run_folder import LAST_CKPT, RunFolder
from runtime import collectives
from runtime.errors import ConfigError, DistributedFailure


def select_device(name: str) -> torch.device:
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ConfigError(f'--device {name} asked for CUDA but none is available; use --device cpu')
    return device


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch of one rank (rank 0: that of a single-process run)."""
    return seed * 1_000_003 + epoch + rank * 1_000_000_007


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> None:
    """Reseed every generator at each epoch start, so a resumed run replays the same epochs.

    Each rank of a distributed run draws its own augmentations (its own seed); the data order is
    the DistributedSampler's, seeded by --seed and the epoch alike on every rank.
    """
    value = epoch_seed(seed, epoch, rank)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


def configure_determinism(deterministic: bool) -> None:
    if deterministic:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def lr_at(opt, epoch: int) -> float:
    """Step schedule of the older repos: decay by lr_decay_rate after each of lr_decay_epochs."""
    steps = sum(epoch > milestone for milestone in opt.lr_decay_epochs)
    return opt.learning_rate * opt.lr_decay_rate ** steps


def make_loaders(opt, train_set, val_set, device, data=None):
    """Loaders of `--batch_size` images with `--num_workers` workers, both per process.

    Distributed: the training set is split by a DistributedSampler (shuffled by --seed and the
    epoch; padded by repeating a few samples so that every rank gets as many), the evaluation set
    by a ShardSampler (no padding: each sample is evaluated once, the sums are added over ranks).
    `--data_on_device` (needs `data`, the DataBundle): both sets as uint8 on the device instead.
    """
    generator = torch.Generator()
    train_sampler, val_sampler = _samplers(opt, train_set, val_set)
    if getattr(opt, 'data_on_device', False):
        return _device_loaders(opt, train_set, data, device, generator, train_sampler, val_sampler)
    common = dict(batch_size=opt.batch_size, num_workers=opt.num_workers, pin_memory=device.type == 'cuda',
                  persistent_workers=False)
    # a sampler, when there is one, gives the order (shuffle must then stay off)
    train_loader = torch.utils.data.DataLoader(train_set, shuffle=train_sampler is None, sampler=train_sampler,
                                               generator=generator, **common)
    val_loader = torch.utils.data.DataLoader(val_set, shuffle=False, sampler=val_sampler, **common)
    return train_loader, val_loader, generator


def _samplers(opt, train_set, val_set) -> tuple:
    """(training, evaluation) samplers of a distributed run; (None, None) in one process."""
    if collectives.world_size() == 1:
        return None, None
    return (DistributedSampler(train_set, shuffle=True, seed=opt.seed),
            collectives.ShardSampler(len(val_set)))


def _device_loaders(opt, train_set, data, device, generator, train_sampler, val_sampler):
    # a method's wrapper of the training set (CRD's indices) draws its extra tensors per batch
    batch_extras = None
    if train_set is not data.train:
        if getattr(train_set, 'dataset', None) is not data.train or not hasattr(train_set, 'batch_extras'):
            raise ConfigError(f'--data_on_device cannot feed --distill {opt.distill}: its data set wrapper '
                              f'{type(train_set).__name__} has no batch_extras; drop --data_on_device')
        batch_extras = train_set.batch_extras
    arrays = []
    for part in (data.train, data.val):
        try:
            arrays.append(uint8_images(part, data.image_size))
        except ValueError as exc:
            raise ConfigError(f'--data_on_device: {exc}; drop --data_on_device for --dataset '
                              f'{opt.dataset}') from None
    common = dict(mean=data.mean, std=data.std, batch_size=opt.batch_size, device=device,
                  channels_last=opt.channels_last)
    train_loader = DeviceImageLoader(*arrays[0], train=True, generator=generator, sampler=train_sampler,
                                     batch_extras=batch_extras, **common)
    val_loader = DeviceImageLoader(*arrays[1], train=False, sampler=val_sampler, **common)
    return train_loader, val_loader, generator


def prepare_model(model: torch.nn.Module, opt, taps: bool = False) -> torch.nn.Module:
    """--channels_last and --compile, in place (the module, its state_dict keys and its hooks stay
    the same: `nn.Module.compile` compiles its call). `taps`: its block outputs will be tapped
    (kept hooks when compiled: hooks added after compiling are ignored)."""
    if getattr(opt, 'channels_last', False):
        model.to(memory_format=torch.channels_last)
    mode = getattr(opt, 'compile', None)
    if mode is not None:
        if taps:
            models.keep_tap(model, model.block_layer_names())
        # static shapes: the short last batch gets its own graph instead of turning every batch dynamic
        model.compile(mode=None if mode == 'default' else mode, dynamic=False)
    return model


def load_data(opt, augment=True):
    try:
        return build_datasets(opt.dataset, opt.data_folder, train_per_class=opt.train_per_class,
                              val_per_class=getattr(opt, 'val_per_class', None),
                              val_split_per_class=getattr(opt, 'val_split_per_class', None), augment=augment)
    except (DatasetUnavailableError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def build_student(name: str, num_classes: int, dataset: str):
    try:
        return models.build_model(name, num_classes=num_classes, dataset=dataset)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


class Trainer:
    """The epoch loop shared by teachers and students: train, validate, log, checkpoint, resume."""

    def __init__(self, opt, run: RunFolder, model, objective, predict, trainable, device,
                 train_loader, val_loader, generator, checkpoint_extra, extra_state=None,
                 consistency=None, started=None, rounded_family_files=False):
        self.opt, self.run, self.model, self.objective = opt, run, model, objective
        self.predict, self.device = predict, device
        self.train_loader, self.val_loader, self.generator = train_loader, val_loader, generator
        self.checkpoint_extra = checkpoint_extra  # arch, data set, class count, ...
        self.extra_state = extra_state or {}  # name -> module whose state is checkpointed too
        self.eval_modules = [model] + list(self.extra_state.values())
        self.optimizer = torch.optim.SGD(trainable, lr=opt.learning_rate, momentum=opt.momentum,
                                         weight_decay=opt.weight_decay)
        self.history, self.best_acc, self.start_epoch = [], 0.0, 1
        self.consistency = consistency or {}  # what every rank must agree on (distributed)
        self.step_options = StepOptions.from_opt(opt)
        self._wrapped = False
        # run time for the family's parameters.json: this process's, plus that of resumed runs
        self.started, self.seconds_before = started or time.time(), 0.0
        self.rounded_family_files = rounded_family_files  # as the family's teacher script writes them

    def resume(self, path: str) -> None:
        ckpt = load_checkpoint(path)
        if ckpt.get('arch') != self.checkpoint_extra['arch']:
            raise ConfigError(f'--resume {path!r} is a {ckpt.get("arch")} checkpoint, '
                              f'not {self.checkpoint_extra["arch"]}')
        saved_seed = ckpt.get('seed', ckpt.get('opt', {}).get('seed'))
        if saved_seed is not None and saved_seed != self.opt.seed:
            raise ConfigError(f'--resume {path!r} was trained with seed {saved_seed}, this run has '
                              f'{self.opt.seed}; pass --seed {saved_seed} to continue it')
        self.model.load_state_dict(ckpt['model'])
        for name, module in self.extra_state.items():
            module.load_state_dict(ckpt[name])
        self.optimizer.load_state_dict(ckpt['optimizer'])
        self.history = list(ckpt['history'])
        self.best_acc = ckpt['best_acc']
        self.start_epoch = ckpt['epoch'] + 1
        self.seconds_before = ckpt.get('total_time_s', 0.0)
        print(f'resumed from {path} at epoch {ckpt["epoch"]}')

    def _state(self, epoch: int) -> dict:
        state = {'model': self.model.state_dict(), 'epoch': epoch, 'best_acc': self.best_acc,
                 'optimizer': self.optimizer.state_dict(), 'history': self.history,
                 'opt': _plain(vars(self.opt)), 'seed': self.opt.seed,
                 'total_time_s': self._seconds(), **self.checkpoint_extra}
        for name, module in self.extra_state.items():
            state[name] = module.state_dict()
            deploy = getattr(module, 'deploy_state', dict)()
            if deploy:
                state['deploy'] = deploy
            state.update(getattr(module, 'family_checkpoint_entries', dict)())
        return state

    def _seconds(self) -> float:
        return self.seconds_before + time.time() - self.started

    def _distribute(self) -> None:
        """Distributed run: check that the ranks agree, then wrap the trainable step in DDP.

        Called after any resume, so the check covers the resumed state too. DDP broadcasts rank
        0's parameters and buffers once; afterwards gradients are averaged every step, and the
        buffers (BN statistics) are broadcast from rank 0 after every epoch (`broadcast_buffers`
        at every forward would also send CRD's memory bank each step).
        """
        if collectives.world_size() == 1 or self._wrapped:
            return
        collectives.check_consistent({**self.consistency, 'the resumed epoch': self.start_epoch - 1,
                                      'the resumed history': len(self.history)})
        find_unused = self.objective.find_unused_parameters
        self.objective.distribute(lambda module: collectives.wrap_ddp(module, find_unused))
        self._wrapped = True

    def fit(self, end_epoch_hook=None) -> dict:
        opt = self.opt
        self._distribute()
        rank = collectives.rank()
        sampler = getattr(self.train_loader, 'sampler', None)
        for epoch in range(self.start_epoch, opt.epochs + 1):
            lr = lr_at(opt, epoch)
            for group in self.optimizer.param_groups:
                group['lr'] = lr
            seed_epoch(opt.seed, epoch, rank)
            self.generator.manual_seed(epoch_seed(opt.seed, epoch, rank))
            if isinstance(sampler, DistributedSampler):
                sampler.set_epoch(epoch)
            train = train_epoch(epoch, self.train_loader, self.objective, self.optimizer, self.device,
                                opt.print_freq, opt.epochs, step_options=self.step_options)
            collectives.broadcast_buffers(self.objective.module)
            extra = end_epoch_hook(epoch) if end_epoch_hook else {}
            for module in self.eval_modules:
                module.eval()
            test = validate(self.predict, self.val_loader, self.device, self.step_options)
            record = {'epoch': epoch, 'lr': lr, 'time': train.pop('time'),
                      **{f'train/{k}': v for k, v in train.items()},
                      **{f'test/{k}': v for k, v in test.items()}, **extra}
            is_best = test['top1'] > self.best_acc
            self.best_acc = max(self.best_acc, test['top1'])
            self.run.log_epoch(self.history, record)
            if collectives.is_main():
                print(f'epoch {epoch}: train top1 {train["top1"]:.2f} test top1 {test["top1"]:.2f} '
                      f'(best {self.best_acc:.2f}) lr {lr:g} {record["time"]:.1f}s', flush=True)
            if self.run.enabled:
                state = self._state(epoch)
                save_atomic(state, self.run.file(LAST_CKPT))
                if is_best:
                    save_atomic(state, self.run.file(f'{self.checkpoint_extra["arch"]}_best.pth'))
                    self.run.write_json(family_files.BEST_METRICS_FILE,
                                        family_files.best_metrics(test, epoch, self.rounded_family_files))
        summary = {'best_top1': self.best_acc,
                   'last_top1': self.history[-1]['test/top1'] if self.history else None,
                   'last_top5': self.history[-1]['test/top5'] if self.history else None,
                   'epochs': len(self.history)}
        if collectives.world_size() > 1:
            summary['world_size'] = collectives.world_size()
            summary['ranks_in_sync'] = collectives.states_identical(
                self.model.state_dict(), *[m.state_dict() for m in self.extra_state.values()],
                self.optimizer.state_dict())
            if not summary['ranks_in_sync'] and collectives.is_main():
                print('warning: the ranks ended with different weights or optimiser states',
                      file=sys.stderr)
        self.run.write_json('summary.json', summary)
        self.run.write_json(family_files.PARAMETERS_FILE, family_files.parameters(
            _plain(vars(opt)), self.model, self._seconds(), self.rounded_family_files))
        print(f'finished: last-epoch test top1 {summary["last_top1"]:.2f}, '
              f'best {summary["best_top1"]:.2f} (choosing by test accuracy is optimistic)')
        return summary


def _plain(options: dict) -> dict:
    """Options as plain values, so the checkpoint loads with weights_only=True."""
    return {k: v if isinstance(v, (int, float, str, bool, type(None), list)) else str(v)
            for k, v in options.items()}


def _resume_path(opt, run: RunFolder):
    if opt.resume is None:
        return None
    path = run.file(LAST_CKPT) if opt.resume == 'last' else opt.resume
    if not os.path.isfile(path):
        raise ConfigError(f'--resume: no checkpoint at {path!r}; start without --resume')
    return path


def _prepare(opt):
    configure_determinism(opt.deterministic)
    if opt.dali is not None:
        raise ConfigError('--dali is not supported; drop it (the default loader is used)')
    device = collectives.device() if collectives.is_distributed() else select_device(opt.device)
    note = amp_cpu_note(getattr(opt, 'amp', False), device)
    if note and collectives.is_main():
        print(note)
    if collectives.world_size() > 1:  # before any other collective: a mismatch could hang them
        collectives.check_consistent(_option_values(opt))
    torch.manual_seed(opt.seed)
    return device


# Options that may differ between the ranks of one run (paths and resources of each node).
LOCAL_OPTIONS = ('data_folder', 'save_dir', 'resume', 'gpu_id', 'device', 'num_workers', 'print_freq',
                 'multiprocessing_distributed', 'nproc', 'dist_url', 'dist_timeout', 'path_t',
                 'num_workers_per_node')


def _option_values(opt) -> dict:
    return {f'--{k}': v for k, v in _plain(vars(opt)).items() if k not in LOCAL_OPTIONS}


def _consistency(opt, data, teacher=None, groups=None) -> dict:
    """What every rank of a distributed run must agree on (checked before training)."""
    if collectives.world_size() == 1:
        return {}
    values = _option_values(opt)
    values.update({'the training images': len(data.train), 'the test images': len(data.val)})
    if teacher is not None:
        values['the teacher weights'] = collectives.state_digest(teacher.state_dict())
    if groups is not None:  # ckagroup and the monitor
        values['the teacher groups'] = groups.teacher
    return values


def run_teacher(argv=None) -> dict:
    """train_teacher.py: in this process, or on every rank of a distributed run."""
    return distributed.launch(_teacher, options_mod.parse_teacher_options(argv))


def run_student(argv=None) -> dict:
    """train_student.py: in this process, or on every rank of a distributed run."""
    return distributed.launch(_student, options_mod.parse_student_options(argv))


def _teacher(opt) -> dict:
    started = time.time()
    device = _prepare(opt)
    data = collectives.local_main_first(lambda: load_data(opt))
    model = build_student(opt.model, data.num_classes, opt.dataset)
    arch = models.resolve_model_name(opt.model, opt.dataset)
    run = RunFolder(os.path.join(opt.save_dir, 'teachers', options_mod.teacher_run_name(opt)),
                    _plain(vars(opt)), resume=opt.resume is not None, enabled=collectives.is_main())
    prepare_model(model.to(device), opt)
    loaders = make_loaders(opt, data.train, data.val, device, data)
    trainer = Trainer(opt, run, model, CrossEntropyObjective(model), model, model.parameters(),
                      device, *loaders,
                      checkpoint_extra={'arch': arch, 'dataset': opt.dataset,
                                        'num_classes': data.num_classes},
                      consistency=_consistency(opt, data), started=started, rounded_family_files=True)
    resume = _resume_path(opt, run)
    if resume:
        trainer.resume(resume)
    print(f'training {arch} on {opt.dataset} ({len(data.train)} images) on {device}; run folder {run.path}')
    try:
        return trainer.fit()
    finally:
        run.close()


def _student(opt) -> dict:
    started = time.time()
    device = _prepare(opt)
    if opt.path_t is None:
        raise ConfigError('--path_t is required: the teacher checkpoint to distil from')
    data = collectives.local_main_first(lambda: load_data(opt))
    teacher, teacher_arch = load_teacher(opt.path_t, data.num_classes, opt.dataset, device)
    opt.model_t = teacher_arch
    student = build_student(opt.model_s, data.num_classes, opt.dataset).to(device)
    student_arch = models.resolve_model_name(opt.model_s, opt.dataset)
    run = RunFolder(os.path.join(opt.save_dir, 'students', options_mod.student_run_name(opt, teacher_arch)),
                    _plain(vars(opt)), resume=opt.resume is not None, enabled=collectives.is_main())
    teacher_groups.check_resume_cka_options(opt, run.saved_options)
    input_shape = tuple(data.train[0][0].shape)
    method = distiller_class(opt.distill)
    note = zero_weight_note(opt, method)
    if note and collectives.is_main():
        print(note)
    monitored = monitor_wanted(data.val, opt)
    groups = _paired_groups(opt, method, monitored, student, teacher, teacher_arch, input_shape, device, run)
    ctx = DistillContext(student=student, teacher=teacher, student_name=student_arch,
                         teacher_name=teacher_arch, num_classes=data.num_classes, input_shape=input_shape,
                         num_train_samples=len(data.train), device=device, opt=opt,
                         groups=groups if _term_needs_groups(opt, method) else None,
                         contrastive_dataset=ContrastiveDataset)
    try:
        distiller = method(ctx).to(device)
    except ValueError as exc:  # a method's own check of its options against these models
        raise ConfigError(f'--distill {opt.distill}: {exc}') from None
    monitor = None
    if monitored and groups is not None:
        monitor = build_monitor(student, teacher, groups, data.val, opt, input_shape, device)
    freeze(teacher)
    train_set = distiller.wrap_train_dataset(data.train)
    loaders = make_loaders(opt, train_set, data.val, device, data)
    tapped = distiller.taps is not None or monitor is not None
    prepare_model(student, opt, taps=tapped)
    prepare_model(teacher, opt, taps=tapped)
    trainable = list(student.parameters()) + list(distiller.parameters())
    predict = lambda images: distiller.predict(student, images)
    trainer = Trainer(opt, run, student, DistillObjective(student, teacher, distiller, opt), predict,
                      trainable, device, *loaders,
                      checkpoint_extra={'arch': student_arch, 'dataset': opt.dataset,
                                        'num_classes': data.num_classes, 'teacher_arch': teacher_arch,
                                        'distill': opt.distill},
                      extra_state={'distiller': distiller},
                      consistency=_consistency(opt, data, teacher, groups), started=started)
    resume = _resume_path(opt, run)
    if resume:
        trainer.resume(resume)
    elif not opt.skip_validation:
        teacher_acc = validate(teacher, loaders[1], device, trainer.step_options)
        print(f'teacher {teacher_arch} test top1 {teacher_acc["top1"]:.2f}')
        run.write_json('teacher_accuracy.json', teacher_acc)
    if groups is not None and not (resume and os.path.exists(run.file(teacher_groups.GROUPS_FILE))):
        teacher_groups.write_teacher_groups(run, groups.record, step=trainer.start_epoch)
    print(f'distilling {teacher_arch} -> {student_arch} with {opt.distill} on {device}; run folder {run.path}')
    try:
        return trainer.fit(end_epoch_hook=lambda epoch: {
            **distiller.end_epoch(epoch, run), **(monitor.end_epoch(epoch, run) if monitor else {})})
    finally:
        run.close()


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


def _paired_groups(opt, method, monitored: bool, student, teacher, teacher_arch, input_shape, device, run):
    """The run's paired CKA groups, for a method whose term needs them or for the CKA monitor
    (None when neither asks; for the monitor alone, also when these models cannot be grouped so:
    training goes on without monitoring)."""
    if not (_term_needs_groups(opt, method) or monitored):
        return None
    resume_file = run.file(teacher_groups.GROUPS_FILE) if opt.resume is not None else None
    try:
        return teacher_groups.pair_teacher_groups(
            opt, student, teacher, teacher_arch, input_shape, lambda: load_data(opt, augment=False).train,
            device, resume_file=resume_file)
    except ConfigError as exc:
        if method.needs_teacher_groups:  # its own --cka_* options are wrong, whatever -b says
            raise
        print(f'note: CKA monitoring is off for this run: {exc}')
        return None


def main(run, argv=None) -> int:
    """Entry-script wrapper: user errors become one line on stderr and exit status 2; a rank of a
    distributed run that died or crashed, one line and exit status 1."""
    try:
        run(argv)
    except ConfigError as exc:
        if not getattr(exc, 'quiet', False):  # torchrun: rank 0 says what every rank found
            print(f'error: {exc}', file=sys.stderr)
        return 2
    except DistributedFailure as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    return 0
