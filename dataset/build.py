"""``build_datasets``: one entry point for every supported data set."""

import copy
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from . import cifar, fashionmnist, folder, synthetic
from .arrays import class_balanced_indices, subset
from .errors import DatasetUnavailableError
from .transforms import (IMAGENET_MEAN, IMAGENET_STD, SMALL_IMAGE_MAX, large_image_transforms,
                         small_image_transforms)

DATASET_NAMES = ("cifar10", "cifar100", "cinic10", "imagenet", "folder", "fashionmnist", "synthetic")
DEFAULT_DATA_FOLDER = "./data"

CINIC10_MEAN = (0.47889522, 0.47227842, 0.43047404)
CINIC10_STD = (0.24205776, 0.23828046, 0.25874835)


@dataclass
class DataBundle:
    """What a training script needs to know about a data set.

    ``train`` / ``val``: torch data sets yielding ``(tensor image, int target)``, each
    with ``.targets``; ``image_size``: the side of the (square) tensors the model
    sees; ``mean`` / ``std``: the per-channel normalisation applied; ``test``: the full test
    set when ``val`` is held out from the training images (``val_split_per_class``), else None
    (``val`` is the test set or its first images per class).
    """
    train: Any
    val: Any
    num_classes: int
    image_size: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    name: str = ""
    test: Any = None


def _array_bundle(name, train, val, num_classes, mean, std, augment, size=32):
    t_train, t_eval = small_image_transforms(mean, std, size)
    return DataBundle(train.with_transform(t_train if augment else t_eval), val.with_transform(t_eval),
                      num_classes, size, tuple(mean), tuple(std), name)


def _folder_bundle(name, root, augment, mean=None, std=None, style=None, val_names=("val", "valid"),
                   title=None):
    train, val = folder.load_image_folder_pair(root, title or name, val_names)
    w, h = folder.first_image_size(train)
    if style is None:
        style = "small" if max(w, h) <= SMALL_IMAGE_MAX else "large"
    mean = tuple(mean or IMAGENET_MEAN)
    std = tuple(std or IMAGENET_STD)
    if style == "small":
        size = min(w, h)
        t_train, t_eval = small_image_transforms(mean, std, size, resize=True)
    else:
        size = 224
        t_train, t_eval = large_image_transforms(mean, std, size)
    train.transform = t_train if augment else t_eval
    val.transform = t_eval
    return DataBundle(train, val, len(train.classes), size, mean, std, name)


