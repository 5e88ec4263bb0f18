"""The estimator that fits a program's structure, read from its DAG — never from its class.

* a :class:`~hlvm.DiffusionChain` inside → :class:`~hlvm.DiffusionELBO` (collapses it analytically);
* :func:`~hlvm.check_mean_field` holds (every latent's model parents precede it in the guide: a
  top-down guide) → ``TraceMeanField_ELBO``, whose analytic KLs are then exact;
* otherwise (e.g. a bottom-up guide) → ``Trace_ELBO``.
"""

from __future__ import annotations

from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from .graph import check_mean_field
from .programs.chain import chains_of
from .programs.elbo import DiffusionELBO

__all__ = ["ESTIMATORS", "default_estimator", "make_estimator"]

ESTIMATORS = ("auto", "trace", "meanfield", "diffusion")


def default_estimator(model, **kwargs):
    """The ELBO for ``model`` by the rule of the module docstring."""
    if chains_of(model):
        return DiffusionELBO(**kwargs)
    if check_mean_field(model):
        return TraceMeanField_ELBO(**kwargs)
    return Trace_ELBO(**kwargs)


def make_estimator(name: str, model, **kwargs):
    """The estimator called ``name`` (one of :data:`ESTIMATORS`; ``auto``: :func:`default_estimator`)."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; expected one of {list(ESTIMATORS)}")
    if name == "auto":
        return default_estimator(model, **kwargs)
    if name == "diffusion":
        if not chains_of(model):
            raise ValueError("the diffusion estimator needs a model with a DiffusionChain")
        return DiffusionELBO(**kwargs)
    return {"trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO}[name](**kwargs)
