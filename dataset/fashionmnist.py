"""Fashion-MNIST as 3-channel 32x32 :class:`ArrayImageDataset`, checked by content.

The 28x28 grey images are zero-padded by 2 pixels on each side (Fashion-MNIST's
background is 0, so the pad is seamless and no pixel is resampled) to 32x32, and
the grey channel is repeated three times, giving a uint8 ``N x 32 x 32 x 3``
``.data`` that every CIFAR-sized model and CIFAR-style transform accepts.

Normalisation: the published 28x28 statistics (mean 0.2860, std 0.3530) carried
over to the padded image (784 of 1024 pixels non-pad): mean 0.2190, std 0.3318.

Files: the four idx files (``train-images-idx3-ubyte`` etc.), each uncompressed or
gzip-compressed (``<name>.gz``, by any gzip: Debian's package re-compresses them), in
torchvision's layout ``<root>/FashionMNIST/raw/`` or in ``<root>`` itself (as Debian's
package installs them). A .gz file is decompressed in memory: nothing is written under
``<root>``, which may be read-only. Absent and ``download=True``: torchvision downloads
the published files into ``FashionMNIST/raw/``.

Integrity is checked on the decompressed content, whatever compressed it: content with
the published md5 sums loads silently; a well-formed idx file (right magic number,
the published count of 28x28 images, labels 0-9) with another md5 loads with a one-line
``UserWarning``, as CIFAR batches with other md5 sums do; a malformed one (not gzip and
not idx, a damaged gzip stream, bad magic number, wrong counts, truncated, labels out of
range) raises a one-line :class:`DatasetUnavailableError` naming the file and the check.
"""

import gzip
import hashlib
import os
import struct
import warnings
import zlib

import numpy as np
from torchvision import datasets

from . import net
from .arrays import ArrayImageDataset
from .errors import DatasetUnavailableError

FASHIONMNIST_MEAN = (0.2190,) * 3
FASHIONMNIST_STD = (0.3318,) * 3
PAD = 2
SIDE = 28
NUM_CLASSES = 10

# idx file name -> (md5 of the published file's decompressed content, images or labels it holds)
PUBLISHED = {
    "train-images-idx3-ubyte": ("f4a8712d7a061bf5bd6d2ca38dc4d50a", 60000),
    "train-labels-idx1-ubyte": ("9018921c3c673c538a1fc5bad174d6f9", 60000),
    "t10k-images-idx3-ubyte": ("8181f5470baa50b63fa0f6fddb340f0a", 10000),
    "t10k-labels-idx1-ubyte": ("15d484375f8d13e6eb1aabb0c3f46965", 10000),
}
RAW_FILES = tuple(PUBLISHED)
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # idx3 of uint8 (0x0803), idx1 of uint8 (0x0801)
GZIP_MAGIC = b"\x1f\x8b"


def _hint(root):
    return (f"pass --data_folder pointing at the folder that holds the four idx files "
            f"(uncompressed or .gz) in FashionMNIST/raw/ or in the folder itself; looked in '{root}'")


def _split_files(train):
    prefix = "train" if train else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _file_in(folder, name):
    """The path of idx file ``name`` in ``folder``: uncompressed if there, else ``.gz``; None if neither."""
    for path in (os.path.join(folder, name), os.path.join(folder, name + ".gz")):
        if os.path.isfile(path):
            return path
    return None


def _find_files(root):
    """{name: path} of the four idx files from FashionMNIST/raw/, else from ``root``; None
    when neither folder holds all four."""
    for folder in (os.path.join(root, "FashionMNIST", "raw"), root):
        paths = {name: _file_in(folder, name) for name in RAW_FILES}
        if all(paths.values()):
            return paths
    return None


class _Malformed(Exception):
    """A file failed one check; the message says which."""


def _content(path):
    """The file's bytes, decompressed in memory when it is gzip."""
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise _Malformed(f"damaged gzip stream ({type(e).__name__}: {e})") from e


