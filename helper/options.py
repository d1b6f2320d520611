"""Command-line options of train_teacher.py and train_student.py.

The flags, short forms, defaults and choices of the older CRD / SemCKD / SimKD scripts are kept so
that users' shell scripts run unchanged; new flags are added after them. A method's own flags are
declared once, by its distiller (`Distiller.add_options`): the student parser takes `--distill`'s
choices and those flags from the registry in `distiller_zoo`.
"""
from __future__ import annotations

import argparse
import os
import zlib
from typing import List

from dataset import DATASET_NAMES
from distiller_zoo import distiller_class, distiller_names
from distiller_zoo.ckagroup import MONITOR_FLAGS
from distiller_zoo.ckagroup import add_options as add_cka_options
from runtime.errors import ConfigError

# The older repos train these models (students and teachers) with lr 0.01 whatever --learning_rate says.
LOW_LR_MODELS = ('MobileNetV2', 'MobileNetV2_1_0', 'ShuffleV1', 'ShuffleV2', 'ShuffleV2_1_5')


SEED_LIMIT = 2**32


def seed_of_trial(trial: str) -> int:
    """The default seed of a run: a trial of digits is that number (below 2**32), any other
    trial name its CRC-32, so that every trial draws its own initialisation, data order and
    augmentation, and the same trial draws the same again."""
    if trial.isascii() and trial.isdigit() and int(trial) < SEED_LIMIT:
        return int(trial)
    return zlib.crc32(trial.encode('utf-8'))


def _common(parser: argparse.ArgumentParser, trial_flags: tuple, trial_default: str) -> None:
    add = parser.add_argument
    add('--print_freq', type=int, default=200, help='print frequency (batches)')
    add('--batch_size', type=int, default=64,
        help='batch size; a distributed run divides it by the processes per node (the older repos\' rule)')
    add('--num_workers', type=int, default=8,
        help='data loading workers (0: in the training process); a distributed run divides them by '
             'the processes per node, rounding up')
    add('--epochs', type=int, default=240, help='number of training epochs')
    add('--gpu_id', type=str, default=None,
        help='ids for CUDA_VISIBLE_DEVICES, e.g. "0,1" (default: leave the environment alone)')
    add('--learning_rate', type=float, default=0.05, help='learning rate')
    add('--lr_decay_epochs', type=str, default='150,180,210', help='epochs where lr decays, comma list')
    add('--lr_decay_rate', type=float, default=0.1, help='decay rate for learning rate')
    add('--weight_decay', type=float, default=5e-4, help='weight decay')
    add('--momentum', type=float, default=0.9, help='momentum')
    add('--dataset', type=str, default='cifar100', choices=DATASET_NAMES, help='dataset')
    add(*trial_flags, type=str, default=trial_default,
        help='trial id: names the run folder and, unless --seed is given, sets the seed')
    add('--dali', type=str, choices=['cpu', 'gpu'], default=None,
        help='NVIDIA DALI loading of the older repos: not supported here (use the default loader)')
    add('--multiprocessing-distributed', action='store_true',
        help='spawn --nproc training processes here (torch.distributed: NCCL on GPUs, gloo on CPU); '
             'for several nodes launch with torchrun instead (docs/DISTRIBUTED.md)')
    add('--dist-url', default='tcp://127.0.0.1:23451', type=str,
        help='where the --multiprocessing-distributed processes meet: tcp://HOST:PORT (a free port), '
             'or file:///PATH (a new file)')
    add('--deterministic', action='store_true', help='deterministic algorithms and data order')
    # Options the older repos did not have.
    add('--data_folder', type=str, default='./data', help='where data sets are read (and downloaded)')
    add('--seed', type=int, default=None,
        help='random seed (model init, data order, augmentation); default: from --trial (a number: '
             'that number, other text: its CRC-32)')
    add('--resume', nargs='?', const='last', default=None, metavar='CKPT',
        help="continue an interrupted run: from its run folder's last checkpoint, or from CKPT")
    add('--save_dir', type=str, default='./save', help='root folder of run folders')
    add('--device', type=str, default='auto', help="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:N'")
    add('--train_per_class', type=int, default=None,
        help='train on the first N images of each class (class-balanced subset)')
    add('--val_per_class', type=int, default=None,
        help='evaluate on the first N test images of each class (quick experiments only)')
    add('--val_split_per_class', type=int, default=None,
        help='evaluate each epoch (and CKA-monitor) on N training images per class held out after the '
             'first --train_per_class of each class, unaugmented, instead of on test images')
    add('--nproc', type=int, default=None,
        help='processes of --multiprocessing-distributed (default: one per visible GPU; '
             'with --device cpu or no GPU: N CPU processes)')
    add('--dist_timeout', type=float, default=1800,
        help='seconds a distributed process waits for the others (start-up, collectives) before '
             'it gives up with an error')
    # Faster steps (docs/FAST_TRAINING.md); off by default, so the classic path stays as it was.
    add('--data_on_device', action='store_true',
        help='hold the training and test images on the device as uint8 and crop/flip/normalise '
             'there (small-image sets: cifar10/100, synthetic, fashionmnist, cinic10, folder up to 64 px)')
    add('--amp', action='store_true',
        help='bf16 autocast for the forward passes (the CKA math stays in float32)')
    add('--channels_last', action='store_true', help='models and images in channels_last memory format')
    add('--compile', nargs='?', const='default', default=None,
        choices=['default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs'],
        help="torch.compile the student and the teacher (a mode may follow; 'reduce-overhead' "
             'adds CUDA graphs on a GPU)')


