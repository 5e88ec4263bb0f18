"""Checks of user input at hlvm's boundaries, written once: every constructor of the zoo, the data
entering a model program, the CLI's options and errors in a user's model file.

Each check raises a :class:`ValueError` whose message names the argument and its allowed range
(the CLI prints it as one line and exits with code 2), before any work starts.  Data are checked
where they enter a program: shape and dtype on every call (cheap), values (NaN, ±inf) only while
:func:`pyro.enable_validation` is on, as Pyro's own distributions do.
"""

from __future__ import annotations

import math
import numbers
import os
import traceback

import torch
from pyro.infer.util import is_validation_enabled

__all__ = ["check_int", "check_float", "check_choice", "check_shape", "check_device", "check_data",
           "describe_values", "user_error"]


def check_int(name: str, value, minimum: int | None = 1, maximum: int | None = None, note: str = "",
              optional: bool = False) -> int | None:
    """``value`` as an int, or ValueError naming ``name`` and the range [minimum, maximum]
    (``note`` follows the range in the message, e.g. " (0: off)"); None passes when ``optional``."""
    if value is None and optional:
        return None
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum):
        return int(value)
    if maximum is None:
        wanted = "an integer" if minimum is None else f"an integer >= {minimum}"
    else:
        wanted = f"an integer in [{minimum}, {maximum}]"
    raise ValueError(f"{name} must be {wanted}{note}, got {value!r}")


def check_float(name: str, value, minimum: float | None = None, maximum: float | None = None,
                strict: bool = False, optional: bool = False) -> float | None:
    """``value`` (a number or a one-element tensor) as a finite float in [minimum, maximum] (open
    interval when ``strict``); None passes when ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        value = value.item()
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        lo = minimum is None or (value > minimum if strict else value >= minimum)
        hi = maximum is None or (value < maximum if strict else value <= maximum)
        if lo and hi:
            return float(value)
    if minimum is not None and maximum is not None:
        rng = f"in {'(' if strict else '['}{minimum:g}, {maximum:g}{')' if strict else ']'}"
    elif minimum is not None:
        rng = f"{'>' if strict else '>='} {minimum}"
    elif maximum is not None:
        rng = f"{'<' if strict else '<='} {maximum}"
    else:
        rng = ""
    raise ValueError(f"{name} must be a finite number{' ' + rng if rng else ''}, got {value!r}")


def check_choice(name: str, value, allowed) -> str:
    """``value`` if it is one of ``allowed``, else ValueError listing them."""
    if isinstance(value, str) and value in allowed:
        return value
    raise ValueError(f"unknown {name} {value!r}; expected one of {list(allowed)}")


def check_shape(name: str, shape) -> tuple:
    """A per-example shape: a non-empty tuple of positive integers."""
    try:
        dims = tuple(shape)
        ok = len(dims) >= 1 and all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 1 for d in dims)
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a non-empty tuple of positive integers, e.g. (1, 28, 28), got {shape!r}")
    return tuple(int(d) for d in dims)


def check_device(option: str, device) -> torch.device:
    """A torch device that exists on this machine (``cpu``, ``cuda``, ``cuda:N``)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{option} must be cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{option} {device}: no CUDA device is available (CUDA is not available on this machine: "
                             f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use {option} cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{option} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise ValueError(f"{option} must be cpu, cuda or cuda:N, got {device!r}")
    return dev


def describe_values(x: torch.Tensor) -> str:
    """What is wrong with the values of ``x``, for an error message: NaN/inf counts, else the range."""
    nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
    if nan or inf:
        return f"the data contain {nan} NaN and {inf} infinite value(s) of {x.numel()}"
    lo, hi = float(x.min()), float(x.max())
    integral = bool((x == x.round()).all())
    return f"got {'integer ' if integral else ''}values in [{lo:g}, {hi:g}]"


def check_data(x, data_shape, dtype: torch.dtype | None = None, name: str = "x", finite: bool = True) -> torch.Tensor:
    """Data as a model of per-example shape ``data_shape`` takes it: a tensor (batch, *data_shape).

    Shape and type are checked on every call; a real or integer tensor of another dtype is cast to
    ``dtype`` (the model's parameters' dtype: exact for binary and 8-bit data); with ``finite``,
    NaN and ±inf are refused while Pyro validation is enabled (one pass over the values).
    """
    shape = tuple(data_shape)
    expected = f"(batch, {', '.join(map(str, shape))})"
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {expected}, got {type(x).__name__}")
    if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape or x.shape[0] < 1:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; this model expects {expected} with batch >= 1")
    if x.is_complex():
        raise ValueError(f"{name} must be real-valued, got dtype {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        x = x.to(dtype)
    if finite and is_validation_enabled() and torch.is_floating_point(x) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: {describe_values(x)}")
    return x


def user_error(exc: BaseException, path: str, what: str, preposition: str = "in") -> ValueError:
    """A one-line ValueError for an exception raised by a user's file:
    ``<what> <preposition> path:line: Type: message`` (``<what>: Type: message`` without a path).

    The line is the last traceback frame inside ``path`` (a SyntaxError's own line number).
    """
    line = None
    if path and isinstance(exc, SyntaxError) and exc.lineno and exc.filename \
            and os.path.abspath(exc.filename) == os.path.abspath(path):
        line = exc.lineno
    elif path:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if os.path.abspath(f.filename) == os.path.abspath(path)]
        line = frames[-1].lineno if frames else None
    where = "" if not path else " ".join(filter(None, [preposition, f"{path}:{line}" if line else path]))
    msg = str(exc).splitlines()[0] if str(exc) else ""
    return ValueError(f"{what}{' ' + where if where else ''}: {type(exc).__name__}{': ' + msg if msg else ''}")
