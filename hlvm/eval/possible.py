"""Bounds that no model can reach: a lower bound on log p(x) above 0 nats for discrete data.

For data with a discrete likelihood (binarized, 8-bit) p(x) ≤ 1, so every lower bound on log p(x)
— ELBO, IWAE, PF-ODE bound — is ≤ 0 nats.  A mean above 0 (by more than 3 standard errors of
its Monte Carlo estimate) means a broken model or estimator and is raised, never reported.
"""

from __future__ import annotations

import math

import pyro
import torch
from pyro import poutine

from ..programs.chain import StockChains, chains_of, override_steps
from ..programs.roles import data_roles

__all__ = ["observed_site", "check_possible", "BOUNDS"]

#: the bounds on log p(x) that :func:`~hlvm.eval.evaluate` reports, with their standard errors
BOUNDS = (("elbo", "nats_se"), ("iwae", "iwae_se"), ("pfode", "pfode_se"))


def observed_site(model, x: torch.Tensor):
    """The data site (:func:`~hlvm.programs.roles.data_roles`) of one run of the model's stock program on
    ``x`` (diffusion chains traced with two steps), without touching the RNG state or the param store."""
    name = data_roles(model, x).site
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), torch.no_grad(), \
            pyro.validation_enabled(False), pyro.get_param_store().scope(), StockChains(), \
            override_steps(chains_of(model), lambda s: min(s, 2)):
        return poutine.trace(model.model).get_trace(x).nodes[name]


def _discrete(model, x) -> bool:
    site = observed_site(model, x[:2])
    try:
        return site is not None and bool(site["fn"].support.is_discrete)
    except NotImplementedError:
        return False


def check_possible(results: dict, model, x: torch.Tensor) -> None:
    """Raise ValueError if a bound in ``results`` exceeds 0 nats for a model of discrete data."""
    above = []
    for key, se_key in BOUNDS:
        value, se = results.get(key), results.get(se_key)
        margin = 3 * se if isinstance(se, float) and math.isfinite(se) else 0.0
        if isinstance(value, float) and value - margin > 0:
            above.append(f"{key} {value:+.4g} nats")
    if above and _discrete(model, x):
        raise ValueError(f"impossible result: {', '.join(above)} per example, but the data are discrete (p(x) <= 1, "
                         "so every bound on log p(x) is <= 0): the model or its estimator is broken")
