"""What train_teacher.py and train_student.py do, importable so that tests call it directly."""
from __future__ import annotations

import os
import random
import sys
import time

import numpy as np
import torch

import models
from dataset import DatasetUnavailableError, build_datasets
from distiller_zoo import DistillContext, build_distiller
from helper import options as options_mod
from helper.checkpoint import freeze, load_checkpoint, load_teacher, save_atomic
from helper.errors import ConfigError
from helper.loops import CrossEntropyObjective, DistillObjective, train_epoch, validate
from helper.run_folder import LAST_CKPT, RunFolder


def select_device(name: str) -> torch.device:
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ConfigError(f'--device {name} asked for CUDA but none is available; use --device cpu')
    return device


def seed_epoch(seed: int, epoch: int) -> None:
    """Reseed every generator at each epoch start, so a resumed run replays the same epochs."""
    value = seed * 1_000_003 + epoch
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


def make_loaders(opt, train_set, val_set, device):
    generator = torch.Generator()
    pin = device.type == 'cuda'
    common = dict(num_workers=opt.num_workers, pin_memory=pin,
                  persistent_workers=False)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=opt.batch_size, shuffle=True,
                                               generator=generator, **common)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=opt.batch_size, shuffle=False, **common)
    return train_loader, val_loader, generator


def load_data(opt, augment=True):
    try:
        return build_datasets(opt.dataset, opt.data_folder, train_per_class=opt.train_per_class,
                              val_per_class=getattr(opt, 'val_per_class', None), augment=augment)
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
                 train_loader, val_loader, generator, checkpoint_extra, extra_state=None):
        self.opt, self.run, self.model, self.objective = opt, run, model, objective
        self.predict, self.device = predict, device
        self.train_loader, self.val_loader, self.generator = train_loader, val_loader, generator
        self.checkpoint_extra = checkpoint_extra  # arch, data set, class count, ...
        self.extra_state = extra_state or {}  # name -> module whose state is checkpointed too
        self.eval_modules = [model] + list(self.extra_state.values())
        self.optimizer = torch.optim.SGD(trainable, lr=opt.learning_rate, momentum=opt.momentum,
                                         weight_decay=opt.weight_decay)
        self.history, self.best_acc, self.start_epoch = [], 0.0, 1

    def resume(self, path: str) -> None:
        ckpt = load_checkpoint(path)
        if ckpt.get('arch') != self.checkpoint_extra['arch']:
            raise ConfigError(f'--resume {path!r} is a {ckpt.get("arch")} checkpoint, '
                              f'not {self.checkpoint_extra["arch"]}')
        self.model.load_state_dict(ckpt['model'])
        for name, module in self.extra_state.items():
            module.load_state_dict(ckpt[name])
        self.optimizer.load_state_dict(ckpt['optimizer'])
        self.history = list(ckpt['history'])
        self.best_acc = ckpt['best_acc']
        self.start_epoch = ckpt['epoch'] + 1
        print(f'resumed from {path} at epoch {ckpt["epoch"]}')

    def _state(self, epoch: int) -> dict:
        state = {'model': self.model.state_dict(), 'epoch': epoch, 'best_acc': self.best_acc,
                 'optimizer': self.optimizer.state_dict(), 'history': self.history,
                 'opt': _plain(vars(self.opt)), **self.checkpoint_extra}
        for name, module in self.extra_state.items():
            state[name] = module.state_dict()
            deploy = getattr(module, 'deploy_state', dict)()
            if deploy:
                state['deploy'] = deploy
        return state

    def fit(self, end_epoch_hook=None) -> dict:
        opt = self.opt
        for epoch in range(self.start_epoch, opt.epochs + 1):
            lr = lr_at(opt, epoch)
            for group in self.optimizer.param_groups:
                group['lr'] = lr
            seed_epoch(opt.seed, epoch)
            self.generator.manual_seed(opt.seed * 1_000_003 + epoch)
            train = train_epoch(epoch, self.train_loader, self.objective, self.optimizer, self.device,
                                opt.print_freq, opt.epochs)
            extra = end_epoch_hook(epoch) if end_epoch_hook else {}
            for module in self.eval_modules:
                module.eval()
            test = validate(self.predict, self.val_loader, self.device)
            record = {'epoch': epoch, 'lr': lr, 'time': train.pop('time'),
                      **{f'train/{k}': v for k, v in train.items()},
                      **{f'test/{k}': v for k, v in test.items()}, **extra}
            is_best = test['top1'] > self.best_acc
            self.best_acc = max(self.best_acc, test['top1'])
            self.run.log_epoch(self.history, record)
            print(f'epoch {epoch}: train top1 {train["top1"]:.2f} test top1 {test["top1"]:.2f} '
                  f'(best {self.best_acc:.2f}) lr {lr:g} {record["time"]:.1f}s', flush=True)
            if self.run.enabled:
                state = self._state(epoch)
                save_atomic(state, self.run.file(LAST_CKPT))
                if is_best:
                    save_atomic(state, self.run.file(f'{self.checkpoint_extra["arch"]}_best.pth'))
        summary = {'best_top1': self.best_acc,
                   'last_top1': self.history[-1]['test/top1'] if self.history else None,
                   'last_top5': self.history[-1]['test/top5'] if self.history else None,
                   'epochs': len(self.history)}
        self.run.write_json('summary.json', summary)
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
    if opt.multiprocessing_distributed:
        raise ConfigError('--multiprocessing-distributed is not built yet; run on one device')
    device = select_device(opt.device)
    torch.manual_seed(opt.seed)
    return device


