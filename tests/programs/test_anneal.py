"""KL warm-up: the latents' log-densities scaled by β, so the loss is reconstruction + β·KL."""

import pyro
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

from hlvm.training.anneal import ScaleLatents, warmup_beta
from hlvm.zoo import VAE, TopDownHVAE

from conftest import DEVICE


@pytest.mark.parametrize("factory", [lambda: VAE((1, 8, 8), latent_dim=3, hidden=16),
                                     lambda: TopDownHVAE((1, 8, 8), layers=3, latent_dim=3, hidden=16, merge="residual")])
def test_scaled_latents_give_reconstruction_plus_beta_kl(factory):
    """The loss is affine in β at fixed draws: L(β) = L(0) + β (L(1) − L(0)), L(0) the reconstruction."""
    pyro.set_rng_seed(0)
    m = factory().to(DEVICE)
    x = torch.bernoulli(torch.full((16, 1, 8, 8), 0.3, device=DEVICE))
    elbo = TraceMeanField_ELBO()

    def loss(beta):
        pyro.set_rng_seed(1)
        with ScaleLatents(beta):
            return elbo.differentiable_loss(m.model, m.guide, x).item()

    l0, l1, lh = loss(0.0), loss(1.0), loss(0.3)
    assert lh == pytest.approx(l0 + 0.3 * (l1 - l0), rel=1e-9)
    assert l1 > l0  # the KL is positive
    pyro.set_rng_seed(1)
    assert elbo.differentiable_loss(m.model, m.guide, x).item() == pytest.approx(l1, rel=1e-12)  # β = 1 is the ELBO


def test_warmup_schedule():
    assert [warmup_beta(s, 4) for s in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert warmup_beta(0, 0) == 1.0
    with pytest.raises(ValueError, match="beta must be in"):
        ScaleLatents(1.5)


def test_free_bits_stop_the_gradient_of_a_small_kl():
    """With λ above every layer's KL the objective's gradient is the reconstruction's alone (the
    KL's gradient cancels), and its value is −ELBO + Σ_layers (λ·B − KL_layer); with λ = 0 it is
    TraceMeanField_ELBO."""
    from hlvm.training.free_bits import FreeBitsELBO

    pyro.set_rng_seed(0)
    m = TopDownHVAE((1, 8, 8), layers=2, latent_dim=3, hidden=16, merge="residual").to(DEVICE)
    x = torch.bernoulli(torch.full((16, 1, 8, 8), 0.3, device=DEVICE))
    params = None

    def loss_and_grads(elbo, beta=1.0):
        nonlocal params
        pyro.set_rng_seed(1)
        with ScaleLatents(beta):
            loss = elbo.differentiable_loss(m.model, m.guide, x)
        params = [p for p in m.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return loss.item(), grads

    tmf, g_tmf = loss_and_grads(TraceMeanField_ELBO())
    zero, g_zero = loss_and_grads(FreeBitsELBO(0.0))
    assert zero == pytest.approx(tmf, rel=1e-12)
    big, g_big = loss_and_grads(FreeBitsELBO(1e4))
    recon, g_recon = loss_and_grads(TraceMeanField_ELBO(), beta=0.0)
    assert big == pytest.approx(recon + 2 * 1e4 * 16, rel=1e-9)  # two layers held at λ·B each
    for a, b in zip(g_big, g_recon):
        if a is not None or b is not None:
            torch.testing.assert_close(a if a is not None else torch.zeros_like(b), b if b is not None else torch.zeros_like(a))
    with pytest.raises(ValueError, match="free_bits must be"):
        FreeBitsELBO(-1.0)
