"""Every estimator of a model's ELBO agrees with every other one *in expectation*.

For each model of the zoo (and the user-defined ``LatentDiffusionVAE``) the analytic estimators
— ``hlvm.DiffusionELBO`` where diffusion chains occur (uniform, antithetic and importance
timestep samplers, and ``exact=True``) and ``TraceMeanField_ELBO`` where its condition holds
(top-down guides) — are compared with plain ``Trace_ELBO`` on the same Pyro program, and the
bottom-up HVAE's ``Trace_ELBO`` with an independent hand-written Monte Carlo ELBO.

Each estimate is a Monte Carlo mean over independent loss evaluations; two estimators agree when

    |mean_a − mean_b| < 4 · sqrt(se_a² + se_b²).

To get many independent replicates cheaply, one ``loss`` call scores ``reps`` copies of a small
fixed batch at once (every copy draws its own latents, so the copies are i.i.d.); the call's
value divided by ``reps`` is one replicate, and ``calls`` calls give the mean and its standard
error.  Models are tiny (8×8 digits, hidden width 32) with a fixed random initialisation.  VDMs
use a moderate schedule (γ ∈ [−1, 3]) so that reconstruction and prior KL are not ≈ 0, and their
chains are also compared *term by term* (reconstruction, prior KL, diffusion, each with its own
standard error), since an error in a small term could hide under the diffusion term's noise in
the totals.

The second half checks the timestep samplers' unbiasedness and the DiffusionELBO's structure.
"""

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch.distributions import Bernoulli, Normal

from hlvm.data import load_dataset
from hlvm.programs.elbo import DiffusionELBO
from hlvm.diffusion.timesteps import TimestepSampler
from hlvm.zoo import VAE, VDM, BottomUpHVAE, TopDownHVAE

from conftest import DEVICE, user_hierarchy_class

SHAPE = (1, 8, 8)
GMIN, GMAX = -3.0, 3.0  # a moderate schedule for the top-down HVAE's diffusion posterior
VDM_GMIN, VDM_GMAX = -1.0, 3.0  # VDMs: reconstruction and prior KL are then ≳ 1 nat each, not ≈ 0
Z_SE = 4.0  # agreement threshold in standard errors


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.fixture(scope="module")
def digits():
    """A fixed batch of 4 binarized 8×8 digits and 4 of their 8-bit originals."""
    return load_dataset("digits").test[:4], load_dataset("digits", binarize="8bit").test[:4]


def _binary(digits):
    return digits[0].to(device=DEVICE, dtype=torch.get_default_dtype())


def _eightbit(digits):
    return digits[1].to(device=DEVICE, dtype=torch.get_default_dtype())


def _build(factory):
    pyro.set_rng_seed(123)
    return factory().to(DEVICE)


def mc_loss(elbo, model, x, calls=60, reps=32, seed=0):
    """Mean and standard error of the per-batch loss (−ELBO summed over ``x``).

    Each call scores ``reps`` independent copies of ``x``; a call's value / reps is one replicate.
    """
    pyro.set_rng_seed(seed)
    xr = x.repeat((reps,) + (1,) * (x.dim() - 1))
    with torch.no_grad():
        v = torch.tensor([elbo.loss(model.model, model.guide, xr) / reps for _ in range(calls)], dtype=torch.float64)
    return v.mean().item(), v.std().item() / math.sqrt(calls)


def assert_agree(a, b, what=""):
    (ma, sa), (mb, sb) = a, b
    tol = Z_SE * math.hypot(sa, sb)
    assert abs(ma - mb) < tol, f"{what}: {ma:.4f} ± {sa:.4f} vs {mb:.4f} ± {sb:.4f} (|Δ| = {abs(ma - mb):.4f} ≥ {tol:.4f})"
    return tol


