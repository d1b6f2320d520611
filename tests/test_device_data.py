"""--data_on_device: the on-device loader against the classic torchvision transforms (the oracle)."""
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from dataset import ArrayImageDataset, ContrastiveDataset, IndexedDataset, build_datasets, subset
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


# ---------------------------------------------------------------- CRD's indices on the device

def _labelled(sizes=(5, 8, 12)):
    """An array set with classes of the given sizes, interleaved (class-sorted order != data order)."""
    targets = [c for c, n in enumerate(sizes) for _ in range(n)]
    targets = [targets[i] for i in np.random.default_rng(1).permutation(len(targets))]
    return ArrayImageDataset(_images(n=len(targets), size=8), targets)


def _draw_counts(draw, index, trials, n):
    """How often each sample index appears among the negatives (and as the positive) of `trials` draws."""
    negatives, positives = np.zeros(n), np.zeros(n)
    for _ in range(trials):
        contrast = draw(index)
        negatives += np.bincount(contrast[:, 1:].reshape(-1).numpy(), minlength=n)
        positives += np.bincount(contrast[:, 0].numpy(), minlength=n)
    return negatives, positives


@pytest.mark.parametrize('mode', ['exact', 'relax'])
def test_batch_contrast_indices_follow_the_wrappers_rules_and_distribution(mode):
    data = _labelled()
    targets, n, k = np.asarray(data.targets), len(data), 10
    wrapper = ContrastiveDataset(data, k=k, mode=mode)
    generator = torch.Generator().manual_seed(0)
    index = torch.arange(n)
    returned, contrast = wrapper.batch_extras(index, generator)
    assert torch.equal(returned, index) and contrast.dtype == torch.long and contrast.shape == (n, k + 1)
    for i in range(n):
        negatives = contrast[i, 1:].numpy()
        assert (targets[negatives] != targets[i]).all()          # only other classes
        assert len(set(negatives.tolist())) == k                 # without replacement: every pool holds >= k
        if mode == 'exact':
            assert contrast[i, 0] == i                           # the positive is the sample itself
        else:
            assert targets[contrast[i, 0]] == targets[i]         # a sample of its class
    # the marginal of each draw against the wrapper's own per-sample draws (its __getitem__ path) and
    # the exact value: a sample of another class is one of the k negatives with chance k / n_other,
    # a sample of the same class the relaxed positive with chance 1 / n_class
    trials, sample = 1500, targets.tolist().index(2)             # a sample of the 12-image class
    rng = np.random.default_rng(0)
    on_device = _draw_counts(lambda i: wrapper.batch_extras(i, generator)[1], torch.tensor([sample]), trials, n)
    per_sample = _draw_counts(lambda i: wrapper.sample(int(i[0]), rng)[None], torch.tensor([sample]), trials, n)
    others, same = targets != 2, targets == 2
    for negatives, positives in (on_device, per_sample):
        assert negatives[same].sum() == 0
        assert np.abs(negatives[others] / trials - k / others.sum()).max() < 0.05
        if mode == 'relax':
            assert positives[~same].sum() == 0
            assert np.abs(positives[same] / trials - 1 / same.sum()).max() < 0.04


def test_batch_contrast_indices_draw_with_replacement_from_a_short_pool_and_repeat_per_seed():
    data = _labelled()
    targets, k = np.asarray(data.targets), 15                   # class 2 has 13 others, classes 0 and 1 more
    wrapper = ContrastiveDataset(data, k=k)
    index = torch.tensor([targets.tolist().index(c) for c in (0, 1, 2)])
    _, contrast = wrapper.batch_extras(index, torch.Generator().manual_seed(5))
    for row, i in enumerate(index.tolist()):
        negatives = contrast[row, 1:].numpy()
        assert contrast[row, 0] == i and (targets[negatives] != targets[i]).all()
    assert len(set(contrast[0, 1:].tolist())) == len(set(contrast[1, 1:].tolist())) == k  # pools of 20 and 17
    assert len(set(contrast[2, 1:].tolist())) < k                # 15 draws from 13: some repeat
    _, again = wrapper.batch_extras(index, torch.Generator().manual_seed(5))
    _, other = wrapper.batch_extras(index, torch.Generator().manual_seed(6))
    assert torch.equal(contrast, again) and not torch.equal(contrast, other)


def test_loader_hands_out_each_batchs_indices_with_its_images():
    data = _labelled()
    wrapper = ContrastiveDataset(data, k=4)
    for train in (False, True):
        loader = DeviceImageLoader(data.data, data.targets, MEAN, STD, 8, 'cpu', train=train,
                                   generator=torch.Generator().manual_seed(2), batch_extras=wrapper.batch_extras)
        seen = []
        for images, targets, index, contrast in loader:
            assert targets.tolist() == [data.targets[i] for i in index.tolist()]
            assert contrast[:, 0].tolist() == index.tolist() and contrast.shape == (len(index), 5)
            if not train:  # unaugmented: the batch's images are those of its indices
                for row, i in enumerate(index.tolist()):
                    assert torch.equal(images[row], TF.normalize(TF.to_tensor(Image.fromarray(data.data[i])), MEAN, STD))
            seen += index.tolist()
        assert sorted(seen) == list(range(len(data)))


def test_training_loaders_feed_crds_wrapper_and_refuse_one_without_batch_extras():
    from types import SimpleNamespace
    from helper.setup import make_loaders
    from runtime.errors import ConfigError
    bundle = build_datasets('synthetic', train_per_class=3)
    opt = SimpleNamespace(data_on_device=True, batch_size=8, channels_last=False, num_workers=0, seed=0,
                          distill='crd', dataset='synthetic')
    wrapped = ContrastiveDataset(bundle.train, k=5)
    train_loader, _, _ = make_loaders(opt, wrapped, bundle.val, torch.device('cpu'), bundle)
    images, targets, index, contrast = next(iter(train_loader))
    assert contrast.shape == (8, 6) and torch.equal(contrast[:, 0], index)
    with pytest.raises(ConfigError, match='IndexedDataset has no batch_extras'):
        make_loaders(opt, IndexedDataset(bundle.train), bundle.val, torch.device('cpu'), bundle)
