"""The diffusion ELBO against closed forms, with the Bayes-optimal (oracle) denoiser for
Gaussian data, and the linear VAE against probabilistic PCA's exact likelihood."""

import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch import nn

import hlvm
from hlvm.programs.chain import DiffusionChain
from hlvm.programs.elbo import DiffusionELBO
from hlvm.diffusion.gaussian import alpha_sigma, prior_kl
from hlvm.programs.likelihoods import GaussianLikelihood
from hlvm.diffusion.oracle import GaussianOracle
from hlvm.diffusion.schedules import CosineSchedule, LinearSchedule
from models import VAE

from conftest import oracle_diffusion, tensor

D = 2


def _gaussian():
    mean = tensor([0.3, -0.5])
    cov = tensor([[0.6, 0.25], [0.25, 0.4]])
    return mean, cov


def _expected_err(oracle, x, gamma):
    """E_ε ‖x − x̂(α x + σ ε)‖² exactly, using only the oracle's x̂ (it is affine in z).

    ``gamma`` is a scalar (returns (B,)) or a vector of n levels (returns (n, B))."""
    gamma = torch.as_tensor(gamma)
    scalar = gamma.dim() == 0
    g = gamma.reshape(-1, 1).expand(-1, x.shape[0]).reshape(-1)  # (n·B,)
    xx = x.repeat(gamma.numel(), 1)  # (n·B, D)
    a, s = alpha_sigma(g[:, None])
    base = oracle(a * xx, g)
    err = (xx - base).pow(2).sum(-1)
    for j in range(x.shape[1]):
        e = torch.zeros_like(xx)
        e[:, j] = s[:, 0]
        err = err + (oracle(a * xx + e, g) - base).pow(2).sum(-1)
    err = err.reshape(gamma.numel(), x.shape[0])  # (n, B)
    return err[0] if scalar else err


def _mmse(oracle, gamma):
    """E_x E_ε ‖x − x̂‖² exactly: the quadratic form's expectation over x ∼ N(μ, LLᵀ)."""
    L = torch.linalg.cholesky(oracle.cov)
    xs = oracle.mean + L.T  # rows μ + L e_j
    a, _ = alpha_sigma(gamma)
    mean_part = (xs - oracle(a * xs, gamma.expand(D))).pow(2).sum()
    var_part = _expected_err(oracle, oracle.mean[None], gamma)[0] - (oracle.mean - oracle(a * oracle.mean[None], gamma.expand(1))[0]).pow(2).sum()
    return mean_part + var_part


def _L_T(oracle, schedule, T, err_fn):
    t = torch.arange(1, T + 1, dtype=torch.float64) / T
    g_t, g_s = schedule(t), schedule(t - 1.0 / T)
    w = 0.5 * torch.exp(-g_s) * -torch.expm1(g_s - g_t)  # ½ (SNR(s) − SNR(t))
    return sum(w[i] * err_fn(g_t[i]) for i in range(T))


def _L_inf(schedule, err_fn, nodes=20000):
    """½ ∫ γ'(t) e^{−γ(t)} err(γ(t)) dt by the midpoint rule in t (deterministic)."""
    t = (torch.arange(nodes, dtype=torch.float64) + 0.5) / nodes
    g, dg = schedule(t), schedule.dgamma_dt(t)
    w = 0.5 * dg * torch.exp(-g) / nodes  # (nodes,)
    errs = torch.stack([err_fn(gi) for gi in g]) if getattr(err_fn, "scalar_only", False) else err_fn(g)
    return (w.reshape((-1,) + (1,) * (errs.dim() - 1)) * errs).sum(0)


def test_oracle_mmse_closed_form():
    mean, cov = _gaussian()
    oracle = GaussianOracle(mean, cov)
    lam = torch.linalg.eigvalsh(cov)
    for g in (-4.0, 0.0, 3.0):
        gamma = tensor(g)
        a2, s2 = torch.sigmoid(-gamma), torch.sigmoid(gamma)
        torch.testing.assert_close(_mmse(oracle, gamma), (lam * s2 / (a2 * lam + s2)).sum(), rtol=1e-10, atol=1e-12)