# ---------------------------------------------------------------------------------------------
# VAE and top-down HVAEs: TraceMeanField_ELBO (analytic KL) vs Trace_ELBO
# ---------------------------------------------------------------------------------------------
MEAN_FIELD_MODELS = {
    "vae": lambda: VAE(SHAPE, latent_dim=4, hidden=32),
    "hvae-td-precision": lambda: TopDownHVAE(SHAPE, layers=3, latent_dim=4, hidden=32, merge="precision"),
    "hvae-td-residual": lambda: TopDownHVAE(SHAPE, layers=3, latent_dim=4, hidden=32, merge="residual"),
    "hvae-td-diffusion-denoiser": lambda: TopDownHVAE(SHAPE, layers=3, hidden=32, posterior="diffusion",
                                                      transition="denoiser", gamma_min=GMIN, gamma_max=GMAX),
}


@pytest.mark.parametrize("name", list(MEAN_FIELD_MODELS))
def test_mean_field_elbo_agrees_with_trace_elbo(name, digits):
    model, x = _build(MEAN_FIELD_MODELS[name]), _binary(digits)
    trace = mc_loss(Trace_ELBO(), model, x, seed=1)
    mean_field = mc_loss(TraceMeanField_ELBO(), model, x, seed=2)
    assert_agree(trace, mean_field, name)


# ---------------------------------------------------------------------------------------------
# Bottom-up HVAE: Trace_ELBO vs an independent hand-written Monte Carlo ELBO
# ---------------------------------------------------------------------------------------------
def _handwritten_elbo(m, x):
    """log p(x, z) − log q(z | x) per example at one z ∼ q, with torch.distributions only.

    q: z_1 ∼ q(z_1 | x), z_l ∼ q(z_l | z_{l−1});  p: z_L ∼ N(0, I), z_{l−1} ∼ p(z_{l−1} | z_l),
    x ∼ Bernoulli(decoder(z_1)).
    """
    h = 2 * x - 1  # binary data in model space
    zs, log_q = [], 0.0
    for enc in m.encoders:  # z_1 … z_L
        loc, scale = enc(h)
        z = loc + scale * torch.randn_like(loc)
        log_q = log_q + Normal(loc, scale).log_prob(z).sum(-1)
        zs.append(z)
        h = z
    log_p = Normal(torch.zeros_like(zs[-1]), torch.ones_like(zs[-1])).log_prob(zs[-1]).sum(-1)
    for l in range(m.L - 1, 0, -1):  # p(z_l | z_{l+1}) with zs[l-1] = z_l
        loc, scale = m.transitions[l - 1](zs[l])
        log_p = log_p + Normal(loc, scale).log_prob(zs[l - 1]).sum(-1)
    logits = m.decoder(zs[0]).reshape(x.shape)
    log_p = log_p + Bernoulli(logits=logits).log_prob(x).flatten(1).sum(-1)
    return log_p - log_q


def test_bottom_up_trace_elbo_agrees_with_handwritten_elbo(digits):
    m, x = _build(lambda: BottomUpHVAE(SHAPE, latent_dims=(8, 6, 4), hidden=32)), _binary(digits)
    trace = mc_loss(Trace_ELBO(), m, x, seed=1)
    pyro.set_rng_seed(2)
    reps, calls = 32, 60
    xr = x.repeat(reps, 1, 1, 1)
    with torch.no_grad():
        v = torch.stack([-_handwritten_elbo(m, xr).sum() / reps for _ in range(calls)])
    hand = v.mean().item(), v.std().item() / math.sqrt(calls)
    assert_agree(trace, hand, "bottom-up HVAE")


# ---------------------------------------------------------------------------------------------
# VDM: DiffusionELBO (every sampler, and exact) vs Trace_ELBO and TraceMeanField_ELBO
# ---------------------------------------------------------------------------------------------
def _vdm(T, likelihood="binary", shape=SHAPE, parameterization="auto"):
    """A tiny VDM; ``auto`` is the zoo's default (``logit`` for binary data, ``eps`` otherwise)."""
    return _build(lambda: VDM(shape, likelihood=likelihood, T=T, gamma_min=VDM_GMIN, gamma_max=VDM_GMAX,
                              width=32, depth=1, parameterization=parameterization))


