"""In-memory image data sets and label-preserving subsets."""

from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset, Subset


class ArrayImageDataset(Dataset):
    """Images held as a uint8 ``N x H x W x 3`` array (like torchvision's CIFAR ``.data``).

    ``__getitem__`` returns ``(transform(PIL image), int target)``. Attributes:
    ``data`` (the array), ``targets`` (list of int), ``classes`` (names),
    ``transform``.
    """

    def __init__(self, data: np.ndarray, targets: Sequence[int], transform: Optional[Callable] = None,
                 classes: Optional[Sequence[str]] = None):
        data = np.asarray(data)
        if data.dtype != np.uint8 or data.ndim != 4 or data.shape[-1] != 3:
            raise ValueError(f"expected a uint8 N x H x W x 3 array, got {data.dtype} {data.shape}")
        if len(targets) != len(data):
            raise ValueError(f"{len(data)} images but {len(targets)} targets")
        self.data = data
        self.targets = [int(t) for t in targets]
        self.transform = transform
        n_cls = (max(self.targets) + 1) if self.targets else 0
        self.classes = list(classes) if classes is not None else [str(i) for i in range(n_cls)]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        img = Image.fromarray(self.data[index])
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]

    def with_transform(self, transform):
        """Same images (shared array), another transform."""
        return ArrayImageDataset(self.data, self.targets, transform, self.classes)


class LabeledSubset(Subset):
    """``torch.utils.data.Subset`` that keeps ``.targets`` (and ``.classes``) in step."""

    def __init__(self, dataset, indices: Sequence[int]):
        indices = [int(i) for i in indices]
        super().__init__(dataset, indices)
        parent = dataset.targets
        self.targets = [int(parent[i]) for i in indices]
        if hasattr(dataset, "classes"):
            self.classes = dataset.classes


def subset(dataset, indices: Sequence[int]):
    """Subset of ``dataset`` exposing ``.targets``; an :class:`ArrayImageDataset` stays one
    (its ``.data`` is sliced, so whole-set-on-GPU code still finds the pixels)."""
    if isinstance(dataset, ArrayImageDataset):
        idx = np.asarray(indices, dtype=np.int64)
        return ArrayImageDataset(dataset.data[idx], [dataset.targets[i] for i in idx],
                                 dataset.transform, dataset.classes)
    return LabeledSubset(dataset, indices)


def class_balanced_indices(targets: Sequence[int], per_class: int, num_classes: Optional[int] = None,
                           skip: int = 0):
    """Indices of the first ``per_class`` samples of every class after its first ``skip``, in
    data-set order (``skip``: a held-out split that follows a training subset).

    Deterministic. Raises ``ValueError`` when a class has fewer than ``skip + per_class`` samples.
    """
    if per_class is None or int(per_class) < 1:
        raise ValueError(f"a per-class count must be a positive integer, got {per_class!r}")
    per_class = int(per_class)
    targets = [int(t) for t in targets]
    if num_classes is None:
        num_classes = max(targets) + 1 if targets else 0
    seen = [0] * num_classes
    counts = [0] * num_classes
    chosen = []
    for i, t in enumerate(targets):
        seen[t] += 1
        if seen[t] > skip and counts[t] < per_class:
            counts[t] += 1
            chosen.append(i)
    short = [c for c in range(num_classes) if counts[c] < per_class]
    if short:
        raise ValueError(f"{per_class} images per class asked for, but class(es) {short[:10]} have fewer "
                         f"(min {min(counts)}); lower --train_per_class / --val_per_class")
    return chosen