def teacher_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser('train a teacher (or any model) with cross-entropy')
    _common(parser, trial_flags=('-t', '--trial'), trial_default='0')
    parser.add_argument('--model', type=str, default='resnet32x4', help='model name (see models.model_dict)')
    return parser


def student_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser('distil a student from a trained teacher')
    _common(parser, trial_flags=('--trial',), trial_default='1')
    add = parser.add_argument
    add('--model_s', type=str, default='resnet8x4', help='student model name')
    add('--path_t', type=str, default=None, help='teacher checkpoint')
    add('--kd_T', type=float, default=4, help='temperature for KD distillation')
    add('--distill', type=str, default='kd', choices=distiller_names())
    add('-c', '--cls', type=float, default=1.0, help='weight for classification')
    add('-d', '--div', type=float, default=1.0, help='weight balance for KD')
    add('-b', '--beta', type=float, default=0.0, help='weight balance for other losses')
    add('--skip-validation', action='store_true', help='skip validation of teacher')
    add_cka_options(parser, only=MONITOR_FLAGS)  # the CKA monitor of every method
    for name in distiller_names():
        distiller_class(name).add_options(parser.add_argument_group(f'--distill {name}'))
    return parser


def plain_options(opt: argparse.Namespace) -> dict:
    """The options as plain values (options.json, checkpoints loaded with weights_only=True)."""
    return {k: v if isinstance(v, (int, float, str, bool, type(None), list)) else str(v)
            for k, v in vars(opt).items()}


def decay_epochs(text) -> List[int]:
    """--lr_decay_epochs as the epochs after which the learning rate drops ('150,180,210')."""
    return [int(e) for e in str(text).split(',') if e.strip()]


def _finish(opt: argparse.Namespace) -> argparse.Namespace:
    opt.lr_decay_epochs = decay_epochs(opt.lr_decay_epochs)
    if opt.gpu_id is not None:
        os.environ['CUDA_VISIBLE_DEVICES'] = opt.gpu_id
    if opt.nproc is not None and opt.nproc < 1:
        raise ConfigError(f'--nproc {opt.nproc}: give at least 1 process')
    if not opt.dist_timeout > 0:
        raise ConfigError(f'--dist_timeout {opt.dist_timeout}: give a positive number of seconds')
    if opt.val_split_per_class is not None:
        if opt.val_split_per_class < 1:
            raise ConfigError(f'--val_split_per_class {opt.val_split_per_class}: give at least 1 image per class')
        if opt.train_per_class is None:
            raise ConfigError('--val_split_per_class holds images out after the training subset; give --train_per_class too')
        if opt.val_per_class is not None:
            raise ConfigError('--val_split_per_class and --val_per_class both choose the validation set; drop one')
    if opt.seed is None:
        opt.seed = seed_of_trial(opt.trial)
    elif not 0 <= opt.seed < SEED_LIMIT:
        raise ConfigError(f'--seed {opt.seed}: give a seed from 0 to {SEED_LIMIT - 1}')
    return opt


def _low_lr_rule(opt: argparse.Namespace, model: str) -> argparse.Namespace:
    """Apply the older repos' lr rule; `requested_learning_rate` keeps what was asked for, so that
    options.json shows both (`learning_rate` is the one that trains)."""
    opt.requested_learning_rate = opt.learning_rate
    if model in LOW_LR_MODELS and opt.learning_rate != 0.01:
        print(f'note: --learning_rate {opt.learning_rate} replaced by 0.01 for {model} '
              '(the rule of the older repos for MobileNet/ShuffleNet models)')
        opt.learning_rate = 0.01
    return opt


def parse_teacher_options(argv=None) -> argparse.Namespace:
    opt = _finish(teacher_parser().parse_args(argv))
    return _low_lr_rule(opt, opt.model)


def parse_student_options(argv=None) -> argparse.Namespace:
    opt = _finish(student_parser().parse_args(argv))
    for name in distiller_names():  # every flag is checked, whatever --distill (the CKA monitor reads ckagroup's)
        distiller_class(name).check_options(opt)
    return _low_lr_rule(opt, opt.model_s)


def teacher_run_name(opt: argparse.Namespace) -> str:
    return f'{opt.model}_vanilla_{opt.dataset}_lr_{opt.learning_rate}_decay_{opt.weight_decay}_trial_{opt.trial}'


def student_run_name(opt: argparse.Namespace, teacher_name: str) -> str:
    # '-' instead of the older ':' so that the folder name is valid on every OS.
    return (f'S-{opt.model_s}_T-{teacher_name}_{opt.dataset}_{opt.distill}'
            f'_r-{opt.cls}_a-{opt.div}_b-{opt.beta}_{opt.trial}')