def build_datasets(name: str, data_folder: Optional[str] = None, *, train_per_class: Optional[int] = None,
                   val_per_class: Optional[int] = None, val_split_per_class: Optional[int] = None,
                   download: bool = True, augment: bool = True) -> DataBundle:
    """Build the training and validation sets of data set ``name`` (see ``DATASET_NAMES``).

    * ``cifar10`` / ``cifar100``: torchvision layout under ``data_folder`` (default
      ``./data``), downloaded when absent and ``download=True`` (fails fast offline).
    * ``cinic10``: ImageFolder trees ``train/`` and ``valid/`` (or ``val/``) under
      ``data_folder`` (or ``data_folder/cinic-10``), CIFAR-style transforms, CINIC-10 stats.
    * ``imagenet``: ImageFolder trees ``train/`` and ``val/`` (or ``valid/``) under
      ``data_folder`` (or ``data_folder/imagenet``), ImageNet-style transforms.
    * ``folder``: generic ImageFolder trees ``train/`` and ``val/`` under ``data_folder``
      (required); class count from the tree; CIFAR-style transforms (RandomCrop with
      padding size/8 + flip, images brought to the first image's size) when the
      first training image is at most 64 px on its larger side, ImageNet-style
      (RandomResizedCrop 224 / Resize 256 + CenterCrop 224) otherwise; ImageNet stats.
    * ``fashionmnist``: torchvision layout under ``data_folder``, as 3-channel 32x32
      (zero-padded 28 -> 32, grey repeated; see :mod:`dataset.fashionmnist`).
    * ``synthetic``: generated in memory (see :mod:`dataset.synthetic`); ``data_folder``
      and ``download`` are ignored.

    ``train_per_class=N`` keeps the first N training samples of every class (data-set
    order); ``val_per_class=N`` does the same for the validation set. ``augment=False`` gives the training set the evaluation transform.
    ``val_split_per_class=N`` (needs ``train_per_class``, excludes ``val_per_class``): the
    validation set is held out from the training images instead of the test set, the N images of
    each class that follow its first ``train_per_class``, with the evaluation transform, and the
    full test set is kept as ``test``; so per-epoch curves never touch the test set.
    Missing data raises :class:`DatasetUnavailableError` (one line, names --data_folder).
    """
    if val_split_per_class is not None:
        if train_per_class is None:
            raise ValueError("--val_split_per_class holds images out of the training subset's class; "
                             "give --train_per_class too")
        if val_per_class is not None:
            raise ValueError("--val_split_per_class and --val_per_class both choose the validation set; give one")
    key = str(name).lower()
    if key not in DATASET_NAMES:
        raise ValueError(f"unknown data set {name!r}; choose from {', '.join(DATASET_NAMES)}")
    root = os.fspath(data_folder) if data_folder is not None else DEFAULT_DATA_FOLDER

    if key in ("cifar10", "cifar100"):
        mean, std = ((cifar.CIFAR10_MEAN, cifar.CIFAR10_STD) if key == "cifar10"
                     else (cifar.CIFAR100_MEAN, cifar.CIFAR100_STD))
        train = cifar.load_cifar(key, root, True, download)
        val = cifar.load_cifar(key, root, False, download=False)
        bundle = _array_bundle(key, train, val, 10 if key == "cifar10" else 100, mean, std, augment)
    elif key == "fashionmnist":
        train = fashionmnist.load_fashionmnist(root, True, download)
        val = fashionmnist.load_fashionmnist(root, False, download=False)
        bundle = _array_bundle(key, train, val, 10, fashionmnist.FASHIONMNIST_MEAN,
                               fashionmnist.FASHIONMNIST_STD, augment)
    elif key == "synthetic":
        train = synthetic.make_synthetic(synthetic.DEFAULT_TRAIN_SIZE, synthetic.TRAIN_SEED)
        val = synthetic.make_synthetic(synthetic.DEFAULT_VAL_SIZE, synthetic.VAL_SEED)
        mean, std = synthetic.channel_stats(train.data)
        bundle = _array_bundle(key, train, val, synthetic.NUM_CLASSES, mean, std, augment)
    elif key == "cinic10":
        root = folder.resolve_root(root, ("cinic-10", "CINIC-10", "cinic10"))
        bundle = _folder_bundle(key, root, augment, CINIC10_MEAN, CINIC10_STD, style="small",
                                val_names=("valid", "val"), title="CINIC-10")
    elif key == "imagenet":
        root = folder.resolve_root(root, ("imagenet", "ImageNet", "ILSVRC2012"))
        bundle = _folder_bundle(key, root, augment, style="large", val_names=("val", "valid"),
                                title="ImageNet")
    else:  # folder
        if data_folder is None:
            raise DatasetUnavailableError(
                "data set 'folder' needs --data_folder pointing at a folder with train/<class>/ and val/<class>/")
        bundle = _folder_bundle(key, root, augment, title="image folder")

    if val_split_per_class is not None:
        bundle.test = bundle.val
        bundle.val = _held_out_split(bundle, train_per_class, val_split_per_class)
    if train_per_class is not None:
        idx = class_balanced_indices(bundle.train.targets, train_per_class, bundle.num_classes)
        bundle.train = subset(bundle.train, idx)
    if val_per_class is not None:
        idx = class_balanced_indices(bundle.val.targets, val_per_class, bundle.num_classes)
        bundle.val = subset(bundle.val, idx)
    return bundle


def _held_out_split(bundle: DataBundle, train_per_class: int, per_class: int):
    """The `per_class` training images of each class after its first `train_per_class`, with the
    validation set's (unaugmented) transform."""
    smallest = min(Counter(int(t) for t in bundle.train.targets).values())
    if train_per_class + per_class > smallest:
        raise ValueError(f"--train_per_class {train_per_class} + --val_split_per_class {per_class} exceeds the "
                         f"{smallest} training images of the smallest class; lower one of them")
    unaugmented = copy.copy(bundle.train)  # shares the images; only the transform differs
    unaugmented.transform = bundle.val.transform
    idx = class_balanced_indices(bundle.train.targets, per_class, bundle.num_classes, skip=train_per_class)
    return subset(unaugmented, idx)