def trace_chain_terms(model, x, chain, y_name):
    """One Monte Carlo draw of a chain's three terms from the stock Pyro program's sites,
    averaged over the batch: (−log p(y | z_0), log q(z_T|y) − log p(z_T), Σ_{i<T} log q(z_i|·) − log p(z_i|·))."""
    guide_tr = poutine.trace(model.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(model.model, trace=guide_tr)).get_trace(x)
    guide_tr.compute_log_prob()
    model_tr.compute_log_prob()
    names = chain.site_names()  # z_T … z_0

    def log_ratio(n):
        return guide_tr.nodes[n]["log_prob"] - model_tr.nodes[n]["log_prob"]

    rec = -model_tr.nodes[y_name]["log_prob"]
    diffusion = sum(log_ratio(n) for n in names[1:])
    return torch.stack([rec.mean(), log_ratio(names[0]).mean(), diffusion.mean()])


def diffusion_elbo_chain_terms(est, model, x, chain_name):
    """The same three terms as DiffusionELBO returns them with one trace (``bound_terms``)."""
    t = est.bound_terms(model.model, model.guide, x)[chain_name]
    return torch.stack([t.reconstruction.mean(), t.prior.mean(), t.diffusion.mean()])


def mc_terms(fn, calls=40, seed=0):
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        v = torch.stack([fn() for _ in range(calls)]).double()
    return v.mean(0), v.std(0) / math.sqrt(calls)


def assert_terms_agree(a, b, what):
    for k, term in enumerate(("reconstruction", "prior KL", "diffusion")):
        assert_agree((a[0][k].item(), a[1][k].item()), (b[0][k].item(), b[1][k].item()), f"{what} [{term}]")


VDM_CASES = [(2, "auto"), (4, "auto"), (4, "eps")]


@pytest.mark.parametrize("T,parameterization", VDM_CASES)
def test_vdm_diffusion_elbo_agrees_with_stock_elbos(T, parameterization, digits):
    m, x = _vdm(T, parameterization=parameterization), _binary(digits)
    trace = mc_loss(Trace_ELBO(), m, x, seed=1)
    mean_field = mc_loss(TraceMeanField_ELBO(), m, x, seed=2)
    assert_agree(trace, mean_field, f"T={T} mean-field")
    for i, est in enumerate([DiffusionELBO("uniform"), DiffusionELBO("antithetic"), DiffusionELBO("importance"),
                             DiffusionELBO(exact=True)]):
        d = mc_loss(est, m, x, seed=10 + i)
        label = f"T={T} DiffusionELBO({est.sampler_kind}, exact={est.exact})"
        assert_agree(trace, d, label + " vs Trace_ELBO")
        assert_agree(mean_field, d, label + " vs TraceMeanField_ELBO")


@pytest.mark.parametrize("T,parameterization", VDM_CASES)
def test_vdm_diffusion_elbo_terms_agree_with_trace_sites(T, parameterization, digits):
    """Term by term: a wrong reconstruction or prior KL could hide under the diffusion term's noise
    in the totals, so the three terms are compared separately (each has its own SE)."""
    m, x = _vdm(T, parameterization=parameterization), _binary(digits)
    xr = x.repeat(32, 1, 1, 1)
    trace = mc_terms(lambda: trace_chain_terms(m, xr, m.chain, "x"), seed=1)
    assert trace[0][0] > 0.5 and trace[0][1] > 0.5  # every term matters at this schedule
    for i, est in enumerate([DiffusionELBO("uniform"), DiffusionELBO("antithetic"), DiffusionELBO(exact=True)]):
        d = mc_terms(lambda: diffusion_elbo_chain_terms(est, m, xr, "z"), seed=10 + i)
        assert_terms_agree(trace, d, f"T={T} DiffusionELBO({est.sampler_kind}, exact={est.exact})")


