"""What a run sets up before its first epoch: the process (determinism, device, seed, the ranks'
agreement on the options), the data and its loaders, and the models' memory format and compile."""
from __future__ import annotations

import os

import torch
from torch.utils.data.distributed import DistributedSampler

import models
from dataset import DatasetUnavailableError, build_datasets
from dataset.device_data import DeviceImageLoader, uint8_images
from helper.loops import amp_cpu_note
from helper.options import plain_options
from runtime import collectives
from runtime.errors import ConfigError

# Options that may differ between the ranks of one run (paths and resources of each node).
LOCAL_OPTIONS = ('data_folder', 'save_dir', 'resume', 'gpu_id', 'device', 'num_workers', 'print_freq',
                 'multiprocessing_distributed', 'nproc', 'dist_url', 'dist_timeout', 'path_t',
                 'num_workers_per_node')


def select_device(name: str) -> torch.device:
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ConfigError(f'--device {name} asked for CUDA but none is available; use --device cpu')
    return device


def configure_determinism(deterministic: bool) -> None:
    if deterministic:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def prepare_process(opt) -> torch.device:
    """Determinism, the device (a distributed rank's own), the --amp note, the ranks' agreement on
    the options, and the seed; returns the device."""
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


def _option_values(opt) -> dict:
    return {f'--{k}': v for k, v in plain_options(opt).items() if k not in LOCAL_OPTIONS}


def consistency(opt, data, teacher=None, groups=None) -> dict:
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


def load_data(opt, augment=True):
    try:
        return build_datasets(opt.dataset, opt.data_folder, train_per_class=opt.train_per_class,
                              val_per_class=getattr(opt, 'val_per_class', None),
                              val_split_per_class=getattr(opt, 'val_split_per_class', None), augment=augment)
    except (DatasetUnavailableError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def build_model(name: str, num_classes: int, dataset: str):
    """`models.build_model`, an unknown name refused in one line."""
    try:
        return models.build_model(name, num_classes=num_classes, dataset=dataset)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def make_loaders(opt, train_set, val_set, device, data=None):
    """Loaders of `--batch_size` images with `--num_workers` workers, both per process.

    Distributed: the training set is split by a DistributedSampler (shuffled by --seed and the
    epoch; padded by repeating a few samples so that every rank gets as many), the evaluation set
    as `make_eval_loader` splits it. `--data_on_device` (needs `data`, the DataBundle): both sets
    as uint8 on the device instead.
    """
    generator = torch.Generator()
    sampler = DistributedSampler(train_set, shuffle=True, seed=opt.seed) if collectives.world_size() > 1 else None
    if getattr(opt, 'data_on_device', False):
        extras = _batch_extras(opt, train_set, data)
        train_loader = DeviceImageLoader(*_device_arrays(opt, data.train, data), train=True, generator=generator,
                                         sampler=sampler, batch_extras=extras, **_device_options(opt, data, device))
    else:  # a sampler, when there is one, gives the order (shuffle must then stay off)
        train_loader = torch.utils.data.DataLoader(train_set, shuffle=sampler is None, sampler=sampler,
                                                   generator=generator, **_loader_options(opt, device))
    return train_loader, make_eval_loader(opt, val_set, device, data), generator


def make_eval_loader(opt, dataset, device, data=None):
    """An evaluation loader of `dataset` in its order. Distributed: split by a ShardSampler (no
    padding: each sample is evaluated once, the sums are added over ranks). `--data_on_device`
    (needs `data`, the DataBundle): as uint8 on the device."""
    sampler = collectives.ShardSampler(len(dataset)) if collectives.world_size() > 1 else None
    if getattr(opt, 'data_on_device', False):
        return DeviceImageLoader(*_device_arrays(opt, dataset, data), train=False, sampler=sampler,
                                 **_device_options(opt, data, device))
    return torch.utils.data.DataLoader(dataset, shuffle=False, sampler=sampler, **_loader_options(opt, device))


def _loader_options(opt, device) -> dict:
    return dict(batch_size=opt.batch_size, num_workers=opt.num_workers, pin_memory=device.type == 'cuda',
                persistent_workers=False)


def _device_options(opt, data, device) -> dict:
    return dict(mean=data.mean, std=data.std, batch_size=opt.batch_size, device=device,
                channels_last=opt.channels_last)


def _batch_extras(opt, train_set, data):
    """What a method's wrapper of the training set (CRD's indices) draws per batch; None unwrapped."""
    if train_set is data.train:
        return None
    if getattr(train_set, 'dataset', None) is not data.train or not hasattr(train_set, 'batch_extras'):
        raise ConfigError(f'--data_on_device cannot feed --distill {opt.distill}: its data set wrapper '
                          f'{type(train_set).__name__} has no batch_extras; drop --data_on_device')
    return train_set.batch_extras


def _device_arrays(opt, part, data):
    try:
        return uint8_images(part, data.image_size)
    except ValueError as exc:
        raise ConfigError(f'--data_on_device: {exc}; drop --data_on_device for --dataset {opt.dataset}') from None


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
