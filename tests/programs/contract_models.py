"""Hierarchies written only to the contract (``model``, ``guide``, ``data_shape``), for the tests.

Loaded as ``tests/programs/contract_models.py:TwoLevelGaussianHVAE``, as a user's file would be.
"""

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule, pyro_method
from torch import nn


def _gauss(out):
    loc, raw = out.chunk(2, dim=-1)  # (B, 2k) -> 2 × (B, k)
    return dist.Normal(loc, F.softplus(raw) + 1e-3).to_event(1)


class TwoLevelGaussianHVAE(PyroModule):
    """z_2 → z_1 → x (Bernoulli) with q(z_2 | x) q(z_1 | z_2, x) (``order="top-down"``) or
    q(z_1 | x) q(z_2 | z_1) (``order="bottom-up"``).  Nothing but model, guide and data_shape."""

    def __init__(self, data_shape=(1, 8, 8), order: str = "top-down", hidden: int = 32):
        super().__init__()
        self.data_shape, self.order = tuple(data_shape), order
        d = math.prod(self.data_shape)
        self.p_z1 = nn.Linear(2, 8)
        self.p_x = nn.Sequential(nn.Linear(4, hidden), nn.SiLU(), nn.Linear(hidden, d))
        self.q_first = nn.Linear(d, 4 if order == "top-down" else 8)
        self.q_second = nn.Linear(d + 2 if order == "top-down" else 4, 8 if order == "top-down" else 4)

    @pyro_method
    def model(self, x):
        b = x.shape[0]
        with pyro.plate("data", b):
            z2 = pyro.sample("z_2", dist.Normal(x.new_zeros(b, 2), 1.0).to_event(1))
            z1 = pyro.sample("z_1", _gauss(self.p_z1(z2)))
            logits = self.p_x(z1).reshape((b,) + self.data_shape)
            return pyro.sample("x", dist.Bernoulli(logits=logits).to_event(len(self.data_shape)), obs=x)

    @pyro_method
    def guide(self, x):
        h = x.flatten(1)
        with pyro.plate("data", x.shape[0]):
            if self.order == "top-down":
                z2 = pyro.sample("z_2", _gauss(self.q_first(h)))
                pyro.sample("z_1", _gauss(self.q_second(torch.cat([h, z2], dim=-1))))
            else:
                z1 = pyro.sample("z_1", _gauss(self.q_first(h)))
                pyro.sample("z_2", _gauss(self.q_second(z1)))


class NoGuide(PyroModule):
    data_shape = (1, 8, 8)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Bernoulli(0.5 * torch.ones_like(x)).to_event(3), obs=x)


class NoDataShape(NoGuide):
    data_shape = None

    def guide(self, x):
        pass


class ObservesY(NoDataShape):
    """Legal: the data site and the plate may have any names."""
    data_shape = (1, 8, 8)

    def model(self, x):
        with pyro.plate("batch", x.shape[0]):
            pyro.sample("y", dist.Bernoulli(0.5 * torch.ones_like(x)).to_event(3), obs=x)


class ObservesTwice(NoDataShape):
    """Two observed sites holding the data: which one is the data's is the user's to say."""
    data_shape = (1, 8, 8)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("a", dist.Bernoulli(0.5 * torch.ones_like(x)).to_event(3), obs=x)
            pyro.sample("b", dist.Bernoulli(0.4 * torch.ones_like(x)).to_event(3), obs=x)


class ObservesTwiceChosen(ObservesTwice):
    observed = "b"


class ObservesNothing(NoDataShape):
    data_shape = (1, 8, 8)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Bernoulli(0.5 * torch.ones_like(x)).to_event(3))


class NoDataPlate(NoDataShape):
    data_shape = (1, 8, 8)

    def model(self, x):
        pyro.sample("x", dist.Bernoulli(0.5 * torch.ones_like(x)).to_event(4), obs=x)


class BrokenModel(NoDataShape):
    data_shape = (1, 8, 8)

    def model(self, x):
        raise RuntimeError("shapes do not fit")


class UnregisteredParameters(TwoLevelGaussianHVAE):
    """Parameters, but model/guide without @pyro_method: SVI would see none of them."""

    def model(self, x):
        return TwoLevelGaussianHVAE.model.__wrapped__(self, x)

    def guide(self, x):
        return TwoLevelGaussianHVAE.guide.__wrapped__(self, x)


class FailsOnABatch(NoDataShape):
    """Meets the contract on the few examples it is checked on, then fails on a training batch: only a
    training step finds it (hlvm compare's preflight takes one before training any model)."""
    data_shape = (1, 8, 8)

    def __init__(self):
        super().__init__()
        self.dec = torch.nn.Linear(2, 64)

    def model(self, x):
        pyro.module("dec", self.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            logits = self.dec(z)
            if x.shape[0] > 5:
                logits = logits[:, :10]
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x.reshape(x.shape[0], -1))

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
