"""Everything a run needs, tried before any run starts: ``hlvm compare`` checks every model so that a
broken fourth model fails in seconds, not after three models have trained.

:func:`preflight` builds the model as its run will (the Hierarchy contract, its options), checks that
its likelihood's support holds the data, and takes one gradient of its training objective on a few
examples — in a scratch param store and RNG state, so the runs that follow start exactly as they
would have without it.
"""

from __future__ import annotations

import math

import pyro
import torch
from pyro.infer import TraceMeanField_ELBO

from ..data import DataSplit
from ..estimators import make_estimator
from ..limits import model_label
from ..registry import build_model
from .checks import check_data_fits
from .free_bits import FreeBitsELBO

__all__ = ["training_objective", "preflight"]

#: examples of the training batch :func:`preflight` takes a gradient on
PREFLIGHT_EXAMPLES = 8


def training_objective(cfg, model):
    """(the ELBO estimator of the model's DAG, the training objective): the estimator ``cfg.estimator``
    names (``auto``: :func:`hlvm.estimators.default_estimator`), and with ``cfg.free_bits`` > 0 the
    free-bits objective (Kingma et al. 2016), which needs the analytic per-layer KLs."""
    bound = make_estimator(cfg.estimator, model, **cfg.estimator_kwargs)
    if cfg.free_bits <= 0:
        return bound, bound
    if not isinstance(bound, TraceMeanField_ELBO):
        raise ValueError("--free-bits needs analytic per-layer KLs: a model whose estimator is TraceMeanField_ELBO")
    return bound, FreeBitsELBO(cfg.free_bits)


def preflight(cfg, data: DataSplit) -> None:
    """Raise ValueError, naming the model, if the run ``cfg`` would fail at its start: the model
    cannot be built, does not fit the data, or its objective gives no finite loss and gradient on
    a few training examples.  Leaves the param store and every RNG as it found them."""
    label = model_label(cfg.model, cfg.model_kwargs)
    devices = [torch.device(cfg.device)] if str(cfg.device).startswith("cuda") else []
    with torch.random.fork_rng(devices=devices), pyro.get_param_store().scope():
        model = build_model(cfg.model, data.shape, data.kind, T=cfg.T, layers=cfg.layers,
                            **cfg.model_kwargs).to(cfg.device)
        dtype = next((p.dtype for p in model.parameters()), torch.get_default_dtype())
        check_data_fits(model, data.test[:2].to(cfg.device, dtype), cfg.model, data)
        _, objective = training_objective(cfg, model)
        x = data.train[:PREFLIGHT_EXAMPLES].to(cfg.device, dtype)
        try:
            loss = objective.loss_and_grads(model.model, model.guide, x)
        except Exception as e:
            said = " ".join(line.strip() for line in str(e).splitlines()[:2] if line.strip())[:300]
            raise ValueError(f"{label}: one training step on {x.shape[0]} examples failed "
                             f"({type(e).__name__}: {said})") from e
        finally:
            model.zero_grad(set_to_none=True)
        if not math.isfinite(loss):
            raise ValueError(f"{label}: the training loss on {x.shape[0]} examples is {loss} before any training")
