"""hlvm.evaluate against closed forms and independent estimators.

* A linear-Gaussian VAE whose guide is the exact posterior: every importance weight equals
  log p(x) (Tipping & Bishop's PPCA likelihood), so IWAE_K = ELBO = log p(x) and k̂ is degenerate.
* Importance weights reproduce Trace_ELBO draw for draw on every zoo model and a user hierarchy.
* IWAE_1 = ELBO in expectation and E[IWAE_K] is non-decreasing in K (Burda et al. 2016).
* PSIS k̂ on weights with a known Pareto(α) tail is ≈ 1/α (Vehtari et al. 2024), which also fixes
  the sign convention of arviz_stats' ``psislw``.
"""

import json
import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from arviz_stats.base import array_stats
from pyro.infer import SVI, Trace_ELBO
from pyro.nn import PyroModule, pyro_method
from torch import nn

from hlvm.data import digits
from hlvm.programs.chain import DiffusionChain
from hlvm.programs.elbo import DiffusionELBO
from hlvm.eval import (ParetoKWarning, active_units, evaluate, iwae_bound, pareto_khat,
                           per_example_log_weights, per_site_terms)
from hlvm.programs.likelihoods import GaussianLikelihood
from hlvm.zoo import VAE, VDM, BottomUpHVAE, TopDownHVAE

from conftest import DEVICE, DTYPE, tensor, user_hierarchy_class



@pytest.fixture(scope="module")
def digit_data():
    return digits()


def _test_x(data, n):
    return data.test[:n].to(device=DEVICE, dtype=DTYPE)


def _ppca_vae():
    """A linear VAE with the exact (diagonal) PPCA posterior as its guide, data and exact log p(x)."""
    d, k, noise = 6, 2, 0.3
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    W = tensor(q * torch.tensor([1.5, 0.7], dtype=torch.float64))  # orthogonal columns
    mu = tensor(torch.randn(d, generator=g, dtype=torch.float64))
    M = W.T @ W + noise**2 * torch.eye(k, dtype=W.dtype, device=W.device)  # diagonal

    class PosteriorEncoder(nn.Module):
        def forward(self, x):
            loc = (x - mu) @ W @ torch.linalg.inv(M)
            return loc, (noise**2 / torch.diagonal(M)).sqrt().expand_as(loc)

    decoder = nn.Linear(k, d).to(device=W.device, dtype=W.dtype)
    with torch.no_grad():
        decoder.weight.copy_(W)
        decoder.bias.copy_(mu)
    vae = VAE((d,), GaussianLikelihood((d,), scale=noise), latent_dim=k, encoder=PosteriorEncoder(), decoder=decoder)
    x = tensor(torch.randn(40, d, generator=g, dtype=torch.float64)) * 2
    cov = W @ W.T + noise**2 * torch.eye(d, dtype=W.dtype, device=W.device)
    return vae, x, torch.distributions.MultivariateNormal(mu, cov).log_prob(x)


def test_exact_posterior_every_weight_is_log_likelihood():
    vae, x, exact = _ppca_vae()
    lw = per_example_log_weights(vae, None, x, K=50, chunk=7)  # 8 chunks, the last one short
    assert lw.shape == (50, x.shape[0])
    torch.testing.assert_close(lw, exact.expand_as(lw), rtol=0, atol=1e-8)
    torch.testing.assert_close(iwae_bound(vae, x, K=50), exact, rtol=0, atol=1e-8)

    # k̂: arviz_stats cannot fit a tail to constant weights. It raises
    # ValueError('All tail values are the same') on exactly equal ones; on these weights, equal up
    # to float64 rounding, it raises the same (here) or its generalized-Pareto fit divides 0/0
    # (NumPy RuntimeWarning, an error under this suite's filters) for other rounding patterns.
    # pareto_khat reports such weights as degenerate: k̂ = −inf (exact importance sampling).
    with pytest.raises(ValueError, match="All tail values are the same"):
        array_stats.psislw(np.zeros((50, 1)), r_eff=1.0, axis=0)
    assert lw.std(0).max() < 1e-10  # rounding noise only
    with pytest.raises((ValueError, RuntimeWarning)):
        array_stats.psislw(-lw.detach().cpu().numpy(), r_eff=1.0, axis=0)
    assert torch.isneginf(pareto_khat(lw)).all()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ParetoKWarning
        res = evaluate(vae, x, K=50, batch_size=16, iwae_batch=16, elbo=Trace_ELBO())  # every draw exact
    assert res["estimator"] == "Trace_ELBO"
    assert res["elbo"] == pytest.approx(exact.mean().item(), abs=1e-8)
    assert res["iwae"] == pytest.approx(exact.mean().item(), abs=1e-8)
    # reconstruction and KL vary with z; their sum does not
    assert res["reconstruction"] + res["kl_total"] + res["factor"] == pytest.approx(res["nats"], abs=1e-8)
    assert res["khat_max"] == -math.inf and res["khat_frac_degenerate"] == 1.0 and res["khat_frac_gt_0.7"] == 0.0
    assert res["active_units"] == {"z": 2}


