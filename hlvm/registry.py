"""Models by name: one registry for the CLI and the Python API, blind to any particular zoo.

Names come from the ``hlvm.models`` entry-point group (``pyproject.toml``; hlvm's own zoo
registers ``vae``, ``hvae-bu``, ``hvae-td`` and ``vdm`` there, and any installed package can add
its own) and from :func:`register` at run time.  ``path/to/file.py:ClassName`` loads a user's
hierarchy from a file.  A class's own constructor defaults are its defaults: :func:`build_model`
passes only ``data_shape``, ``likelihood``, ``T`` and ``layers`` (where the class accepts them)
and the model's options (``hlvm train --set``, ``hlvm compare --models 'name(...)'``), each checked
against the constructor's signature (:func:`check_model_options`), and checks the result against
the :class:`~hlvm.programs.contract.Hierarchy` contract.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
from importlib.metadata import entry_points

from .limits import RESERVED_OPTIONS, format_value, model_label
from .programs.contract import check_hierarchy
from .validate import user_error

__all__ = ["ENTRY_POINT_GROUP", "register", "names", "load_class", "accepts", "model_options", "check_model_options",
           "build_model", "training_defaults", "with_training_defaults"]

ENTRY_POINT_GROUP = "hlvm.models"
_REGISTERED: dict = {}


def register(name: str, cls=None):
    """Register ``cls`` under ``name`` (usable as a decorator: ``@register("my-hvae")``)."""
    def add(c):
        _REGISTERED[name] = c
        return c
    return add if cls is None else add(cls)


def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def names() -> list[str]:
    """Every registered model name, sorted."""
    return sorted(set(_entry_points()) | set(_REGISTERED))


def load_class(spec: str):
    """A hierarchy class from a registered name or ``path/to/file.py:ClassName``.

    Raises:
        ValueError: an unknown name, a missing file or class, or a file that fails to import
            (naming the file and line).
    """
    if spec in _REGISTERED:
        return _REGISTERED[spec]
    eps = _entry_points()
    if spec in eps:
        return register(spec, eps[spec].load())
    if ":" not in spec:
        raise ValueError(f"unknown model {spec!r}; expected one of {names()} or path/to/file.py:ClassName")
    path, _, name = spec.rpartition(":")
    if not os.path.isfile(path):
        raise ValueError(f"model file {path!r} does not exist")
    module = _import_file(path)
    cls = getattr(module, name, None)
    if cls is None or not inspect.isclass(cls):
        raise ValueError(f"{path!r} defines no class {name!r}")
    for method in ("model", "guide"):
        if not callable(getattr(cls, method, None)):
            raise ValueError(f"{name!r} in {path!r} breaks the Hierarchy contract: it has no {method}(x) method")
    return cls


def _import_file(path: str):
    mod_name = f"hlvm_user_{abs(hash(os.path.abspath(path)))}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {path!r} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a user's file that fails to import is bad input: name file and line
        del sys.modules[mod_name]
        raise user_error(e, path, "could not import", preposition="") from e
    return module


def _construct(cls, spec: str, kwargs: dict, options: dict):
    """``cls(**kwargs)`` as a one-line ValueError when it fails: naming the file and line for a
    user's ``path/file.py:Class``; a zoo class's own ValueError (its argument checks) as it is;
    prefixed by the option whose value the constructor refuses, when one of ``options`` is."""
    try:
        return cls(**kwargs)
    except Exception as e:
        path, _, name = spec.rpartition(":")
        if path and os.path.isfile(path):
            raise user_error(e, path, f"{name}(...) failed") from e
        first = str(e).splitlines()[0] if str(e) else ""
        message = first if isinstance(e, ValueError) else f"{type(e).__name__}: {first}"
        blamed = _blame(cls, kwargs, options)
        if blamed is not None:
            raise ValueError(f"model {spec!r}: option {blamed}={format_value(options[blamed])} refused: {message}") from e
        if isinstance(e, ValueError):
            raise
        raise ValueError(f"model {model_label(spec, options)!r} could not be built: {message}") from e


def _blame(cls, kwargs: dict, options: dict):
    """The first of ``options`` whose value alone (the others left at their defaults) makes
    ``cls`` fail to build, or None (called only after ``cls(**kwargs)`` failed)."""
    base = {k: v for k, v in kwargs.items() if k not in options}
    for key in options:
        try:
            cls(**base, **{key: kwargs[key]})
        except Exception:
            return key
    return None


def accepts(spec: str, option: str) -> bool:
    """Whether the class of ``spec`` takes the constructor argument ``option``."""
    params = inspect.signature(load_class(spec).__init__).parameters
    return option in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def training_defaults(spec: str) -> dict:
    """The trainer options (:class:`~hlvm.training.TrainConfig` fields) that ``spec``'s class
    declares as its recipe in a class attribute ``training_defaults`` — for the zoo, those that won
    its family's validation search (docs/results.md) — or ``{}``.  ``hlvm train``, ``compare`` and
    ``demo`` use them where the command line does not set the option."""
    return dict(getattr(load_class(spec), "training_defaults", None) or {})


def with_training_defaults(cfg, fixed=()):
    """``cfg`` (a :class:`~hlvm.training.TrainConfig`) with its model's :func:`training_defaults`
    for every field not in ``fixed`` (the fields the user set)."""
    from dataclasses import replace

    recipe = {k: v for k, v in training_defaults(cfg.model).items() if k not in fixed}
    return replace(cfg, **recipe) if recipe else cfg


def model_options(spec: str) -> list[str]:
    """The options of ``spec``'s constructor a user sets by name: its keyword arguments, less those
    the command line sets otherwise (:data:`~hlvm.limits.RESERVED_OPTIONS`: data shape, likelihood,
    ``T``, ``layers``)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = list(inspect.signature(load_class(spec).__init__).parameters.values())[1:]  # less self
    return [p.name for p in params if p.kind in kinds and p.name not in RESERVED_OPTIONS]


