"""The epoch loop shared by teachers and students: the schedule, train, validate, log, checkpoint,
resume, and the distributed wrapping of the step."""
from __future__ import annotations

import os
import random
import sys
import time
from typing import Optional

import numpy as np
import torch
from torch.utils.data.distributed import DistributedSampler

from helper import family_files
from helper.checkpoint import load_checkpoint, save_atomic
from helper.loops import StepOptions, train_epoch, validate
from helper.options import plain_options
from helper.run_folder import LAST_CKPT, RunFolder
from runtime import collectives
from runtime.errors import ConfigError


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


def lr_at(opt, epoch: int) -> float:
    """Step schedule of the older repos: decay by lr_decay_rate after each of lr_decay_epochs."""
    steps = sum(epoch > milestone for milestone in opt.lr_decay_epochs)
    return opt.learning_rate * opt.lr_decay_rate ** steps


def sgd(opt, trainable) -> torch.optim.SGD:
    """The older repos' optimiser: SGD with --learning_rate, --momentum and --weight_decay."""
    return torch.optim.SGD(trainable, lr=opt.learning_rate, momentum=opt.momentum, weight_decay=opt.weight_decay)


class Trainer:
    """The epoch loop shared by teachers and students: train, validate, log, checkpoint, resume."""

    def __init__(self, opt, run: RunFolder, model, objective, predict, trainable, device,
                 train_loader, val_loader, generator, checkpoint_extra, extra_state=None,
                 consistency=None, started=None, rounded_family_files=False, test_loader=None,
                 test_images=None):
        self.opt, self.run, self.model, self.objective = opt, run, model, objective
        self.predict, self.device = predict, device
        self.train_loader, self.val_loader, self.generator = train_loader, val_loader, generator
        # the full test set when val_loader holds images held out from training (evaluated once,
        # after the last epoch); None when val_loader is the test set
        self.test_loader, self.test_images = test_loader, test_images
        self.val_name = 'test' if test_loader is None else 'held-out'
        self.checkpoint_extra = checkpoint_extra  # arch, data set, class count, ...
        self.extra_state = extra_state or {}  # name -> module whose state is checkpointed too
        self.eval_modules = [model] + list(self.extra_state.values())
        self.optimizer = sgd(opt, trainable)
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
                 'opt': plain_options(self.opt), 'seed': self.opt.seed,
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

    def _evaluate(self, loader) -> dict:
        """`validate` of the deployed prediction over `loader`, the student and distiller in eval mode."""
        for module in self.eval_modules:
            module.eval()
        return validate(self.predict, loader, self.device, self.step_options)

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
            test = self._evaluate(self.val_loader)
            record = {'epoch': epoch, 'lr': lr, 'time': train.pop('time'),
                      **{f'train/{k}': v for k, v in train.items()},
                      **{f'test/{k}': v for k, v in test.items()}, **extra}
            is_best = test['top1'] > self.best_acc
            self.best_acc = max(self.best_acc, test['top1'])
            self.run.log_epoch(self.history, record)
            if collectives.is_main():
                print(f'epoch {epoch}: train top1 {train["top1"]:.2f} {self.val_name} top1 {test["top1"]:.2f} '
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
        if self.test_loader is not None:
            final = self._evaluate(self.test_loader)  # also when a finished run is reopened (no epoch ran)
            summary.update(test_top1=final['top1'], test_top5=final['top5'], test_images=self.test_images)
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
            plain_options(opt), self.model, self._seconds(), self.rounded_family_files))
        if self.test_loader is None:
            print(f'finished: last-epoch test top1 {summary["last_top1"]:.2f}, '
                  f'best {summary["best_top1"]:.2f} (choosing by test accuracy is optimistic)')
        else:
            print(f'finished: last-epoch held-out top1 {summary["last_top1"]:.2f} (best {summary["best_top1"]:.2f}); '
                  f'test top1 of the last epoch\'s weights {summary["test_top1"]:.2f} on '
                  f'{summary["test_images"]} test images, the test set\'s only use')
        return summary


def resume_path(opt, run: RunFolder) -> Optional[str]:
    """The checkpoint --resume names (its run folder's last one by default), or None."""
    if opt.resume is None:
        return None
    path = run.file(LAST_CKPT) if opt.resume == 'last' else opt.resume
    if not os.path.isfile(path):
        raise ConfigError(f'--resume: no checkpoint at {path!r}; start without --resume')
    return path
