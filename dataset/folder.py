"""ImageFolder-tree data sets: ``cinic10``, ``imagenet`` and the generic ``folder``.

Layout: ``<root>/train/<class>/*.png|jpg...`` and a validation tree
``<root>/val/`` (``valid/`` is accepted too; CINIC-10 ships ``valid/``). Class
indices come from the training tree (sorted folder names, torchvision's rule)
and the validation tree is mapped with the *training* indices, so a class that
is missing from ``val/`` cannot shift the labels.
"""

import os

from PIL import Image
from torchvision import datasets

from .errors import DatasetUnavailableError


class _MappedImageFolder(datasets.ImageFolder):
    """ImageFolder whose class -> index mapping is given (the training tree's)."""

    def __init__(self, root, class_to_idx, **kwargs):
        self._given = dict(class_to_idx)
        super().__init__(root, allow_empty=True, **kwargs)

    def find_classes(self, directory):
        classes = sorted(self._given, key=self._given.get)
        return classes, dict(self._given)


def find_split_dir(root, names):
    for n in names:
        p = os.path.join(root, n)
        if os.path.isdir(p):
            return p
    return None


def resolve_root(root, aliases=()):
    """``root`` itself if it holds ``train/``, else the first ``root/<alias>`` that does."""
    for cand in [root] + [os.path.join(root, a) for a in aliases]:
        if os.path.isdir(os.path.join(cand, "train")):
            return cand
    return root


def load_image_folder_pair(root, title, val_names=("val", "valid")):
    """``(train, val)`` ImageFolder sets (no transforms set) from ``root``."""
    hint = (f"pass --data_folder pointing at a folder with train/<class>/ and "
            f"{val_names[0]}/<class>/ image trees (looked in '{root}')")
    train_dir = os.path.join(root, "train")
    val_dir = find_split_dir(root, val_names)
    if not os.path.isdir(train_dir) or val_dir is None:
        raise DatasetUnavailableError(f"{title} not found: {hint}")
    try:
        train = datasets.ImageFolder(train_dir)
    except (FileNotFoundError, OSError) as e:
        raise DatasetUnavailableError(f"{title} has no usable images in train/ ({type(e).__name__}): {hint}") from e
    extra = sorted(d.name for d in os.scandir(val_dir) if d.is_dir() and d.name not in train.class_to_idx)
    if extra:
        raise DatasetUnavailableError(
            f"{title}: {os.path.basename(val_dir)}/ has classes absent from train/ ({', '.join(extra[:5])}): {hint}")
    val = _MappedImageFolder(val_dir, train.class_to_idx)
    if len(val) == 0:
        raise DatasetUnavailableError(f"{title} has no images in {os.path.basename(val_dir)}/: {hint}")
    return train, val


def first_image_size(ds):
    """``(width, height)`` of the first image of an ImageFolder set."""
    with Image.open(ds.samples[0][0]) as im:
        return im.size
