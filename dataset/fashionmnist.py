"""Fashion-MNIST through torchvision, as 3-channel 32x32 :class:`ArrayImageDataset`.

The 28x28 grey images are zero-padded by 2 pixels on each side (Fashion-MNIST's
background is 0, so the pad is seamless and no pixel is resampled) to 32x32, and
the grey channel is repeated three times, giving a uint8 ``N x 32 x 32 x 3``
``.data`` that every CIFAR-sized model and CIFAR-style transform accepts.

Normalisation: the published 28x28 statistics (mean 0.2860, std 0.3530) carried
over to the padded image (784 of 1024 pixels non-pad): mean 0.2190, std 0.3318.
Files are looked for in torchvision's layout, ``<root>/FashionMNIST/raw/`` with
the uncompressed idx files (``train-images-idx3-ubyte`` etc.); else the four published
``*-idx?-ubyte.gz`` files, in ``FashionMNIST/raw/`` or in ``<root>`` itself (as Debian's package
installs them), are checked against their published md5 sums and decompressed into a temporary
folder, offline: nothing is written under ``<root>``, which may be read-only.
"""

import os
import tempfile

import numpy as np
from torchvision import datasets
from torchvision.datasets.utils import check_integrity, extract_archive

from . import net
from .arrays import ArrayImageDataset
from .errors import DatasetUnavailableError

FASHIONMNIST_MEAN = (0.2190,) * 3
FASHIONMNIST_STD = (0.3318,) * 3
PAD = 2


def _hint(root):
    return (f"pass --data_folder pointing at the folder that holds FashionMNIST/raw/ "
            f"(torchvision layout: idx files, or the published .gz files there or in the folder "
            f"itself; looked in '{root}')")


RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _files_present(root):
    raw = os.path.join(root, "FashionMNIST", "raw")
    return all(os.path.isfile(os.path.join(raw, f)) for f in RAW_FILES)


def _published_archives(root):
    """[(path, md5)] of the four published .gz files, from FashionMNIST/raw/ or ``root``; None
    when neither folder holds all four."""
    resources = datasets.FashionMNIST.resources
    for folder in (os.path.join(root, "FashionMNIST", "raw"), root):
        paths = [os.path.join(folder, name) for name, _ in resources]
        if all(os.path.isfile(p) for p in paths):
            return [(p, md5) for p, (_, md5) in zip(paths, resources)]
    return None


def _load_from_archives(archives, root, train):
    for path, md5 in archives:
        if not check_integrity(path, md5):
            raise DatasetUnavailableError(
                f"Fashion-MNIST file '{path}' is corrupt (its md5 is not the published {md5}); "
                f"replace it with the published file: {_hint(root)}")
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "FashionMNIST", "raw")
        os.makedirs(raw)
        try:
            for path, _ in archives:
                extract_archive(path, raw)
            return datasets.FashionMNIST(tmp, train=train, download=False)
        except (OSError, EOFError, RuntimeError, ValueError) as e:
            raise DatasetUnavailableError(
                f"Fashion-MNIST files unreadable ({type(e).__name__}): {_hint(root)}") from e


def pad_to_rgb32(images) -> np.ndarray:
    """``N x 28 x 28`` uint8 -> ``N x 32 x 32 x 3`` uint8 (zero pad 2, grey repeated)."""
    x = np.asarray(images, dtype=np.uint8)
    n, h, w = x.shape
    out = np.zeros((n, h + 2 * PAD, w + 2 * PAD, 3), dtype=np.uint8)
    out[:, PAD:PAD + h, PAD:PAD + w, :] = x[..., None]
    return out


def load_fashionmnist(root, train, download=True) -> ArrayImageDataset:
    root = os.fspath(root)
    archives = None if _files_present(root) else _published_archives(root)
    if archives is not None:
        return _as_arrays(_load_from_archives(archives, root, train))
    if not _files_present(root):
        if not download:
            raise DatasetUnavailableError(f"Fashion-MNIST not found (download disabled): {_hint(root)}")
        url = datasets.FashionMNIST.mirrors[0]
        if not net.can_reach(url):
            raise DatasetUnavailableError(
                f"Fashion-MNIST not found and cannot be downloaded (no network): {_hint(root)}")
        try:
            with net.socket_timeout():
                datasets.FashionMNIST(root, train=True, download=True)
        except (OSError, RuntimeError, ValueError, EOFError) as e:
            raise DatasetUnavailableError(
                f"Fashion-MNIST download failed ({type(e).__name__}): {_hint(root)}") from e
    try:
        ds = datasets.FashionMNIST(root, train=train, download=False)
    except (OSError, RuntimeError, ValueError, AssertionError) as e:
        raise DatasetUnavailableError(
            f"Fashion-MNIST files unreadable ({type(e).__name__}): {_hint(root)}") from e
    return _as_arrays(ds)


def _as_arrays(ds) -> ArrayImageDataset:
    return ArrayImageDataset(pad_to_rgb32(ds.data.numpy()), ds.targets.tolist(), None, list(ds.classes))
