"""CIFAR-10 (50,000 training and 10,000 test 32×32 colour images), offline and checked.

The six python batches of Krizhevsky's ``cifar-10-python.tar.gz``, extracted, are read from
``data_dir/cifar-10-batches-py/`` (torchvision's layout) or from ``data_dir`` itself; nothing is
downloaded and no directory is created.  Every file is checked against the MD5 that torchvision
publishes for it before it is unpickled, and its array against the expected shape.  Any problem
is a ValueError naming the file and what is wrong; a missing file one naming the paths looked at.
"""

from __future__ import annotations

import hashlib
import os
import pickle

import numpy as np
import torch

__all__ = ["FOLDER", "BATCHES", "locate", "cifar10_arrays"]

#: torchvision's folder of the extracted batches
FOLDER = "cifar-10-batches-py"
#: batch file → MD5 (torchvision's); 10,000 images each
BATCHES = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
_PER_BATCH = 10000


def locate(data_dir: str | None) -> dict[str, str]:
    """{batch name: path} of the six batches in ``data_dir`` (see the module docstring)."""
    if not data_dir:
        raise ValueError(f"dataset 'cifar10' needs --data-dir: a folder holding {FOLDER}/ (the extracted "
                         "cifar-10-python.tar.gz)")
    if not os.path.isdir(data_dir):
        raise ValueError(f"data dir {data_dir!r} does not exist or is not a directory")
    out = {}
    for name in BATCHES:
        tried = [os.path.join(data_dir, FOLDER, name), os.path.join(data_dir, name)]
        found = [p for p in tried if os.path.isfile(p)]
        if not found:
            raise ValueError(f"cifar10 file {name} not found; looked for {', '.join(tried)}")
        out[name] = found[0]
    return out


def _read(name: str, path: str) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        blob = f.read()
    digest = hashlib.md5(blob).hexdigest()
    if digest != BATCHES[name]:
        raise ValueError(f"cifar10 file {path} is corrupt: MD5 {digest}, expected {BATCHES[name]} ({len(blob):,} bytes)")
    entry = pickle.loads(blob, encoding="latin1")  # the file is the published one (MD5 above)
    data, labels = np.asarray(entry["data"], dtype=np.uint8), np.asarray(entry["labels"], dtype=np.int64)
    return data.reshape(_PER_BATCH, 3, 32, 32), labels


def cifar10_arrays(data_dir: str | None) -> dict[str, torch.Tensor]:
    """``{"train": (50000, 3, 32, 32), "test": (10000, 3, 32, 32)}`` uint8 tensors and their labels."""
    parts = {name: _read(name, path) for name, path in locate(data_dir).items()}
    train = [parts[n] for n in BATCHES if n != "test_batch"]
    return {
        "train": torch.from_numpy(np.concatenate([d for d, _ in train])),
        "test": torch.from_numpy(parts["test_batch"][0].copy()),
        "train_labels": torch.from_numpy(np.concatenate([lab for _, lab in train])),
        "test_labels": torch.from_numpy(parts["test_batch"][1]),
    }
