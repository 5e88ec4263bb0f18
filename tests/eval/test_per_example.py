"""Per-example bounds of :func:`hlvm.evaluate` and :func:`hlvm.eval.score` (``per_example=True``):
each bound's value on each image, aligned with the input, from the very draws of the reported mean.

Checked against Pyro's own estimators on the same draws (one image per batch, the same seed), by
exact equality of the means, and by alignment on a model whose bound is dominated by a known
per-image quantity (a decoder that favours black pixels: every white pixel costs ~3 nats)."""

import math

import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch import nn

from hlvm.data import digits
from hlvm.eval import evaluate, score
from hlvm.zoo import VAE, VDM, BottomUpHVAE

from conftest import DEVICE, DTYPE

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.fixture(scope="module")
def test_x():
    return digits().test[:12]


def _vae(bias: float | None = None):
    vae = VAE((1, 8, 8), "binary", latent_dim=4, hidden=16).to(device=DEVICE, dtype=DTYPE)
    if bias is not None:  # the last decoder layer's bias: every pixel's logit shifted to `bias`
        with torch.no_grad():
            [m for m in vae.decoder.modules() if isinstance(m, nn.Linear)][-1].bias.fill_(bias)
    return vae


def _without_values(out: dict) -> dict:
    return {k: ("nan" if isinstance(v, float) and v != v else v) for k, v in out.items()
            if k != "per_example" and "seconds" not in k}


@pytest.mark.parametrize("build, estimator", [(_vae, TraceMeanField_ELBO),
                                              (lambda: BottomUpHVAE((1, 8, 8), "binary", latent_dims=(4, 2),
                                                                    hidden=16).to(DEVICE, DTYPE), Trace_ELBO)])
def test_per_example_elbo_is_pyros_loss_on_each_image_from_the_same_draws(test_x, build, estimator):
    """batch_size=1 and one seed: example i's value is −loss of Pyro's estimator on image i, drawn
    in the same order (TraceMeanField_ELBO: its closed-form KLs; Trace_ELBO: one draw)."""
    m, x = build(), test_x[:5].to(DEVICE, DTYPE)
    ev = evaluate(m, x, batch_size=1, seed=7, per_example=True)
    assert ev["estimator"] == estimator.__name__
    values = ev["per_example"]["elbo"]
    assert values.dtype == torch.float64 and values.device.type == "cpu" and values.shape == (5,)
    torch.manual_seed(7)
    m.eval()
    with torch.no_grad():
        expected = torch.tensor([-estimator().loss(m.model, m.guide, x[i:i + 1]) for i in range(5)], dtype=torch.float64)
    torch.testing.assert_close(values, expected, rtol=1e-9 if DTYPE == torch.float64 else 1e-5, atol=1e-6)
    assert float(values.mean()) == ev["elbo"]  # the reported mean, to the bit


def test_means_are_the_means_of_the_values_and_unchanged_by_asking_for_them(test_x):
    vae, x = _vae(), test_x.to(DEVICE, DTYPE)
    with_values = evaluate(vae, x, K=20, seed=3, batch_size=5, iwae_batch=4, per_example=True)
    without = evaluate(vae, x, K=20, seed=3, batch_size=5, iwae_batch=4)
    assert _without_values(with_values) == _without_values(without) and "per_example" not in without
    pe = with_values["per_example"]
    assert set(pe) == {"elbo", "iwae"} and all(v.shape == (12,) for v in pe.values())
    assert float(pe["elbo"].mean()) == with_values["elbo"] and float(pe["iwae"].mean()) == with_values["iwae"]
    assert float(pe["elbo"].std() / math.sqrt(12)) == pytest.approx(with_values["nats_se"], rel=1e-12)
    assert float(pe["iwae"].std() / math.sqrt(12)) == pytest.approx(with_values["iwae_se"], rel=1e-12)


def test_values_are_aligned_with_the_input_order(test_x):
    """A decoder that ignores z with every logit at −3: log p(x_i) = −[w_i softplus(3) + (64 − w_i)
    softplus(−3)] for an image with w_i white pixels, and the ELBO is log p(x_i) − KL(q(z | x_i) ‖
    N(0, I)) exactly (closed-form KL: no draw matters), computed here from the encoder by hand.
    Reversing the input reverses the values; the IWAE bound sits near log p(x_i)."""
    vae, x = _vae(bias=-3.0), test_x.to(DEVICE, DTYPE)
    with torch.no_grad():
        [m for m in vae.decoder.modules() if isinstance(m, nn.Linear)][-1].weight.zero_()
        loc, scale = vae.encoder(vae.likelihood.to_model_space(x))
    kl = (0.5 * (loc**2 + scale**2 - 1) - scale.log()).sum(-1).double().cpu()
    white = x.reshape(12, -1).sum(-1).double().cpu()
    log_px = -(white * math.log1p(math.exp(3)) + (64 - white) * math.log1p(math.exp(-3)))
    assert float(white.max() - white.min()) >= 5  # the images differ
    fwd = evaluate(vae, x, K=20, seed=0, per_example=True)["per_example"]
    back = evaluate(vae, x.flip(0), K=20, seed=1, per_example=True)["per_example"]
    tol = dict(rtol=1e-9, atol=1e-9) if DTYPE == torch.float64 else dict(rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(fwd["elbo"], log_px - kl, **tol)
    torch.testing.assert_close(back["elbo"].flip(0), log_px - kl, **tol)
    assert torch.allclose(fwd["iwae"], log_px, atol=1.0) and torch.allclose(back["iwae"].flip(0), log_px, atol=1.0)


def test_score_returns_the_values_of_each_bound_it_computes(test_x):
    vae, x = _vae(), test_x.to(DEVICE, DTYPE)
    s = score(vae, x, seed=2, eval_examples=10, K=30, iwae_examples=6, per_example=True)
    assert set(s.per_example) == {"elbo", "iwae"} and "per_example" not in s.evaluation | s.iwae
    assert s.per_example["elbo"].shape == (10,) and s.per_example["iwae"].shape == (6,)
    assert float(s.per_example["elbo"].mean()) == s.evaluation["elbo"]
    assert float(s.per_example["iwae"].mean()) == s.iwae["iwae"]
    plain = score(vae, x, seed=2, eval_examples=10, K=30, iwae_examples=6)
    assert plain.per_example == {} and plain.iwae["iwae"] == s.iwae["iwae"]


def test_a_continuous_vdm_gives_per_example_elbo_and_pfode_bound(test_x):
    vdm = VDM((1, 8, 8), "binary", T=None, width=16, depth=1).to(device=DEVICE, dtype=DTYPE)
    x = test_x.to(DEVICE, DTYPE)
    s = score(vdm, x, seed=1, eval_examples=6, K=30, pfode_examples=2, per_example=True)
    assert set(s.per_example) == {"elbo", "pfode"}
    assert s.per_example["pfode"].shape == (2,) and float(s.per_example["pfode"].mean()) == s.pfode["pfode"]
    assert float(s.per_example["elbo"].mean()) == s.evaluation["elbo"]
    assert bool((s.per_example["elbo"] < 0).all())  # a bound on the log-probability of binary images


def test_per_example_values_need_a_one_draw_estimator(test_x):
    with pytest.raises(ValueError, match="one-draw ELBO estimator.*Trace_ELBO"):
        evaluate(_vae(), test_x.to(DEVICE, DTYPE), elbo=Trace_ELBO(num_particles=2), per_example=True)
