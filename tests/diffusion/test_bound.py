"""hlvm.diffusion.bound: the diffusion term, its weighting, the variance objective of a learned
schedule (Kingma et al. 2021, §5, App. I.1) and the bound's defaults."""

import pytest
import torch

from hlvm.diffusion.bound import diffusion_bound, diffusion_loss, diffusion_term, weighted_term
from hlvm.diffusion.oracle import GaussianOracle
from hlvm.diffusion.schedules import (DensitySchedule, InteriorSchedule, LearnedLinearSchedule, LinearSchedule,
                                      MonotoneNetSchedule)
from hlvm.diffusion.timesteps import TimestepSampler
from hlvm.diffusion.weighting import get_weighting
from hlvm.programs.chain import DiffusionChain
from hlvm.programs.elbo import DiffusionELBO, SamplerKey
from hlvm.programs.likelihoods import GaussianLikelihood
from hlvm.zoo import VDM

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


# -- which schedules the variance objective applies to (typed: InteriorSchedule) -----------------
def test_variance_objective_refuses_learned_linear():
    """A learned linear schedule's only parameters are its endpoints, which the variance objective
    leaves to the ELBO (VDM App. I.1): it would silently be the ELBO, so it is refused."""
    _, oracle, x, t = _setup(False)
    sched = LearnedLinearSchedule(-6.0, 6.0).double()
    assert not isinstance(sched, InteriorSchedule)
    with pytest.raises(ValueError, match="LearnedLinearSchedule has none"):
        diffusion_loss(oracle, sched, None, x, t, variance_schedule=True)


def test_variance_objective_refuses_discrete_time():
    """In discrete time L_T depends on the grid values γ(i/T), the interior included: not the objective of App. I.1."""
    sched, oracle, x, _ = _setup(False)
    t = torch.full((x.shape[0],), 0.5, dtype=torch.float64)
    with pytest.raises(ValueError, match="continuous time"):
        diffusion_loss(oracle, sched, 10, x, t, variance_schedule=True)


def test_diffusion_elbo_with_learned_linear_and_the_variance_objective_is_refused():
    """The same refusal through the Pyro estimator that training uses."""
    vdm = VDM(data_shape=(4,), likelihood="continuous", schedule="learned-linear", width=8, depth=1)
    with pytest.raises(ValueError, match="LearnedLinearSchedule has none"):
        DiffusionELBO(schedule_objective="variance").differentiable_loss(vdm.model, vdm.guide, torch.randn(3, 4))


def test_interior_schedules_are_the_learned_interiors():
    assert isinstance(MonotoneNetSchedule(hidden=4), InteriorSchedule)
    assert isinstance(DensitySchedule(bins=4), InteriorSchedule)
    for sched in (LinearSchedule(), LearnedLinearSchedule()):
        assert not isinstance(sched, InteriorSchedule)


# -- the term in the paper's symbols --------------------------------------------------------------
def test_diffusion_term_is_the_kl_of_one_step_in_its_eps_form():
    """½ T expm1(γ_t − γ_s) ‖ε − ε̂‖² is T · KL(q(z_s|z_t,x) ‖ p(z_s|z_t)) = T · ½ (SNR(s) − SNR(t)) ‖x − x̂‖²
    (DESIGN, Table 1), with ε − ε̂ = (α_t/σ_t)(x̂ − x); continuous time: ½ γ' ‖ε − ε̂‖²."""
    torch.manual_seed(0)
    g_s, g_t, T = tensor(-1.0), tensor(0.5), 7
    x, x_hat = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    eps = torch.randn(5, 3, dtype=torch.float64)
    alpha_t, sigma_t = torch.sigmoid(-g_t).sqrt(), torch.sigmoid(g_t).sqrt()
    eps_hat = eps + alpha_t / sigma_t * (x_hat - x)
    kl = 0.5 * (torch.exp(-g_s) - torch.exp(-g_t)) * (x - x_hat).pow(2).sum(-1)
    torch.testing.assert_close(diffusion_term(eps, eps_hat, T=T, g_t=g_t, g_s=g_s), T * kl, rtol=1e-12, atol=0)
    torch.testing.assert_close(diffusion_term(eps, eps_hat, dg_t=tensor(3.0)), 1.5 * (eps - eps_hat).pow(2).sum(-1))