def _header(content, magic, dims, what):
    """The dimension sizes of an idx file after checking its magic number and length.

    torchvision's reader only asserts on these, so a bad file would surface as a bare AssertionError."""
    size = 4 * (1 + dims)
    if len(content) < size:
        raise _Malformed(f"truncated: {len(content)} bytes, shorter than the {size}-byte idx header")
    found, *shape = struct.unpack(f">{1 + dims}I", content[:size])
    if found != magic:
        raise _Malformed(f"bad magic number {found} (an idx {what} file starts with {magic}); "
                         f"it is neither gzip nor that idx file")
    expected = size + int(np.prod(shape))
    if len(content) < expected:
        raise _Malformed(f"truncated: {len(content)} bytes, its header announces {expected}")
    if len(content) > expected:
        raise _Malformed(f"{len(content) - expected} bytes beyond the {expected} its header announces")
    return shape, size


def _parse(name, content):
    """The uint8 array of an idx images (N x 28 x 28) or labels (N) file, every check passed."""
    count = PUBLISHED[name][1]
    if "images" in name:
        (n, rows, cols), offset = _header(content, IMAGES_MAGIC, 3, "images")
        if (rows, cols) != (SIDE, SIDE):
            raise _Malformed(f"images of {rows} x {cols}, not {SIDE} x {SIDE}")
    else:
        (n,), offset = _header(content, LABELS_MAGIC, 1, "labels")
    if n != count:
        raise _Malformed(f"wrong count: {n} entries, not the published {count}")
    array = np.frombuffer(content, dtype=np.uint8, offset=offset)
    if "images" in name:
        return array.reshape(n, SIDE, SIDE)
    if n and array.max() >= NUM_CLASSES:
        raise _Malformed(f"label {int(array.max())} out of 0-{NUM_CLASSES - 1}")
    return array


def _read_split(paths, root, train):
    """(images N x 28 x 28, labels N) of one split; warns once when its content is not the published."""
    arrays, unpublished = [], []
    for name in _split_files(train):
        path = paths[name]
        try:
            content = _content(path)
            arrays.append(_parse(name, content))
        except _Malformed as e:
            raise DatasetUnavailableError(
                f"Fashion-MNIST file '{path}' is malformed: {e}; replace it with the published file "
                f"(compressed or not): {_hint(root)}") from None
        except OSError as e:
            raise DatasetUnavailableError(
                f"Fashion-MNIST file '{path}' cannot be read ({type(e).__name__}: {e}): {_hint(root)}") from e
        if hashlib.md5(content, usedforsecurity=False).hexdigest() != PUBLISHED[name][0]:
            unpublished.append(path)
    if unpublished:
        warnings.warn(f"Fashion-MNIST files {', '.join(repr(p) for p in unpublished)} are well-formed but do "
                      f"not hold the published content (md5 of the decompressed file differs); "
                      f"loading them as they are", UserWarning, stacklevel=4)
    return arrays


def _download(root):
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


def pad_to_rgb32(images) -> np.ndarray:
    """``N x 28 x 28`` uint8 -> ``N x 32 x 32 x 3`` uint8 (zero pad 2, grey repeated)."""
    x = np.asarray(images, dtype=np.uint8)
    n, h, w = x.shape
    out = np.zeros((n, h + 2 * PAD, w + 2 * PAD, 3), dtype=np.uint8)
    out[:, PAD:PAD + h, PAD:PAD + w, :] = x[..., None]
    return out


def load_fashionmnist(root, train, download=True) -> ArrayImageDataset:
    root = os.fspath(root)
    paths = _find_files(root)
    if paths is None:
        if not download:
            raise DatasetUnavailableError(f"Fashion-MNIST not found (download disabled): {_hint(root)}")
        _download(root)
        paths = _find_files(root)
        if paths is None:
            raise DatasetUnavailableError(f"Fashion-MNIST download left no usable files: {_hint(root)}")
    images, labels = _read_split(paths, root, train)
    return ArrayImageDataset(pad_to_rgb32(images), labels.tolist(), None, list(datasets.FashionMNIST.classes))
