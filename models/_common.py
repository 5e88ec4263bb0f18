"""Small helpers shared by the zoo (not part of the user-facing API)."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch

from hlvm.programs.likelihoods import Likelihood, make_likelihood
from hlvm.validate import check_data, check_float, check_int, check_shape


def check_sizes(data_shape, **sizes) -> tuple:
    """The zoo's constructor checks, written once: ``data_shape`` a tuple of positive integers and
    each of ``sizes`` (name → (value, minimum)) an integer >= its minimum.  Returns data_shape."""
    for name, (value, minimum) in sizes.items():
        check_int(name, value, minimum)
    return check_shape("data_shape", data_shape)


def check_gamma_range(gamma_min, gamma_max) -> None:
    """γ(0) = gamma_min < γ(1) = gamma_max, both finite (the schedule's endpoints, −log SNR)."""
    check_float("gamma_min", gamma_min)
    check_float("gamma_max", gamma_max, minimum=gamma_min, strict=True)


def prepare(module: torch.nn.Module, x: torch.Tensor, values: bool | None = True) -> torch.Tensor:
    """Data entering ``module``'s programs: shape (batch, *data_shape) checked and cast to the
    parameters' dtype (:func:`hlvm.validate.check_data`).  While Pyro validation is on, at most ONE
    pass over the values: ``values=True`` the likelihood's check of its representation (NaN and
    ±inf fail it too, and its message names them), ``False`` the check for NaN and ±inf alone
    (a guide, run before the model), ``None`` none (a program that checks them itself)."""
    ref = next((p for p in module.parameters() if torch.is_floating_point(p)), None)
    x = check_data(x, module.data_shape, None if ref is None else ref.dtype, finite=values is False)
    if values:
        module.likelihood.check(x)
    return x


def resolve_likelihood(likelihood, data_shape) -> Likelihood:
    """A Likelihood instance from a kind name (``binary``, ``8bit``, ``continuous``) or an instance."""
    if isinstance(likelihood, Likelihood):
        if tuple(likelihood.event_shape) != tuple(data_shape):
            raise ValueError(f"likelihood event shape {likelihood.event_shape} != data_shape {tuple(data_shape)}")
        return likelihood
    return make_likelihood(likelihood, data_shape)


def batch_of(x, batch_size) -> int:
    """The batch size of a program run on data ``x``, or on none (sampling) with ``batch_size``."""
    if x is not None:
        return x.shape[0]
    if batch_size is None:
        raise ValueError("give the data x, or batch_size (an integer >= 1) to run the model without data")
    return check_int("batch_size", batch_size, 1)


def check_fourier(fourier) -> None:
    """``fourier``: None, or ``(n_min, n_max)``, integers with n_min <= n_max (Fourier features 2^n π z)."""
    ok = fourier is None or (isinstance(fourier, (tuple, list)) and len(fourier) == 2 and
                             all(isinstance(n, int) and not isinstance(n, bool) for n in fourier) and fourier[0] <= fourier[1])
    if not ok:
        raise ValueError(f"fourier must be None or (n_min, n_max), two integers with n_min <= n_max, got {fourier!r}")


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
