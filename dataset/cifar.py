"""CIFAR-10 / CIFAR-100 through torchvision, as :class:`ArrayImageDataset`.

Files are looked for in torchvision's layout under ``root``
(``cifar-10-batches-py/`` or ``cifar-100-python/``). When they are absent but the published
archive (``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``) is in ``root``, it is checked
against its published md5 and extracted there, offline. When both are absent and
``download=True``, the host is probed first (a few seconds at most) and the
download runs under a socket timeout; offline, or on any download failure, a
one-line :class:`DatasetUnavailableError` names ``--data_folder``.

Integrity: the files are loaded by torchvision's own class with
``download=False``, which checks every file's published md5. Only when that
check fails (files present but not byte-identical to the published archive,
e.g. a re-pickled copy or the tiny batches tests write) are the batches read
directly in the same pickle format, with a ``UserWarning``; files that are not
valid CIFAR batches still raise ``DatasetUnavailableError``. The real, untouched
data therefore always goes through torchvision's checked path.
"""

import os
import pickle
import tarfile
import warnings

import numpy as np
from torchvision import datasets
from torchvision.datasets.utils import check_integrity, extract_archive

from . import net
from .arrays import ArrayImageDataset
from .errors import DatasetUnavailableError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)

_SPECS = {
    "cifar10": dict(cls=datasets.CIFAR10, title="CIFAR-10", num_classes=10),
    "cifar100": dict(cls=datasets.CIFAR100, title="CIFAR-100", num_classes=100),
}


def _files_present(cls, root):
    base = os.path.join(root, cls.base_folder)
    names = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    return all(os.path.isfile(os.path.join(base, f)) for f in names)


def _layout_hint(cls, root):
    return (f"pass --data_folder pointing at the folder that holds {cls.base_folder}/ "
            f"(torchvision layout; looked in '{root}')")


def _download(spec, root):
    cls, title = spec["cls"], spec["title"]
    if not net.can_reach(cls.url):
        raise DatasetUnavailableError(
            f"{title} not found and cannot be downloaded (no network): {_layout_hint(cls, root)}")
    try:
        with net.socket_timeout():
            cls(root, train=True, download=True)
    except (OSError, RuntimeError, ValueError, EOFError, tarfile.TarError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DatasetUnavailableError(
            f"{title} download failed ({type(e).__name__}: {msg}): {_layout_hint(cls, root)}") from e


def _extract_published_archive(spec, root) -> bool:
    """Extract ``root/<archive>`` into ``root`` when present and intact; False when absent."""
    cls, title = spec["cls"], spec["title"]
    archive = os.path.join(root, cls.filename)
    if not os.path.isfile(archive):
        return False
    if not check_integrity(archive, cls.tgz_md5):
        raise DatasetUnavailableError(
            f"{title} archive '{archive}' is corrupt (its md5 is not the published {cls.tgz_md5}); "
            f"replace it with the published {cls.filename}, or extract the right one into "
            f"--data_folder ({_layout_hint(cls, root)})")
    try:
        extract_archive(archive, root)
    except (OSError, tarfile.TarError, EOFError) as e:
        raise DatasetUnavailableError(
            f"{title} archive '{archive}' could not be extracted ({type(e).__name__}: {e}); "
            f"make --data_folder writable or extract it there yourself") from e
    return True


def _read_batches_unchecked(cls, root, train):
    """Read the pickled batches without md5 checks (same format torchvision reads)."""
    base = os.path.join(root, cls.base_folder)
    files = cls.train_list if train else cls.test_list
    data, targets = [], []
    for fname, _ in files:
        with open(os.path.join(base, fname), "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        targets.extend(int(t) for t in entry["labels" if "labels" in entry else "fine_labels"])
    with open(os.path.join(base, cls.meta["filename"]), "rb") as f:
        classes = list(pickle.load(f, encoding="latin1")[cls.meta["key"]])
    data = np.ascontiguousarray(np.concatenate(data).transpose(0, 2, 3, 1))
    return data, targets, classes


def load_cifar(name, root, train, download=True) -> ArrayImageDataset:
    """One split of ``cifar10``/``cifar100`` as an :class:`ArrayImageDataset` (no transform set)."""
    spec = _SPECS[name]
    cls = spec["cls"]
    root = os.fspath(root)
    if not _files_present(cls, root) and not _extract_published_archive(spec, root):
        if not download:
            raise DatasetUnavailableError(
                f"{spec['title']} not found (download disabled): {_layout_hint(cls, root)}")
        _download(spec, root)
        if not _files_present(cls, root):
            raise DatasetUnavailableError(
                f"{spec['title']} download left no usable files: {_layout_hint(cls, root)}")
    try:
        ds = cls(root, train=train, download=False)
        data, targets, classes = ds.data, ds.targets, ds.classes
    except RuntimeError:
        # md5 mismatch: not the published files. Read them as-is (see module docstring).
        warnings.warn(f"{spec['title']} files in '{root}' do not match the published md5 sums; "
                      f"loading them without the integrity check", UserWarning, stacklevel=3)
        try:
            data, targets, classes = _read_batches_unchecked(cls, root, train)
        except (OSError, KeyError, ValueError, TypeError, EOFError, pickle.UnpicklingError) as e:
            raise DatasetUnavailableError(
                f"{spec['title']} files are corrupt ({type(e).__name__}): {_layout_hint(cls, root)}") from e
    bad = [t for t in targets if not 0 <= t < spec["num_classes"]]
    if bad:
        raise DatasetUnavailableError(
            f"{spec['title']} labels out of range (e.g. {bad[0]}): {_layout_hint(cls, root)}")
    return ArrayImageDataset(np.asarray(data, dtype=np.uint8), targets, None, classes)