def _user_hierarchy(T):
    return user_hierarchy_class()((1, 8, 8), latent_dim=3, T=T, hidden=16)


ZOO_SMALL = {
    "vae": lambda: VAE((1, 8, 8), "binary", latent_dim=3, hidden=16),
    "hvae-bu": lambda: BottomUpHVAE((1, 8, 8), "binary", latent_dims=(3, 2), hidden=16),
    "hvae-td": lambda: TopDownHVAE((1, 8, 8), "binary", layers=3, latent_dim=2, hidden=16),
    "hvae-td-residual": lambda: TopDownHVAE((1, 8, 8), "binary", layers=2, latent_dim=2, hidden=16, merge="residual"),
    "vdm-T3": lambda: VDM((1, 8, 8), "binary", T=3, width=16, depth=1),
    "vdm-8bit-cont": lambda: VDM((1, 8, 8), "8bit", T=None, width=16, depth=1, trace_steps=2),
    "user": lambda: _user_hierarchy(2),
}


@pytest.mark.parametrize("name", list(ZOO_SMALL))
def test_log_weights_reproduce_trace_elbo_draw_for_draw(name, digit_data):
    """With the same random draws, Σ_b log w_b (K = 1) is exactly −Trace_ELBO's loss, and so is the
    per-site breakdown's total: auxiliary guide sites (the top-down ladder's d_l) are skipped, the
    chain's T latents are ordinary sites of the stock program."""
    model = ZOO_SMALL[name]().to(device=DEVICE, dtype=DTYPE)
    x = _test_x(digits("8bit") if "8bit" in name else digit_data, 8)
    elbo = Trace_ELBO(max_plate_nesting=1)
    pyro.set_rng_seed(11)
    loss = elbo.loss(model.model, model.guide, x)
    pyro.set_rng_seed(11)
    lw = per_example_log_weights(model, None, x, K=1)
    assert lw.shape == (1, 8)
    assert lw.sum().item() == pytest.approx(-loss, rel=1e-10, abs=1e-8)
    pyro.set_rng_seed(11)
    terms = per_site_terms(model, None, x)
    torch.testing.assert_close(terms["total"], -lw[0], rtol=1e-10, atol=1e-8)
    if name.startswith("hvae-td"):
        assert set(terms["kl"]) == {f"z_{l}" for l in range(1, model.L + 1)}  # no d_l