def run_teacher(argv=None) -> dict:
    opt = options_mod.parse_teacher_options(argv)
    device = _prepare(opt)
    data = load_data(opt)
    model = build_student(opt.model, data.num_classes, opt.dataset)
    arch = models.resolve_model_name(opt.model, opt.dataset)
    run = RunFolder(os.path.join(opt.save_dir, 'teachers', options_mod.teacher_run_name(opt)),
                    _plain(vars(opt)), resume=opt.resume is not None)
    model.to(device)
    loaders = make_loaders(opt, data.train, data.val, device)
    trainer = Trainer(opt, run, model, CrossEntropyObjective(model), model, model.parameters(),
                      device, *loaders,
                      checkpoint_extra={'arch': arch, 'dataset': opt.dataset,
                                        'num_classes': data.num_classes})
    resume = _resume_path(opt, run)
    if resume:
        trainer.resume(resume)
    print(f'training {arch} on {opt.dataset} ({len(data.train)} images) on {device}; run folder {run.path}')
    try:
        return trainer.fit()
    finally:
        run.close()


def run_student(argv=None) -> dict:
    opt = options_mod.parse_student_options(argv)
    device = _prepare(opt)
    if opt.path_t is None:
        raise ConfigError('--path_t is required: the teacher checkpoint to distil from')
    data = load_data(opt)
    teacher, teacher_arch = load_teacher(opt.path_t, data.num_classes, opt.dataset, device)
    opt.model_t = teacher_arch
    student = build_student(opt.model_s, data.num_classes, opt.dataset).to(device)
    student_arch = models.resolve_model_name(opt.model_s, opt.dataset)
    run = RunFolder(os.path.join(opt.save_dir, 'students', options_mod.student_run_name(opt, teacher_arch)),
                    _plain(vars(opt)), resume=opt.resume is not None)
    ctx = DistillContext(student=student, teacher=teacher, student_name=student_arch,
                         teacher_name=teacher_arch, num_classes=data.num_classes,
                         input_shape=tuple(data.train[0][0].shape), num_train_samples=len(data.train),
                         device=device, opt=opt, run_dir=run.path,
                         eval_train_set=lambda: load_data(opt, augment=False).train)
    distiller = build_distiller(opt.distill, ctx).to(device)
    freeze(teacher)
    train_set = distiller.wrap_train_dataset(data.train)
    loaders = make_loaders(opt, train_set, data.val, device)
    trainable = list(student.parameters()) + list(distiller.parameters())
    predict = lambda images: distiller.predict(student, images)
    trainer = Trainer(opt, run, student, DistillObjective(student, teacher, distiller, opt), predict,
                      trainable, device, *loaders,
                      checkpoint_extra={'arch': student_arch, 'dataset': opt.dataset,
                                        'num_classes': data.num_classes, 'teacher_arch': teacher_arch,
                                        'distill': opt.distill},
                      extra_state={'distiller': distiller})
    resume = _resume_path(opt, run)
    if resume:
        trainer.resume(resume)
    elif not opt.skip_validation:
        teacher_acc = validate(teacher, loaders[1], device)
        print(f'teacher {teacher_arch} test top1 {teacher_acc["top1"]:.2f}')
        run.write_json('teacher_accuracy.json', teacher_acc)
    print(f'distilling {teacher_arch} -> {student_arch} with {opt.distill} on {device}; run folder {run.path}')
    try:
        return trainer.fit(end_epoch_hook=lambda epoch: distiller.end_epoch(epoch, run))
    finally:
        run.close()


def main(run, argv=None) -> int:
    """Entry-script wrapper: user errors become one line on stderr and exit status 2."""
    try:
        run(argv)
    except ConfigError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    return 0