def test_vdm_importance_sampler_is_active_and_unbiased(digits):
    """After its warm-up the importance sampler draws non-uniformly and still agrees with Trace_ELBO."""
    m, x = _vdm(4), _binary(digits)
    est = DiffusionELBO("importance")
    mc_loss(est, m, x, calls=15, seed=3)  # warm-up: every bin gets ≥ 10 observations
    (sampler,) = est.samplers.values()
    assert bool((sampler.count >= sampler.warmup).all())
    _, w = sampler(4096, dtype=torch.float64)
    assert (w - 1).abs().max() > 0.02  # genuinely importance-weighted (the terms differ by bin)
    assert_agree(mc_loss(Trace_ELBO(), m, x, seed=1), mc_loss(est, m, x, seed=4), "importance after warm-up")


def test_vdm_8bit_diffusion_elbo_agrees_with_trace_elbo(digits):
    """8-bit data (integers 0..255; 16 pixels of the digits) with VDM's discretized decoder, T = 3."""
    x = _eightbit(digits)[:, 0, 3:5, :].reshape(-1, 16)  # two middle rows: (4, 16) grey levels
    assert x.max() > 200 and x.min() == 0 and bool((x == x.round()).all())
    m = _vdm(3, likelihood="8bit", shape=(16,))
    trace = mc_loss(Trace_ELBO(), m, x, seed=1)
    xr = x.repeat(32, 1)
    trace_terms = mc_terms(lambda: trace_chain_terms(m, xr, m.chain, "x"), seed=2)
    for i, est in enumerate([DiffusionELBO("antithetic"), DiffusionELBO(exact=True)]):
        assert_agree(trace, mc_loss(est, m, x, seed=10 + i), f"8bit DiffusionELBO(exact={est.exact})")
        d = mc_terms(lambda: diffusion_elbo_chain_terms(est, m, xr, "z"), seed=20 + i)
        assert_terms_agree(trace_terms, d, f"8bit DiffusionELBO(exact={est.exact})")


def test_latent_diffusion_vae_diffusion_elbo_agrees_with_trace_elbo(digits):
    """The user-defined hierarchy: the collapsed chain sits over a *latent* z (scored by the guide's z)."""
    LatentDiffusionVAE = user_hierarchy_class()
    m, x = _build(lambda: LatentDiffusionVAE(SHAPE, latent_dim=4, T=2, hidden=32)), _binary(digits)
    trace = mc_loss(Trace_ELBO(), m, x, seed=1)
    xr = x.repeat(32, 1, 1, 1)
    trace_terms = mc_terms(lambda: trace_chain_terms(m, xr, m.prior, "z"), seed=2)
    for i, est in enumerate([DiffusionELBO("uniform"), DiffusionELBO(exact=True)]):
        assert_agree(trace, mc_loss(est, m, x, seed=10 + i), f"LatentDiffusionVAE DiffusionELBO(exact={est.exact})")
        d = mc_terms(lambda: diffusion_elbo_chain_terms(est, m, xr, "u"), seed=20 + i)
        assert_terms_agree(trace_terms, d, f"LatentDiffusionVAE DiffusionELBO(exact={est.exact})")


def test_vdm_continuous_time_sampled_agrees_with_quadrature(digits):
    m, x = _vdm(None), _binary(digits)
    sampled = mc_loss(DiffusionELBO("uniform"), m, x, seed=1)
    quadrature = mc_loss(DiffusionELBO(exact=True, eval_nodes=2000), m, x, calls=10, reps=2, seed=2)
    assert_agree(sampled, quadrature, "continuous time")


@pytest.mark.parametrize("parameterization", ["auto", "eps"])
def test_vdm_continuous_time_loss_below_four_step_loss(parameterization, digits):
    """VDM §4.1: more steps never hurt.  L_∞ ≤ L_4 for the same weights, given that the x-space
    error grows with t — true here for both initial denoisers: ``logit`` (x̂ = tanh(αz/σ² + h) with
    small h: about the Bayes denoiser of independent pixels, whose MMSE falls with SNR) and a
    random ε̂ (x-space error (σ²/α²) ‖ε − ε̂‖² grows with γ).  Measured when written, per batch of
    4 digits: logit 189.1 ± 0.7 vs 249.5 ± 0.3; eps 613.0 ± 0.7 vs 1023.4 ± 1.0."""
    m_inf, x = _vdm(None, parameterization=parameterization), _binary(digits)
    m_4 = _vdm(4, parameterization=parameterization)
    m_4.load_state_dict(m_inf.state_dict())
    l_inf = mc_loss(DiffusionELBO(exact=True, eval_nodes=500), m_inf, x, calls=10, reps=8, seed=1)
    l_4 = mc_loss(DiffusionELBO(exact=True), m_4, x, seed=2)
    assert l_inf[0] + Z_SE * math.hypot(l_inf[1], l_4[1]) < l_4[0], (l_inf, l_4)