def test_doubling_T_never_increases_loss_and_converges():
    """VDM §4.1: with a fixed denoiser whose error is non-increasing in SNR (the oracle's MMSE
    is), L_{2T} ≤ L_T, and L_T → L_∞."""
    mean, cov = _gaussian()
    oracle = GaussianOracle(mean, cov)
    sched = LinearSchedule(-10.0, 8.0)
    mmse = lambda g: _mmse(oracle, g)
    mmse.scalar_only = True
    losses = [_L_T(oracle, sched, T, mmse) for T in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)]
    L_inf = _L_inf(sched, mmse, nodes=4000)
    for a, b in zip(losses, losses[1:]):
        assert b <= a + 1e-12
    assert losses[-1] >= L_inf - 1e-9
    # the gap shrinks like 1/T (halves with each doubling): at T = 512 it is below 3% of L_∞
    # (measured 1.6% for this 18-nat-wide γ range)
    assert (losses[-1] - L_inf) / L_inf < 3e-2
    assert (losses[-1] - L_inf) < 0.6 * (losses[-2] - L_inf)


def test_equal_endpoints_give_equal_continuous_loss():
    """L_∞ depends on the schedule only through γ(0), γ(1) (VDM eq. 19), checked by deterministic
    quadrature in t for the linear and the cosine schedule with the oracle denoiser."""
    mean, cov = _gaussian()
    oracle = GaussianOracle(mean, cov)
    x = tensor([[0.9, -0.2], [-0.4, -1.1], [0.3, 0.4]])
    err = lambda g: _expected_err(oracle, x, g)
    lin = _L_inf(LinearSchedule(-8.0, 6.0).double(), err, nodes=20000)
    cos = _L_inf(CosineSchedule(-8.0, 6.0).double(), err, nodes=20000)
    torch.testing.assert_close(lin, cos, rtol=2e-4, atol=0)
    # and a different endpoint gives a different loss (the test can fail)
    other = _L_inf(LinearSchedule(-6.0, 6.0).double(), err, nodes=4000)
    assert (other - lin).abs().max() > 1e-3


def _elbo_closed_form(oracle, schedule, x, nodes):
    """E log p(x|z_0) − KL(q(z_1|x)‖N(0,I)) − L_∞ for the Gaussian decoder N(z_0/α_0, σ_0²/α_0²)."""
    g0, g1 = schedule(tensor(0.0)), schedule(tensor(1.0))
    recon = -0.5 * D * (math.log(2 * math.pi) + g0) - 0.5 * D  # E_ε log N(x; x + (σ/α)ε, σ²/α²)
    err = lambda g: _expected_err(oracle, x, g)
    return recon - prior_kl(x, g1) - _L_inf(schedule, err, nodes)


def test_continuous_elbo_approaches_log_likelihood():
    """With the Bayes-optimal denoiser, the continuous-time ELBO tends to log p(x) as the SNR range
    widens. The remaining gap has two sources, both vanishing with the range: the prior mismatch
    q(z_1) vs N(0, I) (∝ SNR(1)) and the decoder's Gaussian approximation of q(x | z_0) (∝ 1/SNR(0)).
    The ELBO bounds the *model's* log p_θ(x), which only approaches the data density as the range
    widens, so for a single x the sign of the gap is not fixed; its size must shrink. We allow
    0.02 nats at γ ∈ [−12, 12]."""
    mean, cov = _gaussian()
    oracle = GaussianOracle(mean, cov)
    x = tensor([[0.9, -0.2], [-0.4, -1.1], [0.3, 0.4], [0.0, 0.0]])
    logp = oracle.log_prob(x)
    gaps = []
    for r in (3.0, 6.0, 12.0):
        elbo = _elbo_closed_form(oracle, LinearSchedule(-r, r).double(), x, nodes=20000)
        gaps.append((logp - elbo).abs().max().item())
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 0.02


