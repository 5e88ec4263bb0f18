"""Sampling any hierarchy by running its own generative program forward.

:func:`sample` traces ``model`` on a batch of placeholder data under
:func:`pyro.poutine.uncondition`, so the data site (whatever its name: :mod:`.roles`) is drawn from p(x | ·) instead of
observed, and every latent from its prior: ancestral sampling of the DAG with nothing written by
the user.  A zoo model's own ``sample`` method (few-step ancestral, Langevin) is a faster sampler
of the same law; the tests check the two agree in law.
"""

from __future__ import annotations

import torch
from pyro import poutine

from ..validate import check_int
from .chain import StockChains, chains_of, override_steps
from .roles import data_roles, example_batch

__all__ = ["sample", "draw"]


def sample(hierarchy, n: int, steps: int | None = None, return_mean: bool = True, data_shape=None) -> torch.Tensor:
    """n draws of x from ``hierarchy.model`` run forward, shape (n, *data_shape).

    Args:
        data_shape: the shape of one example, for a hierarchy without a ``data_shape`` attribute
            (the model is run on a placeholder batch of that shape).
        steps: steps of continuous-time diffusion chains in the program (default: their
            ``trace_steps``); discrete chains always run their T steps.
        return_mean: the mean of p(x | ·) at the sampled latents (as image grids show) instead of
            a draw of x itself.
    """
    check_int("n", n, 1)
    if steps is not None:
        check_int("steps", steps, 1)
    placeholder = example_batch(hierarchy, n, data_shape)
    name = data_roles(hierarchy, placeholder).site
    continuous = [c for c in chains_of(hierarchy) if c.T is None]
    with torch.no_grad(), StockChains(), override_steps(continuous, lambda s: steps or s):
        site = poutine.trace(poutine.uncondition(hierarchy.model)).get_trace(placeholder).nodes[name]
    return site["fn"].mean if return_mean else site["value"]


def draw(hierarchy, n: int, steps: int | None = None) -> torch.Tensor:
    """Samples (means of p(x | ·)) by the hierarchy's own ``sample(n[, steps])`` when it has one
    (the zoo's fast samplers), else by running its program forward (:func:`sample`)."""
    own = getattr(hierarchy, "sample", None)
    if callable(own):
        return own(n) if steps is None else own(n, steps=steps)
    return sample(hierarchy, n, steps=steps)