def test_iwae_is_elbo_at_K1_and_grows_with_K(digit_data):
    """Burda et al. 2016, Thm. 1: E[IWAE_1] = ELBO ≤ E[IWAE_5] ≤ E[IWAE_50], on a VAE trained
    for 100 SVI steps on 8×8 digits; means over 100 examples × 20 replicates, 4-SE margins."""
    vae = VAE((1, 8, 8), "binary", latent_dim=4, hidden=32).to(device=DEVICE, dtype=DTYPE)
    xtr = digit_data.train.to(device=DEVICE, dtype=DTYPE)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        svi.step(xtr[torch.randint(0, xtr.shape[0], (64,), generator=g)])
    x = _test_x(digit_data, 100)
    R = 20
    with torch.no_grad():
        means = {K: torch.stack([iwae_bound(vae, x, K).mean() for _ in range(R)]) for K in (1, 5, 50)}
        elbo = torch.tensor([-Trace_ELBO().loss(vae.model, vae.guide, x) / x.shape[0] for _ in range(R)], dtype=DTYPE)
    m = {K: v.mean().item() for K, v in means.items()}
    se = {K: (v.std() / math.sqrt(R)).item() for K, v in means.items()}
    se_elbo = (elbo.std() / math.sqrt(R)).item()
    assert abs(m[1] - elbo.mean().item()) < 4 * math.hypot(se[1], se_elbo), (m, elbo.mean())
    assert m[5] > m[1] - 4 * math.hypot(se[1], se[5])
    assert m[50] > m[5] - 4 * math.hypot(se[5], se[50])
    # and the gain is real (the test can fail): K = 50 beats the ELBO by many standard errors
    assert m[50] - m[1] > 4 * math.hypot(se[1], se[50]), (m, se)


@pytest.mark.parametrize("alpha", [2.0, 1 / 0.8])
def test_pareto_khat_recovers_tail_index(alpha):
    """Weights w ∼ Pareto(α) (w = U^{−1/α}) have k = 1/α. With K = 5000 draws PSIS fits the
    top 3√K ≈ 212 of them; k̂'s sd is ≈ (1 + k)/√212 ≈ 0.1, so we average 20 examples."""
    rng = np.random.default_rng(1)
    lw = tensor(-np.log(rng.uniform(size=(5000, 20))) / alpha) - 123.0  # log-weights, shifted
    khat = pareto_khat(lw)
    assert khat.shape == (20,)
    # the mean of 20 has sd ≈ (1 + k)/√(212 · 20) ≤ 0.028 (k ≤ 0.8): 0.1 is ≥ 3.5 sd
    assert abs(khat.mean().item() - 1 / alpha) < 0.1, khat
    assert abs(khat.median().item() - 1 / alpha) < 0.1, khat
    # the orientation of arviz_stats' psislw: it smooths the *negated* input (a log-likelihood);
    # passing the log-weights themselves fits the bounded left side of the weights: k̂ < 0
    wrong = array_stats.psislw(lw.cpu().numpy(), r_eff=1.0, axis=0)[1]
    assert np.mean(wrong) < -0.5
    right = array_stats.psislw(-lw.cpu().numpy(), r_eff=1.0, axis=0)[1]
    np.testing.assert_allclose(khat.cpu().numpy(), right, rtol=1e-12)
    # (K,) input gives one k̂; fewer than 30 draws is an error
    assert pareto_khat(lw[:, 0]).shape == (1,)
    with pytest.raises(ValueError, match="at least 30"):
        pareto_khat(lw[:29])


class _Conjugate(PyroModule):
    """z ∼ N(0, I₂), x ∼ N(z, I₂); the posterior is N(x/2, ½ I). The guide's scale is ``s`` times
    the posterior's: log w = c ε² + const with c = (1 − s²)/2, a Pareto tail with k = 1 − s²."""

    def __init__(self, s):
        super().__init__()
        self.s = s

    @pyro_method
    def model(self, x=None, batch_size=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), torch.ones_like(x)).to_event(1))
            pyro.sample("x", dist.Normal(z, torch.ones_like(x)).to_event(1), obs=x)

    @pyro_method
    def guide(self, x=None, batch_size=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x / 2, torch.full_like(x, self.s * math.sqrt(0.5))).to_event(1))