# ---------------------------------------------------------------------------------------------
# DiffusionELBO's interface
# ---------------------------------------------------------------------------------------------
def test_weighting_flags():
    assert DiffusionELBO(weighting="elbo").is_elbo is True
    assert DiffusionELBO(weighting="sigmoid").is_elbo is False
    assert DiffusionELBO(weighting="sigmoid").is_augmented_elbo is True
    assert DiffusionELBO(weighting="edm").is_elbo is False


@pytest.mark.parametrize("kwargs", [{"sampler": "sobol"}, {"weighting": "snr"}, {"num_t": 0}])
def test_unknown_names_raise(kwargs):
    with pytest.raises(ValueError):
        DiffusionELBO(**kwargs)


def test_timestep_sampler_unknown_kind_raises():
    with pytest.raises(ValueError, match="unknown timestep sampler"):
        TimestepSampler("stratified")


@pytest.mark.parametrize("T", [10, 1000])
def test_diffusion_elbo_calls_the_denoiser_once_per_loss(T, digits):
    """A step's cost does not grow with T: one batched denoiser call per ``loss``."""
    m, x = _vdm(T), _binary(digits)
    calls = []
    handle = m.denoiser.backbone.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    try:
        for sampler in ("uniform", "antithetic", "importance"):
            est = DiffusionELBO(sampler)
            for _ in range(3):
                calls.clear()
                est.loss(m.model, m.guide, x)
                assert calls == [x.shape[0]], (sampler, calls)
        calls.clear()
        DiffusionELBO(num_t=3).loss(m.model, m.guide, x)
        assert calls == [3 * x.shape[0]]
    finally:
        handle.remove()


# ---------------------------------------------------------------------------------------------
# Timestep samplers are unbiased: E[w · f(t)] = ∫₀¹ f  (continuous) or (1/T) Σ f(i/T) (discrete)
# ---------------------------------------------------------------------------------------------
def _f(t):
    return torch.exp(2 * t)


F_INTEGRAL = (math.exp(2) - 1) / 2


def _feed_history(sampler, term, rounds=30, n=2048):
    """Feed ``rounds`` batches of (t, term(t)) to the sampler, as DiffusionELBO does after each loss."""
    for _ in range(rounds):
        t, _ = sampler(n, dtype=torch.float64)
        sampler.update(t, term(t))


@pytest.mark.parametrize("history", ["matched", "mismatched"])
def test_importance_sampler_is_unbiased_continuous(history):
    """Unbiased whatever the history: ``matched`` (terms ∝ f, p_k ≈ ∝ f) and ``mismatched``
    (terms ∝ exp(−6t), mass on early times where f is small)."""
    s = TimestepSampler("importance", T=None)
    _feed_history(s, _f if history == "matched" else (lambda t: torch.exp(-6 * t)))
    assert bool((s.count >= s.warmup).all())
    n = 400_000
    t, w = s(n, dtype=torch.float64)
    assert t.min() >= 0 and t.max() <= 1
    # the proposal is far from uniform (e² ≈ 7.4 resp. e⁶ ≈ 400 between the end bins)
    first, last = (t < 1 / 64).double().mean(), (t > 63 / 64).double().mean()
    assert (last > 3 * first) if history == "matched" else (first > 30 * last)
    v = w * _f(t)
    mean, se = v.mean().item(), v.std().item() / math.sqrt(n)
    assert abs(mean - F_INTEGRAL) < Z_SE * se, (mean, se, F_INTEGRAL)
    if history == "matched":  # what the sampler is for: p ∝ |f| all but removes the variance
        u = _f(torch.rand(n, dtype=torch.float64))
        assert v.var() < 0.05 * u.var(), (v.var(), u.var())


