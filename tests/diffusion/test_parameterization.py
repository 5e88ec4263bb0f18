"""Parameterization conversions and loss weights, checked against the linear relations of z_t."""

import itertools

import pytest
import torch

from hlvm.diffusion.gaussian import alpha_sigma
from hlvm.diffusion.parameterization import TARGETS, convert, from_x, loss_weight, score_from_energy, to_x

from conftest import tensor


def _setup(gamma=0.7, dgamma=12.0, shape=(6, 4)):
    """Ground truth (x, ε) and every exact target at z_t = α x + σ ε."""
    g = tensor(gamma)
    a, s = alpha_sigma(g)
    x, eps = tensor(torch.randn(shape)), tensor(torch.randn(shape))
    z = a * x + s * eps
    dg = tensor(dgamma)
    # exact targets, written from their definitions (not from the library)
    da, ds = -0.5 * dg * a * s**2, 0.5 * dg * s * a**2  # α' and σ' for α² = sigmoid(−γ)
    truth = {"x": x, "eps": eps, "score": -eps / s, "v": a * eps - s * x, "flow": da * x + ds * eps}
    return g, dg, z, truth


def test_alpha_sigma_derivatives_match_autograd():
    """α' = −½γ'ασ², σ' = ½γ'σα² (used to define the flow target) against autograd on a schedule."""
    from hlvm.diffusion.schedules import CosineSchedule
    sched = CosineSchedule().to(tensor(0.0).dtype)
    t = tensor(0.37).requires_grad_(True)
    a, s = sched.alpha(t), sched.sigma(t)
    da, = torch.autograd.grad(a, t, retain_graph=True)
    ds, = torch.autograd.grad(s, t)
    dg = sched.dgamma_dt(t.detach())
    torch.testing.assert_close(da, -0.5 * dg * a * s**2, rtol=1e-9, atol=0)
    torch.testing.assert_close(ds, 0.5 * dg * s * a**2, rtol=1e-9, atol=0)


@pytest.mark.parametrize("gamma", [-8.0, -1.0, 0.0, 3.0, 9.0])
def test_every_target_maps_to_the_truth(gamma):
    g, dg, z, truth = _setup(gamma)
    for src, dst in itertools.product(TARGETS, TARGETS):
        out = convert(truth[src], src, dst, z, g, dg)
        torch.testing.assert_close(out, truth[dst], rtol=1e-8, atol=1e-8, msg=f"{src} -> {dst}")


@pytest.mark.parametrize("gamma", [-6.0, 0.0, 6.0])
def test_round_trip_within_1e10(gamma):
    g, dg, z, _ = _setup(gamma)
    pred = tensor(torch.randn(z.shape))  # an arbitrary (wrong) prediction still round-trips
    for src, dst in itertools.product(TARGETS, TARGETS):
        back = convert(convert(pred, src, dst, z, g, dg), dst, src, z, g, dg)
        assert (back - pred).abs().max() < 1e-10, (src, dst)


def test_linear_relations_of_design():
    """x̂ = (z − σε̂)/α = (z + σ²ŝ)/α; ε̂ = −σŝ; VP: x = αz − σv, ε = σz + αv; u = α'x + σ'ε."""
    g, dg, z, t = _setup(1.3)
    a, s = alpha_sigma(g)
    x_hat = tensor(torch.randn(z.shape))
    eps_hat, s_hat, v_hat = (from_x(x_hat, k, z, g) for k in ("eps", "score", "v"))
    torch.testing.assert_close(x_hat, (z - s * eps_hat) / a)
    torch.testing.assert_close(x_hat, (z + s**2 * s_hat) / a)
    torch.testing.assert_close(eps_hat, -s * s_hat)
    torch.testing.assert_close(x_hat, a * z - s * v_hat)
    torch.testing.assert_close(eps_hat, s * z + a * v_hat)
    u_hat = from_x(x_hat, "flow", z, g, dg)
    torch.testing.assert_close(u_hat, -0.5 * dg * a * s**2 * x_hat + 0.5 * dg * s * a**2 * eps_hat)


