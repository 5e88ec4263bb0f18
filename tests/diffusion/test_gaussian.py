"""Gaussian diffusion (Table 1) against closed forms and independent computations."""

import math

import pytest
import torch

from hlvm.diffusion.gaussian import (alpha_sigma, alpha_ts, diffusion_kl, diffusion_kl_eps, posterior_coefficients,
                           prior_kl, q_zs_given_zt_x, q_zt_given_x, q_zt_given_zs, sigma_sq_ts)

from conftest import tensor


LEVELS = [(-13.0, -12.5), (-5.0, 0.3), (-1.0, 4.0), (2.0, 9.0)]


@pytest.mark.parametrize("g_s,g_t", LEVELS)
def test_transition_composes_with_marginal(g_s, g_t):
    """q(z_t|z_s) ∘ q(z_s|x) = q(z_t|x): mean α_{t|s} α_s x and variance α²_{t|s} σ_s² + σ²_{t|s}."""
    x = tensor(torch.randn(5, 3))
    gs, gt = tensor(g_s), tensor(g_t)
    qs, qt = q_zt_given_x(x, gs), q_zt_given_x(x, gt)
    step = q_zt_given_zs(qs.mean, gs, gt)  # linear in z_s: its mean at E[z_s] is the composed mean
    a_ts = alpha_ts(gs, gt)
    torch.testing.assert_close(step.mean, qt.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a_ts**2 * qs.variance + step.variance, qt.variance, rtol=1e-12, atol=1e-14)


def test_transition_composes_by_sampling():
    """The same composition checked by sampling: 200k draws of z_s then z_t match q(z_t|x)."""
    g = torch.Generator(device="cpu").manual_seed(1)
    x = tensor([0.7, -1.2])
    gs, gt = tensor(-1.0), tensor(1.5)
    n = 200_000
    z_s = q_zt_given_x(x, gs).mean + q_zt_given_x(x, gs).stddev * tensor(torch.randn(n, 2, generator=g))
    step = q_zt_given_zs(z_s, gs, gt)
    z_t = step.mean + step.stddev * tensor(torch.randn(n, 2, generator=g))
    qt = q_zt_given_x(x, gt)
    se = qt.stddev / math.sqrt(n)
    assert ((z_t.mean(0) - qt.mean).abs() < 4 * se).all()
    assert ((z_t.var(0) - qt.variance).abs() < 4 * qt.variance * math.sqrt(2 / n)).all()


