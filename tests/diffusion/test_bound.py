"""hlvm.diffusion.bound: the variance objective of a learned schedule (Kingma et al. 2021, §5, App. I.1)."""

import pytest
import torch

from hlvm.diffusion.bound import diffusion_loss
from hlvm.diffusion.schedules import LinearSchedule, MonotoneNetSchedule
from hlvm.diffusion.oracle import GaussianOracle

from conftest import tensor


def _setup(learn_endpoints):
    torch.manual_seed(0)
    sched = MonotoneNetSchedule(-6.0, 6.0, hidden=8, learn_endpoints=learn_endpoints).double()
    with torch.no_grad():  # a visibly non-linear interior
        sched.l3.raw_weight.normal_(0.0, 1.0)
    oracle = GaussianOracle(tensor([0.3, -0.5]), tensor([[0.6, 0.25], [0.25, 0.4]]))
    x = tensor([[0.9, -0.2], [-0.4, -1.1], [0.3, 0.4], [0.0, 0.0]]).repeat(8, 1)
    t = torch.rand(32, dtype=torch.float64)
    return sched, oracle, x, t


def _grads(sched, loss):
    params = [p for p in sched.parameters()]
    return dict(zip([n for n, _ in sched.named_parameters()], torch.autograd.grad(loss, params, allow_unused=True)))


@pytest.mark.parametrize("learn_endpoints", [False, True])
def test_variance_objective_gives_the_interior_the_gradient_of_the_squared_loss(learn_endpoints):
    sched, oracle, x, t = _setup(learn_endpoints)
    torch.manual_seed(1)
    term_v, _ = diffusion_loss(oracle, sched, None, x, t, variance_schedule=True)
    grads_v = _grads(sched, term_v.sum())
    torch.manual_seed(1)
    term, _ = diffusion_loss(oracle, sched, None, x, t)
    torch.testing.assert_close(term_v, term)  # same value: only the interior's gradient differs
    grads_elbo = _grads(sched, term.sum())
    torch.manual_seed(1)
    term2, _ = diffusion_loss(oracle, sched, None, x, t)
    grads_sq = _grads(sched, term2.pow(2).sum())
    interior = [n for n in grads_v if n.startswith(("l1.", "l2.", "l3."))]
    for name, g in grads_v.items():
        if name in interior:  # the interior: ∂ Σ term² / ∂η
            torch.testing.assert_close(g, grads_sq[name], rtol=1e-9, atol=1e-12)
        else:  # the endpoints: the ELBO's gradient
            torch.testing.assert_close(g, grads_elbo[name], rtol=1e-9, atol=1e-12)
    assert any(not torch.allclose(grads_v[n], grads_elbo[n]) for n in interior)  # and that is a different gradient


def test_variance_objective_needs_a_learned_interior():
    _, oracle, x, t = _setup(False)
    with pytest.raises(ValueError, match="learned interior"):
        diffusion_loss(oracle, LinearSchedule().double(), None, x, t, variance_schedule=True)