def test_evaluate_warns_on_heavy_tailed_weights():
    x = tensor(torch.randn(20, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    with pytest.warns(ParetoKWarning, match="k̂"):
        res = evaluate(_Conjugate(0.1), x, K=400)  # k = 0.99
    # k̂ of one example fits the top 3√400 = 60 weights: sd ≈ (1 + k)/√60 ≈ 0.26, so k̂ > 0.7 for ≈ 87% of
    # the 20 examples (0.29 below k is 1.1 sd); more than half is then all but certain (P(≤ 10 of 20) < 1e-4)
    assert res["khat_max"] > 0.7 and res["khat_frac_gt_0.7"] > 0.5
    assert res["iwae"] >= res["elbo"]
    # the exact guide (s = 1) gives exact weights and no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exact = evaluate(_Conjugate(1.0), x, K=400, elbo=Trace_ELBO())  # Trace_ELBO: each draw is exact
    logp = torch.distributions.Normal(0.0, math.sqrt(2.0)).log_prob(x).sum(-1).mean().item()
    assert exact["iwae"] == pytest.approx(logp, abs=1e-9) and exact["elbo"] == pytest.approx(logp, abs=1e-9)
    assert exact["khat_frac_degenerate"] == 1.0


def test_evaluate_units_and_json(digit_data):
    vae = VAE((1, 8, 8), "binary", latent_dim=4, hidden=32).to(device=DEVICE, dtype=DTYPE)
    vae.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ParetoKWarning)  # an untrained guide may have heavy tails
        res = evaluate(vae, digit_data, K=30, batch_size=40, iwae_batch=25, max_examples=100, seed=0)
    assert vae.training  # mode restored
    D = 64
    assert res["n_examples"] == 100 and res["dim"] == D
    assert res["bpd"] * D * math.log(2) == pytest.approx(res["nats"], rel=1e-12)
    assert res["iwae_bpd"] * D * math.log(2) == pytest.approx(res["iwae_nats"], rel=1e-12)
    assert res["elbo"] == -res["nats"] and res["iwae"] == -res["iwae_nats"]
    assert set(res["kl"]) == {"z"} and res["kl_total"] > 0
    # the default estimator of this VAE is TraceMeanField_ELBO (a one-latent guide is mean-field exact):
    # ``nats`` is its loss (analytic KL), the breakdown one independent draw of the same −ELBO. Their
    # difference has sd √2 × (one estimate's Monte Carlo se) ≤ √2 · nats_se (nats_se also holds the
    # spread of the data over the examples): 4 sd, deterministic at this seed
    assert res["estimator"] == "TraceMeanField_ELBO" and res["factor"] == 0.0
    gap = res["reconstruction"] + res["kl_total"] - res["nats"]
    assert abs(gap) <= 4 * math.sqrt(2) * res["nats_se"], (gap, res["nats_se"])
    # under Trace_ELBO loss and breakdown are the same draws: an identity, up to rounding in the sums
    same = evaluate(vae, digit_data, batch_size=40, max_examples=100, seed=0, elbo=Trace_ELBO())
    assert same["reconstruction"] + same["kl_total"] + same["factor"] == pytest.approx(same["nats"], rel=1e-12)
    for key in ("khat_max", "khat_mean", "khat_frac_gt_0.7"):
        assert isinstance(res[key], float) and math.isfinite(res[key])
    json.dumps(res, allow_nan=False)  # plain numbers only
    # seeded evaluations are reproducible
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ParetoKWarning)
        again = evaluate(vae, digit_data, K=30, batch_size=40, iwae_batch=25, max_examples=100, seed=0)
    assert again == res


def test_evaluate_vdm_terms_add_up(digit_data):
    """For a VDM under DiffusionELBO the −ELBO is reconstruction + prior + diffusion exactly."""
    vdm = VDM((1, 8, 8), "binary", T=None, width=32, depth=1).to(device=DEVICE, dtype=DTYPE)
    res = evaluate(vdm, digit_data, batch_size=32, max_examples=64)
    assert res["estimator"] == "DiffusionELBO"
    parts = res["reconstruction"] + res["prior"] + res["diffusion"]
    assert parts == pytest.approx(res["nats"], rel=1e-9)
    assert abs(res["rest"]) <= 1e-9 * res["nats"]
    assert res["chains"]["z"]["loss"] == pytest.approx(res["nats"], rel=1e-9)
    assert res["bpd"] * 64 * math.log(2) == pytest.approx(res["nats"], rel=1e-12)
    assert res["active_units"] == {}  # the collapsed chain has no guide sites