def test_importance_sampler_keeps_drawing_bins_whose_history_is_zero():
    """A defensive mixture: a bin whose recorded terms were all 0 (the low-noise end of a fresh VDM)
    is still drawn, so the estimate keeps covering it — the history without the uniform share gave
    those bins p ≈ 0, and the mean of w·1 was 0.5 instead of 1 (half of the integral silently lost)."""
    s = TimestepSampler("importance", T=None)
    s.count.fill_(s.warmup)
    s.sq_mean[: s.bins // 2] = 0.0  # stale zeros in the first half
    s.sq_mean[s.bins // 2:] = 1.0
    n = 200_000
    t, w = s(n, dtype=torch.float64)
    assert w.max() <= 1 / s.uniform_share + 1e-9
    early = (t < 0.5).double().mean().item()
    assert abs(early - s.uniform_share / 2) < 0.005  # λ/K per starved bin, 32 bins
    mean, se = w.mean().item(), w.std().item() / math.sqrt(n)
    assert abs(mean - 1.0) < Z_SE * se, (mean, se)
    with pytest.raises(ValueError, match="uniform_share"):
        TimestepSampler("importance", uniform_share=0.0)


def test_importance_sampler_is_unbiased_discrete():
    T = 7
    s = TimestepSampler("importance", T=T)
    _feed_history(s, lambda t: torch.exp(4 * t))
    assert bool((s.count >= s.warmup).all())
    t, w = s(400_000, dtype=torch.float64)
    i = t * T
    assert torch.allclose(i, i.round()) and i.min() >= 1 and i.max() <= T
    target = _f(torch.arange(1, T + 1, dtype=torch.float64) / T).mean().item()
    v = w * _f(t)
    mean, se = v.mean().item(), v.std().item() / math.sqrt(v.numel())
    assert abs(mean - target) < Z_SE * se, (mean, se, target)


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_antithetic_sampler_is_unbiased(batch):
    """Within a batch the antithetic times are dependent; batches are independent, so the SE is
    taken over batch means."""
    s = TimestepSampler("antithetic", T=None)
    reps = 4000
    means = torch.stack([(lambda tw: (tw[1] * _f(tw[0])).mean())(s(batch, dtype=torch.float64)) for _ in range(reps)])
    mean, se = means.mean().item(), means.std().item() / math.sqrt(reps)
    assert abs(mean - F_INTEGRAL) < Z_SE * se, (mean, se)


def test_antithetic_batch_is_evenly_spread():
    s = TimestepSampler("antithetic", T=None)
    t, w = s(16, dtype=torch.float64)
    gaps = torch.sort(t).values.diff()
    torch.testing.assert_close(gaps, torch.full_like(gaps, 1 / 16))
    assert bool((w == 1).all())


@pytest.mark.parametrize("kind", ["uniform", "antithetic"])
def test_discrete_sampler_is_uniform_on_the_grid(kind):
    """t = i/T with i ∈ {1..T}, each with probability 1/T.  Pearson's χ² with T − 1 = 9 degrees of
    freedom must stay below 40 (P(χ²₉ > 40) ≈ 7e-6); draws come in batches of 10 (antithetic: one
    shared offset per batch)."""
    T, n_batches, batch = 10, 5000, 10
    s = TimestepSampler(kind, T=T)
    t = torch.cat([s(batch, dtype=torch.float64)[0] for _ in range(n_batches)])
    i = t * T
    assert torch.allclose(i, i.round(), atol=1e-9)
    i = i.round().long()
    assert i.min() >= 1 and i.max() <= T
    counts = torch.bincount(i - 1, minlength=T).double()
    expected = t.numel() / T
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    if kind == "antithetic":
        # a batch of T antithetic draws hits every grid point exactly once
        assert bool((counts == n_batches).all())
    else:
        assert chi2 < 40, (chi2, counts)
