"""Results that cannot be: a bound on log p(x) above 0 nats for discrete data is an error; and k̂
is finite at its documented minimum K."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule

from hlvm.eval import MIN_KHAT_SAMPLES, evaluate, pareto_khat


class _Bonus(PyroModule):
    """z ∼ N(0, 1), x | z ∼ Bernoulli(sigmoid(w)) (or N(0, 0.1²) for continuous data), plus a
    factor of ``bonus`` nats per example: a broken model when the bonus is positive."""

    data_shape = (1, 4, 4)

    def __init__(self, likelihood, bonus):
        super().__init__()
        self.likelihood, self.bonus = likelihood, bonus
        self.w = torch.nn.Parameter(torch.zeros(self.data_shape))

    def _x_dist(self):
        if self.likelihood == "binary":
            return dist.Bernoulli(logits=self.w).to_event(3)
        return dist.Normal(0.0 * self.w, 0.1).to_event(3)

    def model(self, x=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
            pyro.factor("bonus", torch.full((x.shape[0],), self.bonus, dtype=x.dtype))
            pyro.sample("x", self._x_dist(), obs=x)

    def guide(self, x=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))


def _binary(dtype, n=20):
    return torch.bernoulli(torch.full((n, 1, 4, 4), 0.5, dtype=dtype), generator=torch.Generator().manual_seed(0))


def test_positive_elbo_on_discrete_data_is_an_error(dtype):
    x = _binary(dtype)
    m = _Bonus("binary", 1000.0).to(dtype)
    with pytest.raises(ValueError, match=r"impossible result: elbo \+98\d(\.\d+)? nats per example, but the data "
                                         r"are discrete"):
        evaluate(m, x, seed=0)
    with pytest.raises(ValueError, match="impossible result: .*iwae"):
        evaluate(m, x, seed=0, K=2, breakdown=False)
    # the same model without the bonus reports an ELBO <= 0
    ok = evaluate(_Bonus("binary", 0.0).to(dtype), x, seed=0)
    assert ok["elbo"] < 0


def test_positive_bound_of_continuous_data_is_a_result(dtype):
    """A density can exceed 1: the check is only for discrete likelihoods."""
    x = 0.01 * torch.randn(20, 1, 4, 4, dtype=dtype, generator=torch.Generator().manual_seed(0))
    out = evaluate(_Bonus("continuous", 1000.0).to(dtype), x, seed=0)
    assert out["elbo"] > 0


def test_khat_is_finite_at_the_documented_minimum():
    lw = torch.randn(MIN_KHAT_SAMPLES, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert MIN_KHAT_SAMPLES == 30
    assert torch.isfinite(pareto_khat(lw)).all()
    with pytest.raises(ValueError, match="at least 30"):
        pareto_khat(lw[:MIN_KHAT_SAMPLES - 1])