def test_weighted_term_is_w_of_lambda_times_the_term():
    term, g = torch.rand(6, dtype=torch.float64), torch.linspace(-5, 5, 6, dtype=torch.float64)
    assert weighted_term(term, g) is term  # w ≡ 1: the ELBO
    w = get_weighting("sigmoid")
    torch.testing.assert_close(weighted_term(term, g, w), torch.sigmoid(2.0 + g) * term)  # λ = −γ


# -- diffusion_bound: its own defaults, and no hidden effect on the sampler ------------------------
@pytest.mark.parametrize("T", [None, 5])
def test_diffusion_bound_runs_with_its_own_defaults(T):
    _, oracle, x, _ = _setup(False)
    terms = diffusion_bound(oracle, LinearSchedule(-6.0, 6.0).double(), GaussianLikelihood((2,)), T, x)
    assert terms.loss.shape == (x.shape[0],) and bool(torch.isfinite(terms.loss).all())


def test_the_bound_leaves_the_sampler_alone_and_its_owner_records_the_history():
    sched, oracle, x, _ = _setup(False)
    chain = DiffusionChain(oracle, sched, GaussianLikelihood((2,)), T=None, name="z")
    sampler = TimestepSampler("importance", None)
    diffusion_bound(chain.denoiser, chain.schedule, chain.likelihood, None, x, sampler=sampler)
    assert int(sampler.count.sum()) == 0  # no hidden update
    elbo = DiffusionELBO("importance")
    terms = elbo.chain_bound(chain, x)
    (key,) = elbo.samplers
    assert key == SamplerKey("z", None)
    bins = (terms.t * elbo.samplers[key].bins).floor().long().unique()
    assert int(elbo.samplers[key].count.sum()) == bins.numel()  # one observation per bin drawn


def test_diffusion_elbo_state_round_trips_with_typed_keys():
    sched, oracle, x, _ = _setup(False)
    elbo = DiffusionELBO("importance")
    for T in (None, 4):
        for _ in range(3):
            elbo.chain_bound(DiffusionChain(oracle, sched, GaussianLikelihood((2,)), T=T, name="z"), x)
    state = elbo.state_dict()
    assert {(r["chain"], r["T"]) for r in state["samplers"]} == {("z", None), ("z", 4)}
    other = DiffusionELBO("importance")
    other.load_state_dict(state)
    assert set(other.samplers) == {SamplerKey("z", None), SamplerKey("z", 4)}
    for key, s in elbo.samplers.items():
        torch.testing.assert_close(other.samplers[key].sq_mean, s.sq_mean)
        assert bool((other.samplers[key].count == s.count).all())
    # a checkpoint written before the typed keys ("chain/T=…" text) resumes with the same history
    legacy = DiffusionELBO("importance")
    legacy.load_state_dict({f"z/T={r['T']}": r["state"] for r in state["samplers"]})
    assert set(legacy.samplers) == set(elbo.samplers)
    for key, s in elbo.samplers.items():
        torch.testing.assert_close(legacy.samplers[key].sq_mean, s.sq_mean)
    for bad in ({"z/T=four": {}}, {"z": {}}, [1]):
        with pytest.raises(ValueError, match="not a DiffusionELBO state"):
            other.load_state_dict(bad)


@pytest.mark.parametrize("T, schedule, expected", [(None, "learned-density", True), (None, "learned-net", True),
                                                   (8, "learned-density", False), (None, "cosine", False),
                                                   (None, "learned-linear", False)])
def test_auto_objective_is_the_variance_objective_where_it_applies(T, schedule, expected):
    """``schedule_objective="auto"`` (the VDM's training recipe): the variance objective for a
    continuous-time chain with a learned interior, the ELBO for every other chain — so the recipe
    holds for any T and schedule, where "variance" is refused."""
    from hlvm import DiffusionELBO
    from hlvm.programs.chain import chains_of
    from hlvm.zoo import VDM

    model = VDM((1, 4, 4), T=T, schedule=schedule, width=8, depth=1)
    (chain,) = chains_of(model)
    assert DiffusionELBO(schedule_objective="auto")._variance_objective(chain) is expected
    assert DiffusionELBO(schedule_objective="variance")._variance_objective(chain) is True
    x = (torch.rand(3, 1, 4, 4) > 0.5).double() if torch.get_default_dtype() == torch.float64 else \
        (torch.rand(3, 1, 4, 4) > 0.5).float()
    loss = DiffusionELBO(schedule_objective="auto").differentiable_loss(model.model, model.guide, x)
    assert torch.isfinite(loss)  # never refused
