"""Checkpoint files of training runs: atomic writes, loading that runs no code, RNG state.

**Writing.** A checkpoint is written to a temporary file ``.<name>.tmp-<pid>`` in the same folder,
flushed and renamed over the old one: a write killed mid-way, or one that fails (a full disk, a
folder made read-only), leaves the last checkpoint as it was, and the error names it
(:class:`CheckpointWriteError`); :func:`hlvm.training.checks.clean_stale_tmp` removes a leftover
temporary file later.

**Reading runs no code.** A checkpoint holds only tensors and plain Python values (dicts, lists,
tuples, str, numbers, None) — the RNG states too (:func:`rng_state` keeps NumPy's as a tensor) — so
every loader reads it with ``torch.load(weights_only=True)``, which rebuilds nothing else: a file
whose pickle would call a function (``os.system``…) is refused before anything runs (PyTorch's
default since 2.6, for this reason).  Checkpoints of hlvm before format 2 held NumPy objects;
:func:`convert_legacy_checkpoint` rewrites one, and says that it unpickles.
"""

from __future__ import annotations

import os
import pickle
import random
import re

import numpy as np
import torch

__all__ = ["CHECKPOINT", "FORMAT", "CheckpointWriteError", "save_checkpoint", "load_checkpoint", "load_run_checkpoint",
           "convert_legacy_checkpoint", "rng_state", "set_rng_state"]

CHECKPOINT = "checkpoint.pt"
#: the checkpoint format: 2 holds tensors and plain values only (1: NumPy's RNG state as NumPy objects)
FORMAT = 2
#: the keys every checkpoint of a :class:`~hlvm.training.Trainer` has
_RUN_KEYS = ("version", "config", "model", "optim", "rng", "gen", "step")


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed; the previous one, if any, is untouched (the message names it)."""


def save_checkpoint(path: str, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (temporary file + fsync + rename); on failure remove
    the temporary file and raise :class:`CheckpointWriteError` saying where the last good one is."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        kept = (f"the previous checkpoint {path} is intact" if os.path.isfile(path)
                else "no earlier checkpoint exists")
        raise CheckpointWriteError(e.errno, f"writing the checkpoint {path} failed ({e.strerror or e}); {kept}") from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _refused_global(error: Exception) -> str:
    """The global a weights-only load refused (``posix.system``, ``numpy.core…``), or ''."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    return found.group(1) if found else ""


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Read a checkpoint without running code (``weights_only=True``), with a clear ValueError when it
    is missing, truncated, foreign, of an older format, or would call anything to be rebuilt."""
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT)
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        name = _refused_global(e)
        if name.startswith("numpy"):
            raise ValueError(f"checkpoint {path!r} is of an older hlvm format (NumPy objects inside, which only "
                             "unpickling rebuilds); if you trust its source, convert it with hlvm.training."
                             "convert_legacy_checkpoint(path, trust=True) — that unpickles it") from None
        raise ValueError(f"checkpoint {path!r} was refused: rebuilding it would call {name or 'a function'} "
                         "(hlvm loads checkpoints without running code; this is not an hlvm checkpoint)") from None
    except Exception as e:  # truncated or foreign file
        raise ValueError(f"checkpoint {path!r} is unreadable ({type(e).__name__}: truncated, corrupt or not a "
                         "torch file)") from None


def load_run_checkpoint(path: str, map_location="cpu") -> dict:
    """Read a checkpoint written by :class:`~hlvm.training.Trainer` (ValueError if it is not one)."""
    ck = load_checkpoint(path, map_location)
    missing = [k for k in _RUN_KEYS if not isinstance(ck, dict) or k not in ck]
    if missing:
        raise ValueError(f"{path!r} is not an hlvm training checkpoint (it lacks {', '.join(missing)})")
    return ck


def convert_legacy_checkpoint(path: str, out: str | None = None, *, trust: bool = False) -> str:
    """Rewrite a format-1 checkpoint (hlvm before format 2) in the current format; returns the new path
    (default: ``path`` itself).

    .. warning:: This **unpickles** the file (``weights_only=False``), which runs whatever code a
        crafted file holds.  Pass ``trust=True`` only for a file whose origin you trust (one your own
        runs wrote); anything else stays refused.
    """
    if not trust:
        raise ValueError("convert_legacy_checkpoint unpickles the file, which can run code: pass trust=True only "
                         "for a checkpoint whose origin you trust")
    ck = torch.load(path, map_location="cpu", weights_only=False)
    rng = ck.get("rng", {}) if isinstance(ck, dict) else {}
    if isinstance(rng.get("numpy"), tuple):
        rng["numpy"] = _numpy_state_to_plain(rng["numpy"])
    ck["version"] = FORMAT
    save_checkpoint(out or path, ck)
    return out or path


def _numpy_state_to_plain(state: tuple) -> dict:
    """NumPy's legacy RNG state tuple as a tensor and plain values (weights-only loadable)."""
    name, key, pos, has_gauss, cached = state
    return {"name": str(name), "key": torch.from_numpy(np.asarray(key, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def rng_state() -> dict:
    """The global random states (torch, Python, NumPy, and CUDA when initialized), as tensors and
    plain values."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": _numpy_state_to_plain(np.random.get_state())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the global random states of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
