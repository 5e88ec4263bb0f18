"""Names and limits the command line needs before any heavy import (no torch, no Pyro here).

The modules that own these concepts import them from here, so each lives in one place.
"""

import ast
import os

__all__ = ["DATASETS", "ESTIMATORS", "LR_SCHEDULES", "MAX_T", "RESERVED_OPTIONS", "default_threads", "parse_value", "parse_assignment",
           "parse_options", "split_top_level", "split_models", "parse_model", "format_value", "model_label"]

#: the datasets :func:`hlvm.data.load_dataset` knows
DATASETS = ("mnist5k", "digits", "five-clusters", "gaussian", "ppca", "mnist", "fashion-mnist", "cifar10")

#: the estimator names of ``--estimator`` / :func:`hlvm.estimators.make_estimator` (``auto``: the rule of
#: :func:`hlvm.estimators.default_estimator`, which training and evaluation both follow)
ESTIMATORS = ("auto", "trace", "meanfield", "diffusion")

#: learning-rate schedules (``--lr-schedule``; :mod:`hlvm.training.lr_schedule`)
LR_SCHEDULES = ("constant", "cosine")

#: the most discrete steps a chain takes.  The grid t = i/T, s = t − 1/T is computed in the
#: model's dtype; in float32 the discrete-time weights ½ T expm1(γ_t − γ_s) averaged over the grid
#: stay within 0.1% of their float64 values up to T = 10⁵ (tests/diffusion/test_time_grid.py) and
#: drift beyond it (1% at 10⁶, 7% at 10⁷; at 10⁸ neighbouring times coincide).
MAX_T = 100_000

#: constructor arguments a model's options (``--set``, ``--models 'name(...)'``) may not set: the
#: option of the command line that sets each
RESERVED_OPTIONS = {"data_shape": "--data", "likelihood": "--binarize", "T": "--T", "layers": "--layers"}


def default_threads() -> int:
    """Intra-op threads for a run on this machine: its cores less those other work keeps busy
    (the 1-minute load average), at least 1.  On a shared 2-core machine with one other job this
    is 1 — where torch's default of 2 made a 784×512 matmul 8× slower than 1 thread.  Recorded in
    the run's config; ``--threads N`` overrides it."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = round(os.getloadavg()[0])
    except OSError:  # pragma: no cover - no load average on this platform
        busy = 0
    return max(1, min(cores, cores - busy))


# --------------------------------------------------------------------------------- model options
_WORDS = {"true": True, "false": False, "none": None}
_FLOATS = {"inf": float("inf"), "+inf": float("inf"), "-inf": float("-inf"), "nan": float("nan")}
_OPEN, _CLOSE = "([{", ")]}"


class _Words(ast.NodeTransformer):
    """true / false / none and inf / nan in any case as the Python constants (also inside a tuple or
    list: ``(none,inf)``, which is how :func:`format_value` writes ``(None, float('inf'))``)."""

    def visit_Name(self, node):
        word = node.id.lower()
        if word in _WORDS or word in _FLOATS:
            return ast.copy_location(ast.Constant(_WORDS[word] if word in _WORDS else _FLOATS[word]), node)
        return node


def parse_value(text: str):
    """The value of an option as written on the command line: a Python literal where it is one
    (``3``, ``1e-3``, ``(16,8)``, ``'a b'``; ``true``/``false``/``none`` and ``inf``/``nan`` in any
    case), else the text itself as a string (``cosine``, ``learned-density``).

    :param str text: the text after ``KEY=``.
    """
    stripped = text.strip()
    if stripped.lower() in _FLOATS:
        return _FLOATS[stripped.lower()]
    try:
        return ast.literal_eval(_Words().visit(ast.parse(stripped, mode="eval")))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return stripped


def parse_assignment(text: str) -> tuple:
    """``(key, value)`` of ``KEY=VALUE`` (:func:`parse_value`); ValueError unless KEY is a name."""
    key, eq, value = text.partition("=")
    if not eq or not key.strip().isidentifier():
        raise ValueError(f"expected KEY=VALUE (a constructor argument's name, =, its value), got {text!r}")
    return key.strip(), parse_value(value)


def parse_options(pairs) -> dict:
    """The options of ``(key, value)`` pairs in their order; ValueError naming a key given twice."""
    options = {}
    for key, value in pairs:
        if key in options:
            raise ValueError(f"model option {key!r} is given twice")
        options[key] = value
    return options


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """``text`` split at each ``sep`` outside brackets and quotes (``a,b(c=1,d=(2,3))`` → ``a``,
    ``b(c=1,d=(2,3))``); ValueError for unbalanced brackets or an unclosed quote."""
    parts, depth, quote, start = [], [], None, 0
    for i, c in enumerate(text):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c in _OPEN:
            depth.append(_CLOSE[_OPEN.index(c)])
        elif c in _CLOSE:
            if not depth or depth.pop() != c:
                raise ValueError(f"unbalanced {c!r} at character {i + 1} of {text!r}")
        elif c == sep and not depth:
            parts.append(text[start:i])
            start = i + 1
    if quote or depth:
        raise ValueError(f"unclosed {quote or _OPEN[_CLOSE.index(depth[-1])]!r} in {text!r}")
    return parts + [text[start:]]


def split_models(text: str) -> list[str]:
    """The entries of ``--models`` (``vae,vdm(schedule=cosine,width=512)``), blanks dropped."""
    return [m.strip() for m in split_top_level(text) if m.strip()]


def parse_model(entry: str) -> tuple:
    """``(spec, options)`` of one ``--models`` entry: ``name`` or ``name(KEY=VALUE,...)``."""
    entry = entry.strip()
    if not entry.endswith(")") or "(" not in entry:
        return entry, {}
    spec, _, inner = entry[:-1].partition("(")
    if not spec.strip():
        raise ValueError(f"model entry {entry!r} names no model before its options")
    pairs = [parse_assignment(p) for p in split_top_level(inner) if p.strip()]
    return spec.strip(), parse_options(pairs)


def format_value(value, top: bool = True) -> str:
    """``value`` as :func:`parse_value` reads it back: a plain string bare where it is unambiguous
    (``cosine``), tuples and lists without spaces (``(16,8)``), anything else by ``repr``."""
    if isinstance(value, (tuple, list)):
        inner = ",".join(format_value(v, top=False) for v in value)
        return f"({inner}{',' if len(value) == 1 else ''})" if isinstance(value, tuple) else f"[{inner}]"
    if isinstance(value, str) and top and value and not set(value) & set(" ,=()[]{}'\"\\") \
            and parse_value(value) == value:
        return value
    return repr(value)


def model_label(spec: str, options: dict | None = None) -> str:
    """A model with its options as a report names it and ``--models`` reads it:
    ``vdm(schedule=cosine,width=512)``; the bare ``spec`` without options."""
    if not options:
        return spec
    return f"{spec}(" + ",".join(f"{k}={format_value(v)}" for k, v in options.items()) + ")"
