"""Small helpers shared by the zoo (not part of the user-facing API)."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch

from hlvm.programs.likelihoods import Likelihood, make_likelihood


def resolve_likelihood(likelihood, data_shape) -> Likelihood:
    """A Likelihood instance from a kind name (``binary``, ``8bit``, ``continuous``) or an instance."""
    if isinstance(likelihood, Likelihood):
        if tuple(likelihood.event_shape) != tuple(data_shape):
            raise ValueError(f"likelihood event shape {likelihood.event_shape} != data_shape {tuple(data_shape)}")
        return likelihood
    return make_likelihood(likelihood, data_shape)


def batch_of(x, batch_size) -> int:
    if x is not None:
        return x.shape[0]
    if batch_size is None:
        raise ValueError("give x or batch_size")
    return int(batch_size)


def std_normal(batch: int, dim: int, like: torch.Tensor):
    """N(0, I) over (batch, dim) with one event dim."""
    zeros = torch.zeros(batch, dim, dtype=like.dtype, device=like.device)
    return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)


def ref_tensor(module: torch.nn.Module, x=None) -> torch.Tensor:
    """A tensor carrying the dtype/device to generate with."""
    if x is not None and torch.is_floating_point(x):
        return x
    return next(module.parameters())


def flat_dim(shape) -> int:
    return math.prod(shape)
