"""hlvm.diffusion.bound: the variance objective of a learned schedule (Kingma et al. 2021, §5, App. I.1)."""

import pytest
import torch

from hlvm.diffusion.bound import diffusion_loss
from hlvm.diffusion.schedules import LinearSchedule, MonotoneNetSchedule, DensitySchedule
from hlvm.diffusion.oracle import GaussianOracle

from conftest import tensor


def _setup(learn_endpoints, kind="net"):
    torch.manual_seed(0)
    if kind == "net":
        sched = MonotoneNetSchedule(-6.0, 6.0, hidden=8, learn_endpoints=learn_endpoints).double()
        with torch.no_grad():  # a visibly non-linear interior
            sched.l3.raw_weight.normal_(0.0, 1.0)
    else:
        sched = DensitySchedule(-6.0, 6.0, bins=8, learn_endpoints=learn_endpoints).double()
        with torch.no_grad():
            sched.logits.normal_(0.0, 1.0)
    oracle = GaussianOracle(tensor([0.3, -0.5]), tensor([[0.6, 0.25], [0.25, 0.4]]))
    x = tensor([[0.9, -0.2], [-0.4, -1.1], [0.3, 0.4], [0.0, 0.0]]).repeat(8, 1)
    t = torch.rand(32, dtype=torch.float64)
    return sched, oracle, x, t


def _grads(sched, loss):
    params = [p for p in sched.parameters()]
    return dict(zip([n for n, _ in sched.named_parameters()], torch.autograd.grad(loss, params, allow_unused=True)))


@pytest.mark.parametrize("kind", ["net", "piecewise"])
@pytest.mark.parametrize("learn_endpoints", [False, True])
def test_variance_objective_gives_the_interior_the_gradient_of_the_squared_loss(learn_endpoints, kind):
    sched, oracle, x, t = _setup(learn_endpoints, kind)
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
    interior = [n for n in grads_v if n.startswith(("l1.", "l2.", "l3.", "logits"))]
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


def _loss_variance(oracle, sched, draw, n=400_000):
    """Var over (x, ε, t ∼ U(0, 1)) of the per-example continuous loss ½ γ'(t)‖ε − ε̂‖², by Monte Carlo."""
    with torch.no_grad():
        term, _ = diffusion_loss(oracle, sched, None, draw(n), torch.rand(n, dtype=torch.float64))
    return term.var().item()


def test_variance_objective_reaches_the_least_variance_schedule():
    """With a Bayes-optimal denoiser fixed, training a :class:`DensitySchedule`'s interior on E[term²]
    (the variance objective) takes the per-example variance of the continuous loss from the linear
    schedule's to that of q(γ) ∝ sqrt(E[ℓ(γ)²]) at the knots, the least-variance proposal
    (VDM App. I.1), within 10%."""
    torch.manual_seed(0)
    cov = tensor([[0.6, 0.25], [0.25, 0.4]])
    oracle = GaussianOracle(tensor([0.3, -0.5]), cov)
    chol = torch.linalg.cholesky(cov)
    draw = lambda n: tensor([0.3, -0.5]) + torch.randn(n, 2, dtype=torch.float64) @ chol.T  # noqa: E731
    bins = 12
    x = draw(20000)
    linear = LinearSchedule(-6.0, 6.0).double()
    second = []  # E[ℓ(γ_k)²] at the knots, ℓ = ½‖ε − ε̂‖² (the linear schedule's γ' = 12 divided out)
    for k in range(bins + 1):
        term, _ = diffusion_loss(oracle, linear, None, x, torch.full((x.shape[0],), k / bins, dtype=torch.float64))
        second.append((term / 12.0).pow(2).mean())
    best = DensitySchedule(-6.0, 6.0, bins=bins).double()
    with torch.no_grad():
        best.logits.copy_(0.5 * torch.stack(second).log())
    sched = DensitySchedule(-6.0, 6.0, bins=bins).double()
    before, optimum = _loss_variance(oracle, sched, draw), _loss_variance(oracle, best, draw)
    opt = torch.optim.Adam(sched.parameters(), lr=0.05)
    for _ in range(600):
        term, _ = diffusion_loss(oracle, sched, None, draw(256), torch.rand(256, dtype=torch.float64), variance_schedule=True)
        opt.zero_grad()
        term.mean().backward()
        opt.step()
    after = _loss_variance(oracle, sched, draw)
    assert before > 2 * optimum, (before, optimum)  # linear is far from the optimum here
    assert after < 1.1 * optimum, (before, after, optimum)
