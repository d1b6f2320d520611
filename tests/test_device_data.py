"""--data_on_device: the on-device loader against the classic torchvision transforms (the oracle)."""
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from dataset import build_datasets, subset
from dataset.device_data import DeviceImageLoader, uint8_images

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _images(n=12, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _classic(image: np.ndarray, top: int, left: int, flip: bool, padding: int) -> torch.Tensor:
    """RandomCrop(padding) at (top, left), RandomHorizontalFlip, ToTensor, Normalize."""
    pil = TF.pad(Image.fromarray(image), padding)
    pil = TF.crop(pil, top, left, image.shape[0], image.shape[1])
    if flip:
        pil = TF.hflip(pil)
    return TF.normalize(TF.to_tensor(pil), MEAN, STD)


@pytest.mark.parametrize("channels_last", [False, True])
def test_augmented_batch_equals_classic_transforms(channels_last):
    images = _images()
    loader = DeviceImageLoader(images, list(range(12)), MEAN, STD, 4, 'cpu', train=True,
                               channels_last=channels_last)
    assert loader.padding == 2
    index = torch.tensor([0, 5, 11, 3])
    offsets = torch.tensor([[0, 0], [4, 4], [1, 3], [4, 0]])   # both ends of the offset range
    flips = torch.tensor([False, True, True, False])
    got = loader._normalise(loader._augmented(index, offsets, flips))
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    for row, i in enumerate(index.tolist()):
        expected = _classic(images[i], *offsets[row].tolist(), bool(flips[row]), padding=2)
        assert torch.equal(got[row], expected)


def test_epoch_draws_have_the_classic_distribution():
    n = 4000
    loader = DeviceImageLoader(np.zeros((n, 8, 8, 3), np.uint8), [0] * n, MEAN, STD, 500, 'cpu',
                               train=True, generator=torch.Generator().manual_seed(3))
    seen, tops, lefts, flips = [], [], [], []
    captured = []
    original = loader._augmented
    loader._augmented = lambda index, offsets, flip: captured.append((index, offsets, flip)) or original(index, offsets, flip)
    batches = list(loader)
    assert len(batches) == len(loader) == 8 and all(b[0].shape == (500, 3, 8, 8) for b in batches)
    for index, offsets, flip in captured:
        seen += index.tolist()
        tops += offsets[:, 0].tolist()
        lefts += offsets[:, 1].tolist()
        flips += flip.tolist()
    assert sorted(seen) == list(range(n))                     # a permutation: each image once
    for values in (tops, lefts):                              # uniform over 0..2 * padding
        counts = np.bincount(values, minlength=3)
        assert len(counts) == 3 and np.all(np.abs(counts / n - 1 / 3) < 0.03)
    assert abs(np.mean(flips) - 0.5) < 0.03
    assert seen != list(range(n))                             # shuffled


def test_reproducible_per_seed_and_evaluation_in_order():
    images = _images(n=10, size=8)
    make = lambda seed: DeviceImageLoader(images, list(range(10)), MEAN, STD, 4, 'cpu', train=True,
                                          generator=torch.Generator().manual_seed(seed))
    first, again, other = list(make(0)), list(make(0)), list(make(1))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(first, other))
    evaluation = list(DeviceImageLoader(images, list(range(10)), MEAN, STD, 4, 'cpu', train=False))
    assert [len(t) for _, t in evaluation] == [4, 4, 2]       # the last batch is short, not dropped
    stacked = torch.cat([x for x, _ in evaluation])
    for i in range(10):
        assert torch.equal(stacked[i], TF.normalize(TF.to_tensor(Image.fromarray(images[i])), MEAN, STD))


def test_sampler_gives_the_order():
    loader = DeviceImageLoader(_images(n=6, size=8), list(range(6)), MEAN, STD, 4, 'cpu', train=False,
                               sampler=[5, 1, 3])
    assert len(loader) == 1 and next(iter(loader))[1].tolist() == [5, 1, 3]


def test_uint8_images_of_subsets_and_folders(tmp_path):
    bundle = build_datasets('synthetic')
    part = subset(bundle.train, [3, 1, 4])
    images, targets = uint8_images(part, 32)
    assert np.array_equal(images, bundle.train.data[[3, 1, 4]]) and targets == part.targets
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for c in ('a', 'b'):
            os.makedirs(tmp_path / split / c)
            for i in range(2):   # non-square: brought to 12 x 12 like the classic Resize + CenterCrop
                Image.fromarray(rng.integers(0, 256, (12, 18, 3), dtype=np.uint8)).save(tmp_path / split / c / f'{i}.png')
    folder = build_datasets('folder', str(tmp_path), augment=False)
    images, targets = uint8_images(folder.train, folder.image_size)
    assert images.shape == (4, 12, 12, 3) and targets == [0, 0, 1, 1]
    for i in range(4):
        expected = folder.train[i][0]            # the classic eval transform of the same file
        got = TF.normalize(TF.to_tensor(Image.fromarray(images[i])), folder.mean, folder.std)
        assert torch.equal(got, expected)
    with pytest.raises(ValueError, match='cannot be held on the device'):
        uint8_images(list(range(3)), 32)