@pytest.mark.parametrize("g_s,g_t", LEVELS)
def test_posterior_equals_conditioned_joint(g_s, g_t):
    """q(z_s|z_t,x) equals the Gaussian conditional of the joint (z_s, z_t) | x, computed by
    the Schur complement of the 2×2 covariance — independently of Table 1's formulas."""
    gs, gt = tensor(g_s), tensor(g_t)
    a_s2, s_s2 = torch.sigmoid(-gs), torch.sigmoid(gs)
    a_t2, s_t2 = torch.sigmoid(-gt), torch.sigmoid(gt)
    a_s, a_t = a_s2.sqrt(), a_t2.sqrt()
    # joint of (z_s, z_t) given x (per dimension): z_s = a_s x + s_s e1, z_t = a_t x + (a_t/a_s) s_s e1 + ...
    cov_ss = s_s2
    cov_st = (a_t / a_s) * s_s2  # Cov(z_s, z_t) = α_{t|s} σ_s²
    cov_tt = s_t2
    x = tensor(torch.randn(4))
    z_t = tensor(torch.randn(4))
    mean_cond = a_s * x + cov_st / cov_tt * (z_t - a_t * x)
    var_cond = cov_ss - cov_st**2 / cov_tt
    q = q_zs_given_zt_x(z_t, x, gs, gt)
    torch.testing.assert_close(q.mean, mean_cond, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(q.variance, var_cond.expand(4), rtol=1e-8, atol=1e-300)


def test_posterior_matches_paper_form():
    """μ_Q = (α_{t|s}σ_s²/σ_t²) z_t + (α_s σ²_{t|s}/σ_t²) x, σ_Q² = σ²_{t|s}σ_s²/σ_t² (Table 1)."""
    gs, gt = tensor(-2.0), tensor(0.5)
    (a_s, s_s), (a_t, s_t) = alpha_sigma(gs), alpha_sigma(gt)
    a_ts, s2_ts = a_t / a_s, s_t**2 - (a_t / a_s) ** 2 * s_s**2
    c_z, c_x, var = posterior_coefficients(gs, gt)
    torch.testing.assert_close(c_z, a_ts * s_s**2 / s_t**2)
    torch.testing.assert_close(c_x, a_s * s2_ts / s_t**2)
    torch.testing.assert_close(var, s2_ts * s_s**2 / s_t**2)
    torch.testing.assert_close(sigma_sq_ts(gs, gt), s2_ts)


def test_kl_closed_form_matches_gaussian_kl_and_eps_form():
    """½(SNR(s)−SNR(t))‖x−x̂‖² equals torch's Gaussian KL and the ε-form ½ expm1(γ_t−γ_s)‖ε−ε̂‖²."""
    gs, gt = tensor(-3.0), tensor(-1.0)
    x, x_hat = tensor(torch.randn(6, 5)), tensor(torch.randn(6, 5))
    z_t = q_zt_given_x(x, gt).sample()
    q, p = q_zs_given_zt_x(z_t, x, gs, gt), q_zs_given_zt_x(z_t, x_hat, gs, gt)
    ref = torch.distributions.kl_divergence(q, p).sum(-1)
    torch.testing.assert_close(diffusion_kl(x, x_hat, gs, gt), ref, rtol=1e-9, atol=1e-12)
    a_t, s_t = alpha_sigma(gt)
    eps, eps_hat = (z_t - a_t * x) / s_t, (z_t - a_t * x_hat) / s_t
    torch.testing.assert_close(diffusion_kl_eps(eps, eps_hat, gs, gt), ref, rtol=1e-9, atol=1e-12)


def test_kl_per_example_levels_broadcast():
    gs, gt = tensor([-3.0, 0.0]), tensor([-1.0, 2.0])
    x, x_hat = tensor(torch.randn(2, 3, 4)), tensor(torch.zeros(2, 3, 4))
    kl = diffusion_kl(x, x_hat, gs, gt)
    for i in range(2):
        torch.testing.assert_close(kl[i], diffusion_kl(x[i:i + 1], x_hat[i:i + 1], gs[i], gt[i])[0])


def test_prior_kl_matches_torch():
    g1 = tensor(4.0)
    x = tensor(torch.randn(3, 7))
    q = q_zt_given_x(x, g1)
    ref = torch.distributions.kl_divergence(q, torch.distributions.Normal(torch.zeros_like(x), torch.ones_like(x))).sum(-1)
    torch.testing.assert_close(prior_kl(x, g1), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("g_s,g_t", [(-30.0, 30.0), (29.0, 30.0), (-30.0, -29.999), (-20.0, 25.0)])
def test_float32_extremes_are_finite(g_s, g_t):
    gs = torch.tensor(g_s, dtype=torch.float32, requires_grad=True)
    gt = torch.tensor(g_t, dtype=torch.float32, requires_grad=True)
    x = torch.randn(4, dtype=torch.float32)
    z = torch.randn(4, dtype=torch.float32)
    q = q_zs_given_zt_x(z, x, gs, gt)
    total = q.mean.sum() + q.scale.sum() + diffusion_kl(x[None], 0 * x[None], gs, gt).sum() + prior_kl(x[None], gt).sum()
    assert torch.isfinite(total)
    assert (q.scale > 0).all()
    grads = torch.autograd.grad(total, [gs, gt])
    assert all(torch.isfinite(g_) for g_ in grads)
    # σ_Q² never exceeds σ_s² (conditioning on z_t only reduces variance)
    assert (q.variance <= torch.sigmoid(gs) * (1 + 1e-6)).all()


def test_bad_input():
    x = tensor(torch.randn(4, 3))
    with pytest.raises(ValueError, match="gamma_s must be < gamma_t"):
        q_zs_given_zt_x(x, x, tensor(1.0), tensor(0.0))
    with pytest.raises(ValueError, match="gamma_s must be < gamma_t"):
        q_zt_given_zs(x, tensor(1.0), tensor(1.0))
    with pytest.raises(ValueError, match="do not broadcast"):
        q_zs_given_zt_x(x, tensor(torch.randn(4, 5)), tensor(0.0), tensor(1.0))
    with pytest.raises(ValueError, match="do not broadcast"):
        diffusion_kl(x, tensor(torch.randn(3, 4)), tensor(0.0), tensor(1.0))
