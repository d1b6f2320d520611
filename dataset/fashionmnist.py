"""Fashion-MNIST through torchvision, as 3-channel 32x32 :class:`ArrayImageDataset`.

The 28x28 grey images are zero-padded by 2 pixels on each side (Fashion-MNIST's
background is 0, so the pad is seamless and no pixel is resampled) to 32x32, and
the grey channel is repeated three times, giving a uint8 ``N x 32 x 32 x 3``
``.data`` that every CIFAR-sized model and CIFAR-style transform accepts.

Normalisation: the published 28x28 statistics (mean 0.2860, std 0.3530) carried
over to the padded image (784 of 1024 pixels non-pad): mean 0.2190, std 0.3318.
Files are looked for in torchvision's layout, ``<root>/FashionMNIST/raw/`` with
the uncompressed idx files (``train-images-idx3-ubyte`` etc.).
"""

import os

import numpy as np
from torchvision import datasets

from . import net
from .arrays import ArrayImageDataset
from .errors import DatasetUnavailableError

FASHIONMNIST_MEAN = (0.2190,) * 3
FASHIONMNIST_STD = (0.3318,) * 3
PAD = 2


def _hint(root):
    return (f"pass --data_folder pointing at the folder that holds FashionMNIST/raw/ "
            f"(torchvision layout, uncompressed idx files; looked in '{root}')")


RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _files_present(root):
    raw = os.path.join(root, "FashionMNIST", "raw")
    return all(os.path.isfile(os.path.join(raw, f)) for f in RAW_FILES)


def pad_to_rgb32(images) -> np.ndarray:
    """``N x 28 x 28`` uint8 -> ``N x 32 x 32 x 3`` uint8 (zero pad 2, grey repeated)."""
    x = np.asarray(images, dtype=np.uint8)
    n, h, w = x.shape
    out = np.zeros((n, h + 2 * PAD, w + 2 * PAD, 3), dtype=np.uint8)
    out[:, PAD:PAD + h, PAD:PAD + w, :] = x[..., None]
    return out


def load_fashionmnist(root, train, download=True) -> ArrayImageDataset:
    root = os.fspath(root)
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
    data = pad_to_rgb32(ds.data.numpy())
    return ArrayImageDataset(data, ds.targets.tolist(), None, list(ds.classes))