def test_stock_program_steps_override(digit_data):
    x = _test_x(digit_data, 4)
    vdm = VDM((1, 8, 8), "binary", T=None, width=16, depth=1, trace_steps=4).to(device=DEVICE, dtype=DTYPE)
    # inside a DiffusionELBO context the weights still come from the stock (uncollapsed) program
    with DiffusionELBO().collapse():
        lw = per_example_log_weights(vdm, None, x, K=3, steps=2)
    assert lw.shape == (3, 4) and torch.isfinite(lw).all()
    assert vdm.chain.trace_steps == 4  # restored
    pyro.set_rng_seed(5)
    terms = per_site_terms(vdm, None, x)
    assert set(terms["kl"]) == {f"z_{i}" for i in range(5)}
    with pytest.raises(ValueError, match="continuous-time"):
        per_example_log_weights(VDM((1, 8, 8), "binary", T=3, width=8, depth=1), None, x, K=1, steps=2)
    # a stock ELBO on a discrete VDM reports the chain's KLs site by site
    res = evaluate(VDM((1, 8, 8), "binary", T=2, width=8, depth=1).to(device=DEVICE, dtype=DTYPE), x, elbo=Trace_ELBO())
    assert set(res["kl"]) == {"z_2", "z_1", "z_0"}


class _HalfEncoder(nn.Module):
    """q(z|x) whose loc ignores x in the last two of four dims."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 2)

    def forward(self, h):
        h = h.flatten(1)
        loc = torch.cat([3 * self.lin(h), torch.full((h.shape[0], 2), 0.5, dtype=h.dtype, device=h.device)], -1)
        return loc, torch.full_like(loc, 0.5)


def test_active_units_count_only_dims_that_depend_on_x(digit_data):
    vae = VAE((1, 8, 8), "binary", latent_dim=4, hidden=16, encoder=_HalfEncoder()).to(device=DEVICE, dtype=DTYPE)
    x = _test_x(digit_data, 200)
    assert active_units(vae, x, batch_size=64) == {"z": 2}
    assert evaluate(vae, x, batch_size=64)["active_units"] == {"z": 2}
    assert active_units(vae, x, threshold=1e6) == {"z": 0}


def test_default_estimator_and_chains():
    assert any(isinstance(m, DiffusionChain) for m in _user_hierarchy(None).modules())
    model = _user_hierarchy(None).to(device=DEVICE, dtype=DTYPE)
    x = (torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.5).to(device=DEVICE, dtype=DTYPE)
    res = evaluate(model, x)
    assert res["estimator"] == "DiffusionELBO"
    # the chain over the latent z is only part of the −ELBO: the rest is x's likelihood and q(z|x)
    assert res["rest"] != 0.0 and set(res["chains"]) == {"u"}
    assert res["active_units"].keys() == {"z"}


@pytest.mark.parametrize("build", [
    lambda: TopDownHVAE((1, 8, 8), "binary", layers=2, latent_dim=4, hidden=16),
    lambda: BottomUpHVAE((1, 8, 8), "binary", latent_dims=(4, 2), hidden=16),
    lambda: VDM((1, 8, 8), "binary", T=4),
])
def test_evaluate_scores_under_the_estimator_training_uses(build, digit_data):
    """One rule (hlvm.estimators.default_estimator) for training and evaluation: a top-down HVAE
    trains under TraceMeanField_ELBO and is scored under it, with the same value as when the
    trainer's estimator is passed explicitly (same seed, same draws)."""
    from hlvm.estimators import default_estimator, make_estimator

    model = build().to(device=DEVICE, dtype=DTYPE)
    x = _test_x(digit_data, 40)
    trained_with = make_estimator("auto", model)
    res = evaluate(model, x, seed=3)
    assert res["estimator"] == type(trained_with).__name__ == type(default_estimator(model)).__name__
    assert res["nats"] == evaluate(model, x, elbo=trained_with, seed=3)["nats"]
    if isinstance(model, TopDownHVAE):
        assert res["estimator"] == "TraceMeanField_ELBO"
