"""The estimator that fits a program's structure, read from its DAG — never from its class.

* a :class:`~hlvm.DiffusionChain` inside → :class:`~hlvm.DiffusionELBO` (collapses it analytically);
* :func:`~hlvm.check_mean_field` holds (every latent's model parents precede it in the guide: a
  top-down guide) → ``TraceMeanField_ELBO``, whose analytic KLs are then exact;
* otherwise (e.g. a bottom-up guide) → ``Trace_ELBO``.
"""

from __future__ import annotations

from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from .graph import check_mean_field
from .limits import ESTIMATORS
from .programs.chain import chains_of
from .programs.elbo import DiffusionELBO

__all__ = ["ESTIMATORS", "default_estimator", "make_estimator"]



def default_estimator(model, data=None, **kwargs):
    """The ELBO for ``model`` by the rule of the module docstring; ``kwargs`` go to its constructor.

    :param data: a batch to trace the programs on when the DAG must be read (default: zeros of
        ``model.data_shape``; a hierarchy without one needs ``data``).
    """
    if chains_of(model):
        return DiffusionELBO(**kwargs)
    mean_field = check_mean_field(model) if data is None else check_mean_field(model.model, model.guide, data[:2])
    if mean_field:
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
