"""Building models by name — zoo names or a user's ``path/to/file.py:ClassName`` — and choosing
the estimator that fits each model's DAG."""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys

from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from .programs.chain import DiffusionChain
from .programs.elbo import DiffusionELBO

__all__ = ["load_class", "build_model", "default_estimator", "make_estimator", "has_diffusion", "ESTIMATORS"]

ESTIMATORS = ("auto", "trace", "meanfield", "diffusion")


def load_class(spec: str):
    """A model class from a zoo name (``vae``, ``hvae-bu``, ``hvae-td``, ``vdm``) or ``file.py:ClassName``."""
    from models import ZOO

    if spec in ZOO:
        return ZOO[spec]
    if ":" not in spec:
        raise ValueError(f"unknown model {spec!r}; expected one of {sorted(ZOO)} or path/to/file.py:ClassName")
    path, _, name = spec.rpartition(":")
    if not os.path.isfile(path):
        raise ValueError(f"model file {path!r} does not exist")
    mod_name = f"hlvm_user_{abs(hash(os.path.abspath(path)))}"
    if mod_name not in sys.modules:
        spec_ = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec_)
        sys.modules[mod_name] = module
        try:
            spec_.loader.exec_module(module)
        except Exception as e:  # a user's file that fails to import is bad input
            del sys.modules[mod_name]
            raise ValueError(f"could not import {path!r}: {type(e).__name__}: {e}") from None
    cls = getattr(sys.modules[mod_name], name, None)
    if cls is None or not inspect.isclass(cls):
        raise ValueError(f"{path!r} defines no class {name!r}")
    if not (hasattr(cls, "model") and hasattr(cls, "guide")):
        raise ValueError(f"{name!r} in {path!r} needs model() and guide() methods")
    return cls


def build_model(spec: str, data_shape, kind: str = "binary", T: int | None = None, layers: int | None = None, **kwargs):
    """Instantiate ``spec`` for data of ``data_shape`` and representation ``kind``.

    Only the keyword arguments the class accepts are passed (``likelihood``, ``T``, ``layers``…),
    so user classes with other signatures work as long as their defaults fit the data.
    """
    cls = load_class(spec)
    params = inspect.signature(cls.__init__).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    candidates = {"data_shape": tuple(data_shape), "likelihood": kind, **kwargs}
    if T is not None or "T" in params:
        candidates["T"] = T
    if layers is not None:
        if "layers" not in params and not accepts_any:
            raise ValueError(f"model {spec!r} has no 'layers' option")
        candidates["layers"] = layers
    if T is not None and "T" not in params and not accepts_any:
        raise ValueError(f"model {spec!r} has no 'T' option")
    chosen = {k: v for k, v in candidates.items() if k in params or accepts_any}
    return cls(**chosen)


def has_diffusion(model) -> bool:
    return any(isinstance(m, DiffusionChain) for m in model.modules())


def default_estimator(model, **kwargs):
    """DiffusionELBO for models with a diffusion chain; TraceMeanField_ELBO for top-down guides
    (exact analytic KLs); Trace_ELBO otherwise (bottom-up guides)."""
    if has_diffusion(model):
        return DiffusionELBO(**kwargs)
    from models import TopDownHVAE, VAE

    if isinstance(model, (VAE, TopDownHVAE)):
        return TraceMeanField_ELBO(**kwargs)
    return Trace_ELBO(**kwargs)


def make_estimator(name: str, model, **kwargs):
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; expected one of {list(ESTIMATORS)}")
    if name == "auto":
        return default_estimator(model, **kwargs)
    if name == "diffusion":
        if not has_diffusion(model):
            raise ValueError("the diffusion estimator needs a model with a DiffusionChain")
        return DiffusionELBO(**kwargs)
    return {"trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO}[name](**kwargs)
