"""The official CIFAR-10 python format: pickled dicts of numpy arrays, read without letting the
pickles run any code."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from blitz.data.dataset import ImageData, Split
from blitz.data.folders import CIFAR_FILES
from blitz.errors import BlitzError

_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Reads CIFAR's pickled dicts of arrays and refuses anything that could run code."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _unpickle(data: bytes) -> dict:
    return _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()


def is_cifar_python(names: list[str]) -> bool:
    """Whether a folder or archive's files are CIFAR-10's python batches."""
    return any(Path(n).name == "data_batch_1" for n in names)


def read_cifar_python(files: dict[str, bytes], name: str) -> ImageData:
    """The dataset in the batch files (name -> bytes) of the official archive."""
    by_base = {Path(k).name: v for k, v in files.items()}
    missing = sorted(CIFAR_FILES - set(by_base))
    if missing:
        raise BlitzError(f"CIFAR-10 archive is incomplete: missing {', '.join(missing)}")

    def split(bases: list[str]) -> Split:
        batches = [_unpickle(by_base[b]) for b in bases]
        images = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32)
        labels = np.concatenate([b["labels"] for b in batches])
        return Split(torch.from_numpy(images.copy()), torch.from_numpy(labels).long())

    classes = list(_unpickle(by_base["batches.meta"])["label_names"])
    train = split([f"data_batch_{i}" for i in range(1, 6)])
    return ImageData(name, classes, train, split(["test_batch"]))
