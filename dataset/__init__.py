"""Data sets, transforms and index / contrastive wrappers (imports nothing else from the project).

Public API: :func:`build_datasets` -> :class:`DataBundle`, :data:`DATASET_NAMES`,
:class:`DatasetUnavailableError`, :class:`IndexedDataset`, :class:`ContrastiveDataset`,
plus helpers :class:`ArrayImageDataset`, :class:`LabeledSubset`, :func:`subset`,
:func:`class_balanced_indices`.
"""

from .arrays import ArrayImageDataset, LabeledSubset, class_balanced_indices, subset
from .build import DATASET_NAMES, DEFAULT_DATA_FOLDER, DataBundle, build_datasets
from .errors import DatasetUnavailableError
from .wrappers import ContrastiveDataset, IndexedDataset

__all__ = [
    "ArrayImageDataset", "ContrastiveDataset", "DATASET_NAMES", "DEFAULT_DATA_FOLDER", "DataBundle",
    "DatasetUnavailableError", "IndexedDataset", "LabeledSubset", "build_datasets",
    "class_balanced_indices", "subset",
]