def test_energy_score_matches_autograd_of_quadratic():
    """For E(z) = ½ (z−m)ᵀ A (z−m), the score is −A (z−m)."""
    d = 3
    b = tensor(torch.randn(d, d))
    A = b @ b.T + tensor(torch.eye(d))
    m = tensor(torch.randn(d))
    z = tensor(torch.randn(5, d))
    score = score_from_energy(lambda z_: 0.5 * (((z_ - m) @ A) * (z_ - m)).sum(-1), z)
    torch.testing.assert_close(score, -(z - m) @ A, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="energy must have shape"):
        score_from_energy(lambda z_: z_, z)


@pytest.mark.parametrize("gamma", [-5.0, 0.0, 4.0])
def test_loss_weights_numerically(gamma):
    """‖dst − dst̂‖² = w(src→dst) · ‖src − srĉ‖² for random predictions at the same z_t."""
    g, dg, z, truth = _setup(gamma, dgamma=7.5, shape=(200, 3))
    x_hat = tensor(torch.randn(z.shape))  # one arbitrary prediction, expressed in every target
    preds = {k: from_x(x_hat, k, z, g, dg) for k in TARGETS}
    mse = {k: (truth[k] - preds[k]).pow(2).sum() for k in TARGETS}
    for src, dst in itertools.product(TARGETS, TARGETS):
        w = loss_weight(src, dst, g, dg)
        torch.testing.assert_close(w * mse[src], mse[dst], rtol=1e-9, atol=0, msg=f"{src} -> {dst}")


def test_loss_weight_named_forms():
    """The named closed forms: ε = SNR·x-MSE, v = (1+SNR)·x-MSE = ε-MSE/α² (derived, not Table 4)."""
    g = tensor(torch.linspace(-6, 6, 13))
    a, s = alpha_sigma(g)
    snr = torch.exp(-g)
    torch.testing.assert_close(loss_weight("x", "eps", g), snr)
    torch.testing.assert_close(loss_weight("x", "v", g), 1 + snr)
    torch.testing.assert_close(loss_weight("eps", "v", g), 1 / a**2)
    torch.testing.assert_close(loss_weight("eps", "score", g), 1 / s**2)


def test_bad_input():
    g, dg, z, truth = _setup()
    with pytest.raises(ValueError, match="unknown parameterization 'noise'"):
        convert(truth["x"], "noise", "x", z, g)
    with pytest.raises(ValueError, match="unknown parameterization"):
        loss_weight("x", "energy", g)
    with pytest.raises(ValueError, match="needs dgamma_dt"):
        convert(truth["x"], "x", "flow", z, g)
    with pytest.raises(ValueError, match="does not match z_t shape"):
        to_x(truth["x"][:2], "eps", z, g)


def test_binary_logit_is_the_exact_pixel_posterior_mean():
    """x̂ = tanh(αz/σ² + h) equals E[x | z_t] for x ∈ {−1, 1} with P(x = 1) = sigmoid(2h), computed
    independently from the two Gaussian likelihoods; and the Denoiser exposes it as x̂."""
    from hlvm.diffusion.denoiser import Denoiser
    from hlvm.diffusion.parameterization import x_from_binary_logit

    g = tensor([-4.0, 0.0, 3.0])[:, None].expand(3, 5)
    a, s = alpha_sigma(g)
    z, h = tensor(torch.randn(3, 5)), tensor(torch.randn(3, 5))
    p = torch.sigmoid(2 * h)
    lik_pos = torch.exp(-0.5 * ((z - a) / s) ** 2)
    lik_neg = torch.exp(-0.5 * ((z + a) / s) ** 2)
    exact = (p * lik_pos - (1 - p) * lik_neg) / (p * lik_pos + (1 - p) * lik_neg)
    torch.testing.assert_close(x_from_binary_logit(h, z, g[:, 0]), exact, rtol=1e-9, atol=1e-12)

    class Const(torch.nn.Module):
        def forward(self, z_t, gamma_t):
            return h

    den = Denoiser(Const(), "logit")
    torch.testing.assert_close(den(z, g[:, 0]), exact, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(den.eps_hat(z, g[:, 0]), (z - a * exact) / s, rtol=1e-9, atol=1e-9)
