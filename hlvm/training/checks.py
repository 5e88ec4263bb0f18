"""Checks of a training run made before any work starts: option ranges, the run folder, resume
compatibility, and whether the data fit the model's likelihood.

Every function raises :class:`ValueError` with one line that names the option (by its CLI
spelling, e.g. ``--batch-size``) and the allowed range; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Any

import torch

from ..eval.possible import observed_site
from ..programs.chain import check_T
from ..limits import ESTIMATORS, LR_SCHEDULES
from ..validate import check_device, check_float, check_int

__all__ = ["validate_config", "check_compare_options", "prepare_run_folder", "writable_folder", "clean_stale_tmp",
           "config_changes", "ConfigChange", "check_data_fits", "ALLOWED_ON_RESUME", "QUIET_ON_RESUME", "MAX_SEED",
           "MAX_FREE_BITS", "ESTIMATORS", "IWAE_BUDGET"]

#: the largest seed NumPy's generator accepts
MAX_SEED = 2**32 - 1
#: most chain steps (K × examples × T) of a comparison's IWAE bound of a discrete-time chain:
#: about 15 minutes on one CPU core (measured: T = 1000, K = 50, 10 examples in 40 s)
IWAE_BUDGET = 10**7
#: settings that may change on ``--resume`` (they do not alter the trained parameters); logged
ALLOWED_ON_RESUME = ("steps", "epochs", "eval_every", "eval_examples", "checkpoint_every", "progress", "resume",
                     "overwrite", "out", "data_dir", "device", "log_every", "tensorboard", "compile", "threads")
#: allowed changes not worth a log line on resume (the flags of how the run is started and shown)
QUIET_ON_RESUME = ("resume", "overwrite", "progress")
#: the largest --free-bits (nats per example and layer): far above any layer's KL (where it only turns
#: the KL off), and small enough that λ · examples · layers stays finite
MAX_FREE_BITS = 1e6


# --------------------------------------------------------------------------------- option ranges
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate_config(cfg) -> None:
    """All range checks of a :class:`~hlvm.training.TrainConfig`, in one place (no data is read)."""
    check_int("--steps", cfg.steps, 1, optional=True)
    check_int("--epochs", cfg.epochs, 1, optional=True)
    check_int("--batch-size", cfg.batch_size, 1)
    check_float("--lr", cfg.lr, 0, strict=True)
    check_T(cfg.T, "--T")
    check_int("--layers", cfg.layers, 1, optional=True)
    if cfg.estimator not in ESTIMATORS:
        raise ValueError(f"--estimator must be one of {', '.join(ESTIMATORS)}, got {cfg.estimator!r}")
    check_device("--device", cfg.device)
    check_int("--seed", cfg.seed, 0, MAX_SEED)
    if not (_is_number(cfg.ema) and 0 <= cfg.ema < 1):
        raise ValueError(f"--ema must be a number in [0, 1) (0: off), got {cfg.ema!r}")
    if cfg.amp and not cfg.device.startswith("cuda"):
        raise ValueError("--amp (bf16 mixed precision) needs --device cuda")
    check_int("--eval-every", cfg.eval_every, 0, note=" (0: each epoch)")
    check_int("--eval-examples", cfg.eval_examples, 1)
    check_int("--checkpoint-every", cfg.checkpoint_every, 0, note=" (0: each epoch)")
    check_int("--grad-shards", cfg.grad_shards, 1)
    check_int("--kl-warmup", cfg.kl_warmup, 0, note=" (0: off)")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"--lr-schedule must be one of {list(LR_SCHEDULES)}, got {cfg.lr_schedule!r}")
    check_int("--lr-warmup", cfg.lr_warmup, 0, note=" (0: off)")
    check_int("--log-every", cfg.log_every, 0, note=" (0: automatic)")
    check_int("--threads", cfg.threads, 1, 1024, optional=True)

    check_float("--free-bits", cfg.free_bits, 0, MAX_FREE_BITS)
    check_float("--grad-clip", cfg.grad_clip, 0, strict=True, optional=True)
    check_float("--skip-norm", cfg.skip_norm, 0, strict=True, optional=True)
    if cfg.resume and cfg.overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue the run or replace it")
    for name in ("model_kwargs", "estimator_kwargs"):
        if not isinstance(getattr(cfg, name, {}), dict):
            raise ValueError(f"{name} must be a dict, got {type(getattr(cfg, name)).__name__}")


def check_compare_options(K: int, iwae_examples: int, eval_examples: int, pfode_examples: int,
                          pfode_samples: int, min_khat: int, T: int | None = None) -> None:
    """The ranges of ``hlvm compare``'s own options; ``--K`` is 0 (no IWAE) or large enough for k̂;
    with a discrete-time chain of ``T`` steps, the IWAE bound's size K · examples · T is at most
    :data:`IWAE_BUDGET` (its stock program traces every step)."""
    if not (_is_int(K) and (K == 0 or K >= min_khat)):
        raise ValueError(f"--K must be 0 (no IWAE bound) or an integer >= {min_khat} (Pareto k̂ fits its tail to "
                         f"⌊K/5⌋ >= 6 weights), got {K!r}")
    check_int("--iwae-examples", iwae_examples, 0, note=" (0: no IWAE bound)")
    check_int("--eval-examples", eval_examples, 1)
    check_int("--pfode-examples", pfode_examples, 0, note=" (0: no PF-ODE bound)")
    check_int("--pfode-samples", pfode_samples, 1)
    size = K * iwae_examples * (T or 0)
    if size > IWAE_BUDGET:
        raise ValueError(f"--K {K} × --iwae-examples {iwae_examples} × --T {T} = {size:.1e} chain steps for the IWAE "
                         f"bound (limit {IWAE_BUDGET:.0e}, about 15 CPU minutes): lower --iwae-examples or --K "
                         "(0: no IWAE bound)")


# --------------------------------------------------------------------------------- the run folder
def prepare_run_folder(out: str, checkpoint: str, resume: bool, overwrite: bool) -> None:
    """Check the run folder before training: it is a writable folder; an existing checkpoint
    needs ``resume`` (continue) or ``overwrite`` (replace); ``resume`` needs one.  Nothing is created yet."""
    ckpt = os.path.join(out, checkpoint)
    _not_a_file(out, "the run")
    if resume and not os.path.isfile(ckpt):
        raise ValueError(f"--resume: no checkpoint in {out!r} ({ckpt} does not exist)")
    if os.path.isfile(ckpt) and not (resume or overwrite):
        raise ValueError(f"--out {out!r} already holds a run ({ckpt}): pass --resume to continue it "
                         "or --overwrite to replace it")
    writable_folder(out)


def writable_folder(out: str, what: str = "the run") -> None:
    """Check that files can be written in ``out`` (ValueError naming --out) without creating it:
    an existing folder is probed with a file; otherwise its nearest existing parent must be a
    writable folder.  The folder itself is made when the first file is written."""
    _not_a_file(out, what)
    try:
        if os.path.isdir(out):
            probe = os.path.join(out, f".write-test-{os.getpid()}")
            with open(probe, "wb"):
                pass
            os.remove(probe)
            return
        parent = os.path.dirname(os.path.abspath(out))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise NotADirectoryError(20, "a parent is a file", parent)
        if not os.access(parent, os.W_OK | os.X_OK):
            raise PermissionError(13, "permission denied", parent)
    except OSError as e:
        raise ValueError(f"--out {out!r} is not a writable folder: {e.strerror or type(e).__name__}") from None


def _not_a_file(out: str, what: str) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out!r} is a file, not a folder: name a folder for {what}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale_tmp(folder: str) -> list[str]:
    """Remove ``.*.tmp-<pid>`` files of checkpoint writes whose process is gone; the paths removed."""
    removed = []
    for path in glob.glob(os.path.join(glob.escape(folder), ".*.tmp-*")):
        pid = path.rpartition(".tmp-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            try:
                os.remove(path)
                removed.append(path)
            except OSError:
                pass
    return removed


# --------------------------------------------------------------------------------- resume
@dataclass(frozen=True)
class ConfigChange:
    """One setting that differs between a checkpoint's config and the current one; shown as
    ``"name A → B"``."""

    field: str
    before: Any
    after: Any

    def __str__(self) -> str:
        return f"{self.field} {self.before!r} → {self.after!r}"


def config_changes(saved: dict, current: dict, defaults: dict) -> tuple[list[ConfigChange], list[ConfigChange]]:
    """(refused, allowed) differences between a checkpoint's config and the current one (allowed:
    the fields in :data:`ALLOWED_ON_RESUME`); keys absent from an older checkpoint take their default."""
    refused, allowed = [], []
    for key in current:
        before = saved.get(key, defaults.get(key))
        if isinstance(before, dict) and isinstance(current[key], dict):  # model_kwargs: one change per option
            changes = _dict_changes(key, before, current[key])
        else:
            changes = [ConfigChange(key, before, current[key])] if before != current[key] else []
        (allowed if key in ALLOWED_ON_RESUME else refused).extend(changes)
    return refused, allowed


class _Unset:
    """An option a config does not give (the constructor's default); shown as ``(default)``."""

    def __repr__(self) -> str:
        return "(default)"


def _dict_changes(key: str, before: dict, after: dict) -> list[ConfigChange]:
    """The changes between two dict settings, one per entry: ``model_kwargs.width 64 → 32``."""
    unset = _Unset()
    names = list(before) + [k for k in after if k not in before]
    return [ConfigChange(f"{key}.{k}", before.get(k, unset), after.get(k, unset)) for k in names
            if k not in before or k not in after or before[k] != after[k]]


# --------------------------------------------------------------------------------- data vs model
def check_data_fits(model, x: torch.Tensor, spec: str, data) -> None:
    """Raise ValueError if the examples ``x`` lie outside the support of the model's observation
    distribution (e.g. 8-bit grey levels given to a Bernoulli likelihood)."""
    site = observed_site(model, x)
    if site is None:
        return
    fn, value = site["fn"], site["value"]
    try:
        inside = bool(fn.support.check(value).all())
    except NotImplementedError:  # a distribution without a checkable support
        return
    if not inside:
        lo, hi = float(x.min()), float(x.max())
        raise ValueError(f"the data do not fit model {spec!r}: {data.name} as {data.kind} data (values {lo:g}..{hi:g}) "
                         f"lie outside the support of its likelihood {_dist_name(fn)}; choose --binarize to match "
                         "the model, or a model whose likelihood fits the data")


def _dist_name(fn) -> str:
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return type(fn).__name__
