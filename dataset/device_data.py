"""Small-image data sets held on the training device as uint8 and augmented there.

`--data_on_device`: at batch 64 a training step on a GPU takes a few milliseconds, less than a
PIL pipeline needs to decode, crop and convert 64 images; here the whole set is one uint8 tensor
on the device and every batch is one gather. Augmentation has the distribution of the classic
CIFAR-style transforms (`dataset.transforms.small_image_transforms`): a crop at a uniform offset
of the image zero-padded by size // 8 on every side, a horizontal flip with probability 1/2, then
ToTensor's division by 255 and Normalize, with the same floating-point operations (a batch equals
the classic transforms' output for the same offsets and flips, bit for bit).

Randomness: the shuffle, offsets and flips of an epoch are drawn at its start from the loader's
CPU generator (seeded per epoch by the trainer), so a run is reproducible and the same on any
device.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .arrays import ArrayImageDataset, LabeledSubset
from .transforms import SMALL_IMAGE_MAX, fit_to_size


def uint8_images(dataset, size: int) -> tuple:
    """All images of `dataset` as one uint8 N x size x size x 3 array, and their targets.

    Array-backed sets (CIFAR, synthetic, fashionmnist) hand over their array; image folders of
    small images are read once, brought to `size` x `size` like the classic small-image
    transforms (Resize of the shorter side, CenterCrop). Anything else raises ValueError.
    """
    if isinstance(dataset, ArrayImageDataset):
        if dataset.data.shape[1:3] != (size, size):
            raise ValueError(f'images are {dataset.data.shape[1:3]}, expected {size} x {size}')
        return dataset.data, list(dataset.targets)
    if isinstance(dataset, LabeledSubset):
        images, targets = uint8_images(dataset.dataset, size)
        index = np.asarray(dataset.indices, dtype=np.int64)
        return images[index], [targets[i] for i in index]
    if hasattr(dataset, 'samples') and hasattr(dataset, 'loader'):  # an ImageFolder
        if size > SMALL_IMAGE_MAX:
            raise ValueError(f'{size}-pixel images are too large to hold on the device; '
                             f'only sets of images up to {SMALL_IMAGE_MAX} px are')
        images = np.empty((len(dataset.samples), size, size, 3), dtype=np.uint8)
        fit = fit_to_size(size)  # what the classic small-image transforms apply first
        for i, (path, _) in enumerate(dataset.samples):
            images[i] = np.asarray(fit(dataset.loader(path).convert('RGB')))
        return images, [int(t) for _, t in dataset.samples]
    raise ValueError(f'{type(dataset).__name__} cannot be held on the device (needs an array-backed '
                     'set or an image folder of small images)')


class DeviceImageLoader:
    """Batches `(images, targets)` from a uint8 image set held on `device`.

    `train=True`: reshuffled every pass, randomly cropped (padding `size // 8`) and flipped;
    otherwise in order, unaugmented. `sampler`: an index sampler (e.g. a DistributedSampler) to
    take the order from instead. `channels_last`: images come in that memory format (free: the
    gather produces it). Like a DataLoader: `len()` batches, the last one possibly short.
    `batch_extras(index, generator)`: what a data set wrapper adds to each sample (CRD's index and
    contrast indices), drawn for the batch's sample indices from the loader's generator and
    yielded after the targets.
    """

    def __init__(self, images: np.ndarray, targets: Sequence[int], mean, std, batch_size: int,
                 device, *, train: bool, generator: Optional[torch.Generator] = None, sampler=None,
                 channels_last: bool = False, batch_extras: Optional[Callable] = None):
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f'expected uint8 N x H x W x 3 images, got {images.dtype} {images.shape}')
        self.device, self.batch_size, self.train = torch.device(device), int(batch_size), train
        self.generator = generator if generator is not None else torch.Generator()
        self.sampler, self.channels_last, self.batch_extras = sampler, channels_last, batch_extras
        self.size = images.shape[1:3]
        self.padding = max(1, min(self.size) // 8) if train else 0
        data = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        if self.padding:  # padded once here instead of per batch
            p = self.padding
            data = F.pad(data.permute(0, 3, 1, 2), (p, p, p, p)).permute(0, 2, 3, 1).contiguous()
        self.data = data
        self.targets = torch.as_tensor(list(targets), dtype=torch.long, device=self.device)
        self.num_samples = len(images)
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.rows = torch.arange(self.size[0], device=self.device)
        self.cols = torch.arange(self.size[1], device=self.device)

    def _order(self) -> torch.Tensor:
        if self.sampler is not None:
            return torch.as_tensor(list(iter(self.sampler)), dtype=torch.long)
        if self.train:
            return torch.randperm(self.num_samples, generator=self.generator)
        return torch.arange(self.num_samples)

    def __len__(self) -> int:
        count = len(self.sampler) if self.sampler is not None else self.num_samples
        return (count + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        order = self._order()
        count = len(order)
        if self.train:  # every draw of the epoch at once: one transfer, no per-batch sync
            offsets = torch.randint(0, 2 * self.padding + 1, (count, 2), generator=self.generator)
            flips = torch.rand(count, generator=self.generator) < 0.5
            offsets, flips = offsets.to(self.device), flips.to(self.device)
        cpu_order, order = order, order.to(self.device)
        for start in range(0, count, self.batch_size):
            index = order[start:start + self.batch_size]
            if self.train:
                part = slice(start, start + len(index))
                images = self._augmented(index, offsets[part], flips[part])
            else:
                images = self.data[index]
            batch = (self._normalise(images), self.targets[index])
            if self.batch_extras is not None:
                extras = self.batch_extras(cpu_order[start:start + self.batch_size], self.generator)
                batch += tuple(e.to(self.device) for e in extras)
            yield batch

    def _augmented(self, index: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """Crop at the per-sample offsets of the padded images, flipping by reversed columns."""
        rows = offsets[:, :1] + self.rows                                      # (B, H)
        cols = torch.where(flips[:, None], self.cols.flip(0), self.cols) + offsets[:, 1:]  # (B, W)
        return self.data[index[:, None, None], rows[:, :, None], cols[:, None, :]]  # (B, H, W, 3)

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        """ToTensor + Normalize, with their operations: /255, then (x - mean) / std."""
        x = images.permute(0, 3, 1, 2)           # NCHW view of NHWC memory: channels_last strides
        if not self.channels_last:
            x = x.contiguous()
        return x.to(torch.float32).div(255).sub_(self.mean).div_(self.std)
