"""Data checks of the likelihoods: shapes always, values while Pyro validation is enabled.

The value checks read the data (a device sync on CUDA), so like ``torch.distributions``'
``validate_args`` they follow ``pyro.enable_validation`` (on by default, and in this suite).
"""

import math

import pyro
import pytest
import torch

from hlvm.programs.likelihoods import BernoulliLikelihood, Discretized8bitLikelihood
from hlvm.zoo import VAE

from conftest import DEVICE

SHAPE = (1, 4, 4)


def _binary(n=3):
    return torch.bernoulli(torch.full((n,) + SHAPE, 0.5)).to(DEVICE, torch.get_default_dtype())


@pytest.mark.parametrize("bad", [0.5, -1.0, 2.0, 1e-30, 1 - 2 ** -20, math.nan, math.inf, -math.inf])
def test_binary_check_rejects_every_non_binary_value(bad):
    x = _binary()
    BernoulliLikelihood(SHAPE).check(x)  # a binary batch passes
    x[1, 0, 2, 3] = bad
    with pytest.raises(ValueError, match=r"binary likelihood needs data in \{0, 1\}"):
        BernoulliLikelihood(SHAPE).check(x)


@pytest.mark.parametrize("bad", [-1.0, 256.0, 3.5, math.nan])
def test_8bit_check_rejects_values_off_the_grid(bad):
    x = torch.randint(0, 256, (2,) + SHAPE).to(DEVICE, torch.get_default_dtype())
    lik = Discretized8bitLikelihood(SHAPE)
    lik.check(x)
    x[0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match="8bit likelihood needs integer data"):
        lik.check(x)


def test_shape_is_checked_even_without_validation():
    with pyro.validation_enabled(False):
        with pytest.raises(ValueError, match="event shape"):
            BernoulliLikelihood(SHAPE).check(torch.zeros(2, 1, 4, 5, device=DEVICE))


def test_value_check_follows_pyro_validation():
    x = _binary()
    x[0, 0, 0, 0] = 0.5
    m = VAE(SHAPE, latent_dim=2, hidden=4).to(DEVICE)
    with pytest.raises(ValueError, match=r"\{0, 1\}"):
        m.model(x)
    with pyro.validation_enabled(False):
        m.model(x)  # not checked: the caller switched validation off