def check_model_options(spec: str, options: dict) -> None:
    """ValueError, in one line, for the first of ``options`` that ``spec``'s constructor does not
    take by name (listing those it takes), or that another option sets (naming it)."""
    known = model_options(spec)
    params = inspect.signature(load_class(spec).__init__).parameters.values()
    any_name = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    for key in options:
        if key in RESERVED_OPTIONS:
            raise ValueError(f"model option {key!r} is set by {RESERVED_OPTIONS[key]}, not as a model option")
        if key not in known and not any_name:
            raise ValueError(f"model {spec!r} has no option {key!r}; its options: {', '.join(known) or '(none)'}")


def build_model(spec: str, data_shape=None, kind: str | None = "binary", T: int | None = None,
                layers: int | None = None, strict: bool = True, **kwargs):
    """Instantiate ``spec`` for data of ``data_shape`` and representation ``kind``, checked
    against the Hierarchy contract.

    Only the keyword arguments the class accepts are passed (``data_shape``, ``likelihood``,
    ``T``, ``layers``; None means "the class's default"), so user classes with other signatures
    work as long as their defaults fit the data.  ``kwargs``, the model's options, are passed as
    they are and must be constructor arguments (:func:`check_model_options`); a value the
    constructor refuses is a ValueError naming its option.  With ``strict``, asking for ``T`` or
    ``layers`` of a class without them is an error (``hlvm render`` passes them loosely).  A model
    without a ``data_shape`` attribute (Pyro's tutorial style) is given ``data_shape``: the shape of
    one example of the data the command loads.
    """
    check_model_options(spec, kwargs)
    cls = load_class(spec)
    params = inspect.signature(cls.__init__).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if strict:
        for option, value in (("T", T), ("layers", layers)):
            if value is not None and option not in params and not accepts_any:
                raise ValueError(f"model {spec!r} has no {option!r} option")
    candidates = {"data_shape": None if data_shape is None else tuple(data_shape), "likelihood": kind,
                  "T": T, "layers": layers, **kwargs}
    # T=None is meaningful (continuous time) for a class that takes T: always passed
    chosen = {k: v for k, v in candidates.items()
              if (k in params or accepts_any) and (v is not None or k == "T" or k in kwargs)}
    model = _construct(cls, spec, chosen, kwargs)
    if getattr(model, "data_shape", None) is None and data_shape is not None:
        model.data_shape = tuple(data_shape)
    check_hierarchy(model, model_label(spec, kwargs))  # a failure names the options too
    return model