@pytest.mark.parametrize("T", [4, None])
def test_diffusion_elbo_estimator_matches_closed_form(T):
    """The Monte Carlo DiffusionELBO (one batched denoiser call per step) is unbiased for the
    closed-form bound: mean over replicates within 4 standard errors.  The GaussianOracle is the
    chain's denoiser itself (an XPredictor), so the exact case runs through the same chain code."""
    mean, cov = _gaussian()
    oracle = GaussianOracle(mean, cov)
    sched = LinearSchedule(-6.0, 6.0).double()
    chain = DiffusionChain(oracle, sched, GaussianLikelihood((D,)), T=T, name="z")

    def model(x):
        with pyro.plate("data", x.shape[0]):
            chain.model("x", x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            chain.guide(x)

    x = tensor([[0.9, -0.2], [-0.4, -1.1], [0.3, 0.4], [0.0, 0.0]]).repeat(64, 1)
    elbo = DiffusionELBO(sampler="uniform")
    reps = torch.tensor([elbo.loss(model, guide, x) for _ in range(300)], dtype=torch.float64) / x.shape[0]
    g0, g1 = sched(tensor(0.0)), sched(tensor(1.0))
    xs = x[:4]
    recon = 0.5 * D * (math.log(2 * math.pi) + g0) + 0.5 * D
    err = lambda g: _expected_err(oracle, xs, g)
    diff = _L_T(oracle, sched, T, err) if T else _L_inf(sched, err, nodes=20000)
    exact = (recon + prior_kl(xs, g1) + diff).mean()
    se = reps.std() / math.sqrt(len(reps))
    assert abs(reps.mean() - exact) < 4 * se, (reps.mean().item(), exact.item(), se.item())
    # the per-example terms returned with the trace add up to the loss Pyro computes from the same draws
    pyro.set_rng_seed(3)
    loss = elbo.loss(model, guide, x)
    pyro.set_rng_seed(3)
    terms = elbo.bound_terms(model, guide, x)["z"]
    assert terms.reconstruction.shape == terms.prior.shape == terms.diffusion.shape == (x.shape[0],)
    assert float((terms.reconstruction + terms.prior + terms.diffusion).sum()) == pytest.approx(loss, rel=1e-9)
    # exact summation over all T terms has (much) lower variance than sampling one t per example
    if T:
        ex = DiffusionELBO(exact=True)
        reps_exact = torch.tensor([ex.loss(model, guide, x) for _ in range(50)], dtype=torch.float64) / x.shape[0]
        assert abs(reps_exact.mean() - exact) < 4 * reps_exact.std() / math.sqrt(50)
        assert reps_exact.std() < reps.std()


def test_linear_vae_with_optimal_guide_equals_ppca_likelihood():
    """Probabilistic PCA (Tipping & Bishop 1999): with W's columns orthogonal the exact posterior
    is diagonal, so a linear VAE whose guide *is* the posterior has log p(x,z) − log q(z|x) = log p(x)
    for every z: Trace_ELBO equals the closed-form log-likelihood with zero variance."""
    d, k, noise = 6, 2, 0.3
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    W = tensor(q * torch.tensor([1.5, 0.7], dtype=torch.float64))  # orthogonal columns
    mu = tensor(torch.randn(d, generator=g, dtype=torch.float64))
    M = W.T @ W + noise**2 * torch.eye(k, dtype=W.dtype)  # diagonal

    class PosteriorEncoder(nn.Module):
        def forward(self, x):
            loc = (x - mu) @ W @ torch.linalg.inv(M)
            return loc, (noise**2 / torch.diagonal(M)).sqrt().expand_as(loc)

    decoder = nn.Linear(k, d).to(W.dtype)
    with torch.no_grad():
        decoder.weight.copy_(W)
        decoder.bias.copy_(mu)
    vae = VAE((d,), GaussianLikelihood((d,), scale=noise), latent_dim=k, encoder=PosteriorEncoder(), decoder=decoder)
    x = tensor(torch.randn(16, d, generator=g, dtype=torch.float64)) * 2
    exact = torch.distributions.MultivariateNormal(mu, W @ W.T + noise**2 * torch.eye(d, dtype=W.dtype)).log_prob(x).sum()
    for _ in range(3):  # every single-sample estimate is exact
        torch.testing.assert_close(torch.tensor(-Trace_ELBO().loss(vae.model, vae.guide, x), dtype=exact.dtype), exact, rtol=1e-9, atol=1e-9)
    # a perturbed (sub-optimal) guide gives a strictly lower bound
    with torch.no_grad():
        decoder.bias.add_(0.05)
    worse = torch.tensor([-Trace_ELBO().loss(vae.model, vae.guide, x) for _ in range(20)]).mean()
    assert worse < exact.item() + 1e-6


# ------------------------------------------------------------------ exact evaluation through hlvm.evaluate
@pytest.mark.parametrize("schedule", [LinearSchedule(-13.0, 13.0), CosineSchedule(-13.0, 13.0)], ids=["linear", "cosine"])
def test_exact_evaluation_agrees_with_the_closed_form(schedule):
    """DiffusionELBO(exact=True) places its quadrature nodes with an independent offset per example,
    so the error averages out over a data set.  On 256 Gaussian points at γ ∈ [−13, 13] (where one
    offset shared by all examples moved the diffusion term by up to ≈0.3 nats per dimension), for
    four seeds: the per-example diffusion terms minus their closed forms average to zero within 3 of
    their own standard errors (data variability cancels in the pairs: this is the Monte Carlo error
    alone) and within 0.1 nats; and hlvm.evaluate's ELBO lies within 3 reported standard errors
    (``nats_se``) of the closed-form ELBO."""
    mean, cov = _gaussian()
    schedule = schedule.double()
    h = oracle_diffusion(mean, cov, schedule)
    g = torch.Generator().manual_seed(3)
    x = mean + torch.randn(256, D, generator=g, dtype=mean.dtype).to(mean.device) @ torch.linalg.cholesky(cov).T
    closed_elbo = _elbo_closed_form(h.chain.denoiser, schedule, x, nodes=20000)
    closed_diffusion = _L_inf(schedule, lambda gam: _expected_err(h.chain.denoiser, x, gam), 20000)  # (B,)
    for seed in range(4):
        pyro.set_rng_seed(seed)
        d = DiffusionELBO(exact=True).bound_terms(h.model, h.guide, x)["z"].diffusion - closed_diffusion
        se = d.std() / math.sqrt(d.numel())
        assert abs(d.mean()) < 3 * se and abs(d.mean()) < 0.1, (seed, d.mean().item(), se.item())
        ev = hlvm.evaluate(h, x, elbo=DiffusionELBO(exact=True), seed=seed)
        assert abs(ev["elbo"] - closed_elbo.mean().item()) < 3 * ev["nats_se"], (seed, ev["elbo"], ev["nats_se"])


def test_ddpm_schedules_are_used_on_their_own_grid_only():
    """N = 1000 β's define 999 steps: a chain with T | 999 visits ᾱ at n = i·999/T exactly (diffusers'
    ``linspace`` spacing when exact); any other T, or continuous time, is refused — never interpolated."""
    from hlvm.diffusion.schedules import DDPMSchedule

    sched = DDPMSchedule(1000, "linear").double()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    for T in (999, 111, 27):
        chain = DiffusionChain(GaussianOracle(*_gaussian()), sched, GaussianLikelihood((D,)), T=T)
        g = sched.gamma(torch.arange(T + 1, dtype=torch.float64) / T)
        ab = alpha_bar[torch.arange(T + 1) * (999 // T)]
        torch.testing.assert_close(g, torch.log((1 - ab) / ab), rtol=1e-9, atol=1e-9)
        assert chain.T == T
    for T in (1000, 100, 4, None):
        with pytest.raises(ValueError, match="defines noise levels at 999 steps only"):
            DiffusionChain(GaussianOracle(*_gaussian()), sched, GaussianLikelihood((D,)), T=T)
    chain = DiffusionChain(GaussianOracle(*_gaussian()), sched, GaussianLikelihood((D,)), T=999)
    with pytest.raises(ValueError, match="steps=100 does not fit"):
        chain.sample(4, steps=100)
    assert chain.sample(4, steps=37).shape == (4, D)
