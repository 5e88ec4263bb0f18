"""Checkpoint files of training runs: atomic writes, clear errors on reading, RNG state.

A checkpoint is written to a temporary file ``.<name>.tmp-<pid>`` in the same folder, flushed and
renamed over the old one: a write killed mid-way leaves the last checkpoint loadable (and
:func:`hlvm.training.checks.clean_stale_tmp` removes the leftover temporary file later).
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["CHECKPOINT", "save_checkpoint", "load_checkpoint", "load_run_checkpoint", "rng_state", "set_rng_state"]

CHECKPOINT = "checkpoint.pt"
#: the keys every checkpoint of a :class:`~hlvm.training.Trainer` has
_RUN_KEYS = ("version", "config", "model", "optim", "rng", "gen", "step")


def save_checkpoint(path: str, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (temporary file + fsync + rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Read a checkpoint, with a clear ValueError when it is missing or unreadable."""
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT)
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated or foreign file
        raise ValueError(f"checkpoint {path!r} is unreadable: {type(e).__name__}") from None


def load_run_checkpoint(path: str, map_location="cpu") -> dict:
    """Read a checkpoint written by :class:`~hlvm.training.Trainer` (ValueError if it is not one)."""
    ck = load_checkpoint(path, map_location)
    missing = [k for k in _RUN_KEYS if not isinstance(ck, dict) or k not in ck]
    if missing:
        raise ValueError(f"{path!r} is not an hlvm training checkpoint (it lacks {', '.join(missing)})")
    return ck


def rng_state() -> dict:
    """The global random states (torch, Python, NumPy, and CUDA when initialized)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the global random states of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
