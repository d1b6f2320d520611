"""Data set wrappers: sample indices (instance-based KD) and CRD contrastive indices.

Both work on any data set exposing ``.targets`` (every set built by
:func:`dataset.build_datasets`, subsets included) and expose ``.targets`` and
``.dataset`` themselves.
"""

from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset


def _targets_of(dataset):
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise TypeError(f"{type(dataset).__name__} has no .targets; wrap a data set built by dataset.build_datasets")
    if isinstance(targets, torch.Tensor):
        targets = targets.tolist()
    return [int(t) for t in targets]


class IndexedDataset(Dataset):
    """``(img, target, index)`` for every item of ``dataset``."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.targets = _targets_of(dataset)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        img, target = self.dataset[index][:2]
        return img, target, index


class ContrastiveDataset(Dataset):
    """CRD sampling: ``(img, target, index, contrast_idx)``.

    ``contrast_idx`` is a LongTensor of ``k + 1`` data set indices: first the
    positive -- ``index`` itself in ``mode='exact'``, a uniformly drawn sample of
    the same class (possibly ``index``) in ``mode='relax'`` -- then ``k``
    negatives drawn uniformly from all samples of *other* classes, without
    replacement when there are at least ``k`` of them, with replacement otherwise
    (as in RepDistiller's ``CIFAR100InstanceSample``). Classes are read from the
    wrapped set's ``.targets``, so this works for every data set. Memory is
    O(N) (one class-sorted index array), also for ImageNet-sized sets.

    Randomness: draws come from a NumPy Generator seeded with
    ``(seed, torch.initial_seed())``, created lazily in each process. In the main
    process ``torch.initial_seed()`` is what ``torch.manual_seed`` set; in a
    DataLoader worker it is the worker's own seed (``base_seed + worker_id``, the
    base seed drawn from the main process's torch RNG every epoch). So a run is
    reproducible under ``torch.manual_seed`` for a fixed ``num_workers``, workers
    never share a stream, and epochs draw fresh negatives. ``seed`` separates two
    wrappers in one process. :meth:`sample` takes an explicit Generator for fully
    controlled draws.
    """

    MODES = ("exact", "relax")

    def __init__(self, dataset, k: int = 4096, mode: str = "exact", seed: int = 0):
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        if int(k) < 1:
            raise ValueError(f"k must be positive, got {k}")
        self.dataset = dataset
        self.k = int(k)
        self.mode = mode
        self.seed = int(seed)
        self.targets = _targets_of(dataset)
        labels = np.asarray(self.targets, dtype=np.int64)
        if labels.size == 0:
            raise ValueError("cannot build contrastive indices for an empty data set")
        if labels.min() < 0:
            raise ValueError("targets must be non-negative class indices")
        self.num_classes = int(labels.max()) + 1
        # All indices sorted by class (stable, so data-set order within a class);
        # class c occupies order[start[c]:start[c] + count[c]].
        self._order = np.argsort(labels, kind="stable")
        self._count = np.bincount(labels, minlength=self.num_classes)
        self._start = np.concatenate([[0], np.cumsum(self._count)[:-1]])
        self._n = labels.size
        if (self._count == self._n).any():
            raise ValueError("contrastive sampling needs at least two classes with samples")
        self._rng = None
        self._rng_key = None
        self._tables = None  # torch copies of targets and the class-sorted order, for batch_extras

    def __len__(self):
        return len(self.dataset)

    def positives(self, cls: int) -> np.ndarray:
        """Indices of class ``cls`` (data-set order)."""
        s = self._start[cls]
        return self._order[s:s + self._count[cls]]

    def _generator(self):
        key = torch.initial_seed()
        if self._rng is None or self._rng_key != key:
            self._rng = np.random.default_rng([self.seed, key])
            self._rng_key = key
        return self._rng

    def sample(self, index: int, rng: Optional[np.random.Generator] = None) -> torch.Tensor:
        """The ``k + 1`` contrast indices for ``index`` (see class docstring)."""
        rng = self._generator() if rng is None else rng
        c = self.targets[index]
        start, count = self._start[c], self._count[c]
        if self.mode == "exact":
            pos = index
        else:
            pos = self._order[start + rng.integers(count)]
        n_neg = self._n - count
        # Uniform over the other classes: draw a position among the n_neg slots outside
        # class c's block of the class-sorted order, then skip over the block.
        r = rng.choice(n_neg, self.k, replace=self.k > n_neg)
        r = r + count * (r >= start)
        out = np.empty(self.k + 1, dtype=np.int64)
        out[0] = pos
        out[1:] = self._order[r]
        return torch.from_numpy(out)

    def __getitem__(self, index):
        img, target = self.dataset[index][:2]
        return img, target, index, self.sample(index)

    def batch_extras(self, index: torch.Tensor, generator: torch.Generator) -> tuple:
        """``(index, contrast_idx)`` of a batch of sample indices with the distribution of
        :meth:`sample` (positive first, then ``k`` negatives uniform over the other classes,
        without replacement when there are enough), drawn with torch from ``generator``: the
        on-device loader (``--data_on_device``) adds them to each batch without a per-sample loop."""
        index = torch.as_tensor(index, dtype=torch.long)
        if self._tables is None:
            self._tables = tuple(torch.as_tensor(np.asarray(a), dtype=torch.long)
                                 for a in (self.targets, self._order, self._start, self._count))
        targets, order, start, count = self._tables
        classes = targets[index]
        start, count = start[classes], count[classes]
        b = len(index)
        if self.mode == "exact":
            positive = index
        else:
            offset = (torch.rand(b, dtype=torch.float64, generator=generator) * count).long()
            positive = order[start + torch.minimum(offset, count - 1)]
        n_neg = self._n - count
        keys = torch.rand(b, int(n_neg.max()), generator=generator)
        # positions past a row's own pool sort last; the first k of a uniform random order of the
        # pool are a uniform draw without replacement
        keys[torch.arange(keys.shape[1]) >= n_neg[:, None]] = 2.0
        draws = keys.argsort(dim=1)[:, :self.k] if self.k <= keys.shape[1] else None
        short = n_neg < self.k
        if short.any():  # fewer negatives than k: uniform with replacement, as sample() does
            replaced = (torch.rand(b, self.k, dtype=torch.float64, generator=generator)
                        * n_neg[:, None]).long().minimum(n_neg[:, None] - 1)
            draws = replaced if draws is None else torch.where(short[:, None], replaced, draws)
        draws = draws + count[:, None] * (draws >= start[:, None])
        return index, torch.cat([positive[:, None], order[draws]], dim=1)
