"""The O(D) 8-bit decoders: the CDF-difference DiscretizedGaussian and the windowed GridGaussian.

Checked against independent computations: the whole 256-value table (normalization), an
arbitrary-precision (mpmath, 50 digits) evaluation of the CDF differences, the full 256-way
softmax of VDM's decoder, empirical frequencies of samples; and finite gradients at extremes.
"""

import math

import mpmath
import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from hlvm.training.optim import Adam
from hlvm.programs.discretized import DiscretizedGaussian, GridGaussian, grid_values
from hlvm.programs.normal_cdf import log_bin_mass, log_ndtr
from hlvm.programs.likelihoods import Discretized8bitLikelihood
from hlvm.zoo import VAE, VDM, BottomUpHVAE, TopDownHVAE

from conftest import DEVICE

K = 256
DELTA = 2 / K
ALL = torch.arange(K)


def _random_params(n, seed=0, log_scale_sd=3.0):
    g = torch.Generator().manual_seed(seed)
    loc = 1.5 * torch.randn(n, generator=g)
    scale = torch.exp(log_scale_sd * torch.randn(n, generator=g) - 3)  # ~1e-6 .. 1e2
    return loc.to(DEVICE, torch.get_default_dtype()), scale.to(DEVICE, torch.get_default_dtype())


def _table(d):
    """log P(k) for every k (K, n): 256 separate evaluations, one per value."""
    return torch.stack([d.log_prob(torch.full_like(d.loc, k)) for k in range(K)])


def _tol():
    return 1e-12 if torch.get_default_dtype() == torch.float64 else 2e-6


# ------------------------------------------------------------------------------ (a) normalization
@pytest.mark.parametrize("family", [DiscretizedGaussian, GridGaussian])
def test_pmf_sums_to_one_over_the_256_values(family):
    loc, scale = _random_params(500)
    total = torch.logsumexp(_table(family(loc, scale)), 0)
    assert total.abs().max() < 10 * _tol()


# ------------------------------------------------------------------------------ (b) vs mpmath
def _mp_log_mass(k: int, loc: float, scale: float) -> float:
    """log(Φ(b) − Φ(a)) at 50 digits; edge bins open; each difference taken on its small side."""
    mpmath.mp.dps = 50
    return float(_mp_log_mass_at(k, mpmath.mpf(loc), mpmath.mpf(scale)))


def _mp_log_mass_at(k, loc, scale):
    loc, scale = mpmath.mpf(loc), mpmath.mpf(scale)
    a = (-1 + k * mpmath.mpf(2) / K - loc) / scale
    b = a + mpmath.mpf(2) / K / scale
    upper_q = lambda u: mpmath.erfc(u / mpmath.sqrt(2)) / 2  # noqa: E731  (1 − Φ(u))
    lo, hi = (-mpmath.inf if k == 0 else a), (mpmath.inf if k == K - 1 else b)
    mass = upper_q(-hi) - upper_q(-lo) if a + b < 0 else upper_q(lo) - upper_q(hi)
    return mpmath.log(mass)


def test_log_prob_equals_an_arbitrary_precision_cdf_difference():
    loc, scale = _random_params(400, seed=1)
    # extremes too: far-away locs, tiny and huge scales, both edge bins
    loc = torch.cat([loc, loc.new_tensor([-50.0, 50.0, 0.0, 0.0, 1.0, -1.0, 0.3])])
    scale = torch.cat([scale, scale.new_tensor([1e-3, 1e-3, 1e-6, 1e6, 1e-4, 1e-4, 10.0])])
    k = torch.randint(0, K, loc.shape, generator=torch.Generator().manual_seed(2)).to(loc.device)
    k[-7:] = torch.tensor([255, 0, 128, 17, 255, 0, 3])
    got = DiscretizedGaussian(loc, scale).log_prob(k).double().cpu()
    ref = torch.tensor([_mp_log_mass(int(ki), float(li), float(si)) for ki, li, si in zip(k, loc, scale)],
                       dtype=torch.float64)
    assert torch.isfinite(ref).all()
    rel = (got - ref).abs() / ref.abs().clamp(min=1)
    assert rel.max() < 10 * _tol(), (rel.max(), int(rel.argmax()))


def test_narrow_intervals_agree_on_both_sides_of_the_midpoint_switch():
    # the midpoint series and the CDF difference meet continuously (float64: τ = 0.03)
    mpmath.mp.dps = 50
    m = torch.linspace(-3, 3, 13, dtype=torch.float64)
    for w in (0.0299, 0.0301):
        w_t = torch.full_like(m, w)
        got = log_bin_mass(m - w / 2, m + w / 2, w_t)
        ref = torch.tensor([float(mpmath.log(mpmath.ncdf(mi + w / 2) - mpmath.ncdf(mi - w / 2))) for mi in m.tolist()],
                           dtype=torch.float64)
        assert (got - ref).abs().max() < 1e-12


# ------------------------------------------------------------------------------ (c) vs the grid softmax
def test_cdf_pmf_equals_the_grid_softmax_where_scale_is_far_below_the_bin_width():
    g = torch.Generator().manual_seed(3)
    k = torch.randint(0, K, (300,), generator=g)
    grid = grid_values(K)
    # loc within a quarter bin of a grid value, scale = Δ/40: outside mass ≤ Φ(−10) ≈ 1e-23
    loc = (grid[k] + DELTA / 4 * (2 * torch.rand(300, generator=g, dtype=torch.float64) - 1)).to(DEVICE, torch.get_default_dtype())
    scale = torch.full_like(loc, DELTA / 40)
    full_table = GridGaussian(loc, scale).logits()  # the pre-issue-15 computation, 256-way
    for j in (k, (k + 1).clamp(max=K - 1), (k - 3).clamp(min=0)):
        j = j.to(loc.device)
        cdf = DiscretizedGaussian(loc, scale).log_prob(j)
        ref = full_table.gather(-1, j.unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(cdf.exp(), ref.exp(), rtol=0, atol=1e-15)
        assert torch.allclose(cdf[j == k], ref[j == k], rtol=0, atol=_tol())


def test_cdf_and_grid_pmfs_differ_at_vdm_scale():
    # why VDM keeps its own form: at γ_0 = −13.3 the two pmfs differ by ~0.03 nats a pixel
    grid = grid_values(K)
    scale = torch.full((K - 2,), math.exp(-13.3 / 2), dtype=torch.float64)
    loc = grid[1:-1] + scale  # one scale off the centre (typical z_0/α_0)
    k = torch.arange(1, K - 1)
    diff = GridGaussian(loc, scale).log_prob(k) - DiscretizedGaussian(loc, scale).log_prob(k)
    assert diff.min() > 0.01


@pytest.mark.parametrize("log_scale_sd", [0.5, 3.0])
def test_windowed_grid_gaussian_equals_the_full_softmax(log_scale_sd):
    loc, scale = _random_params(300, seed=4, log_scale_sd=log_scale_sd)
    d = GridGaussian(loc, scale)
    full = GridGaussian(loc.double(), scale.double()).logits()  # (n, K): the 256-way softmax in float64
    assert torch.allclose(_table(d).T.double(), full, rtol=_tol(), atol=10 * _tol())
    assert torch.allclose(d.mean.double(), (full.exp() * ALL.to(full)).sum(-1), rtol=_tol(), atol=10 * _tol())


def test_vdm_decoder_window_is_small_and_exact_at_gamma_0():
    lik = Discretized8bitLikelihood((3,))
    g0 = torch.tensor(-13.3)
    z0 = torch.tensor([[-0.99, 0.2, 0.999]]) * torch.sigmoid(-g0).sqrt()
    d = lik.from_z0(z0, g0).base_dist
    idx, _ = d._window()
    assert idx.shape[-1] == 7  # 2W + 1 with W = ⌈10 · 1.3e-3/Δ⌉ + 1 = 3
    x = torch.tensor([[0.0, 153.0, 255.0]])
    assert torch.allclose(d.log_prob(x), d.logits().gather(-1, x.long().unsqueeze(-1)).squeeze(-1), rtol=0, atol=_tol())


# ------------------------------------------------------------------------------ samples and means
@pytest.mark.parametrize("family", [DiscretizedGaussian, GridGaussian])
def test_samples_follow_the_pmf_and_mean_is_its_expectation(family):
    loc = torch.tensor([-1.2, -0.01, 0.5, 0.996]).to(DEVICE, torch.get_default_dtype())
    scale = torch.tensor([0.01, 0.005, 0.02, 0.004]).to(loc)
    d = family(loc, scale)
    n = 40_000
    s = d.sample((n,))
    assert s.shape == (n, 4) and bool((s == s.round()).all()) and s.min() >= 0 and s.max() <= K - 1
    p = _table(d).exp()  # (K, 4)
    freq = torch.stack([(s == k).to(p.dtype).mean(0) for k in range(K)])
    assert ((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt() + 1e-3).all()
    assert torch.allclose(d.mean, (p * ALL.to(p).unsqueeze(-1)).sum(0), rtol=_tol(), atol=_tol())


# ------------------------------------------------------------------------------ (d) gradients
@pytest.mark.parametrize("family", [DiscretizedGaussian, GridGaussian])
def test_gradients_are_finite_at_extreme_values(family):
    locs = [-60.0, -1.0, -0.999, 0.0, 0.999, 1.0, 60.0]
    scales = [1e-6, 1e-3, 1.0, 1e3, 1e6]
    loc = torch.tensor(locs).repeat_interleave(len(scales)).repeat(3).to(DEVICE, torch.get_default_dtype()).requires_grad_()
    scale = torch.tensor(scales).repeat(len(locs) * 3).to(loc).requires_grad_()
    k = torch.tensor([0.0, 255.0, 128.0]).repeat_interleave(len(locs) * len(scales)).to(loc)
    lp = family(loc, scale).log_prob(k)
    assert torch.isfinite(lp).all()
    gl, gs = torch.autograd.grad(lp.sum(), (loc, scale))
    assert torch.isfinite(gl).all() and torch.isfinite(gs).all()


def test_log_ndtr_and_its_gradient_are_accurate_everywhere():
    # torch's own log_ndtr gradient is off by 13% at −2000 in float32; log Φ and φ/Φ at 50 digits
    mpmath.mp.dps = 50
    x = torch.tensor([-1e5, -2000.0, -300.0, -21.0, -19.0, -12.5, -11.5, -3.0, -0.1, 0.0, 0.1, 4.0, 9.0, 40.0],
                     requires_grad=True)
    value = log_ndtr(x)
    grad, = torch.autograd.grad(value.sum(), x)
    ref = torch.tensor([float(mpmath.log(mpmath.ncdf(v))) for v in x.tolist()], dtype=torch.float64)
    ref_grad = torch.tensor([float(mpmath.npdf(v) / mpmath.ncdf(v)) for v in x.tolist()], dtype=torch.float64)
    assert torch.allclose(value.double(), ref, rtol=10 * _tol(), atol=1e-300)
    assert torch.allclose(grad.double(), ref_grad, rtol=10 * _tol(), atol=1e-300)
    # the edge bin k = 0 far below loc: the same φ/Φ through the distribution's analytic gradient
    loc = torch.tensor([3.0, 40.0], requires_grad=True)
    scale = torch.tensor([0.001, 0.02])
    lp_grad, = torch.autograd.grad(DiscretizedGaussian(loc, scale).log_prob(torch.zeros(2)).sum(), loc)
    b = [(-1 + DELTA - 3.0) / 0.001, (-1 + DELTA - 40.0) / 0.02]
    expected = torch.tensor([-float(mpmath.npdf(v) / mpmath.ncdf(v)) / s for v, s in zip(b, (0.001, 0.02))], dtype=torch.float64)
    assert torch.allclose(lp_grad.double(), expected, rtol=10 * _tol(), atol=0)


def test_log_prob_gradient_far_from_the_bin_matches_high_precision_differences():
    mpmath.mp.dps = 50
    cases = [(0, 3.0, 0.01), (255, -3.0, 0.001), (100, 40.0, 0.002), (100, 0.2, 1e-4), (100, -0.2, 0.5), (7, -0.9, 30.0),
             (200, 0.57, 0.004), (200, 0.6, 0.01)]
    loc = torch.tensor([c[1] for c in cases], requires_grad=True)
    scale = torch.tensor([c[2] for c in cases])
    k = torch.tensor([c[0] for c in cases])
    grad, = torch.autograd.grad(DiscretizedGaussian(loc, scale).log_prob(k).sum(), loc)
    ref = [float(mpmath.diff(lambda u: mpmath.mpf(_mp_log_mass_at(ki, u, si)), li)) for ki, li, si in cases]
    assert torch.allclose(grad.double(), torch.tensor(ref, dtype=torch.float64), rtol=10 * _tol(), atol=0)


def test_gradients_match_finite_differences():
    loc = torch.tensor([0.1, -0.7, 0.99, -3.0, 0.3], dtype=torch.float64, requires_grad=True)
    log_scale = torch.tensor([-4.0, -6.0, -2.0, 0.5, 3.0], dtype=torch.float64, requires_grad=True)
    k = torch.tensor([140, 37, 255, 0, 200])
    f = lambda a, b: DiscretizedGaussian(a, b.exp()).log_prob(k).sum()  # noqa: E731
    assert torch.autograd.gradcheck(f, (loc, log_scale))


# ------------------------------------------------------------------------------ the likelihood and models
@pytest.mark.parametrize("family", [DiscretizedGaussian, GridGaussian])
def test_values_off_the_grid_are_rejected_while_validating(family):
    d = family(torch.zeros(3), torch.ones(3), validate_args=True)
    assert torch.isfinite(d.log_prob(torch.tensor([0.0, 17.0, 255.0]))).all()
    for bad in (256.0, -1.0, 2.5):
        with pytest.raises(ValueError, match="support"):
            d.log_prob(torch.tensor([0.0, bad, 1.0]))


def test_decoder_forms_and_bad_arguments():
    out = torch.randn(2, 2 * 4)
    assert isinstance(Discretized8bitLikelihood((4,)).from_decoder(out).base_dist, DiscretizedGaussian)
    assert isinstance(Discretized8bitLikelihood((4,), decoder="grid").from_decoder(out).base_dist, GridGaussian)
    with pytest.raises(ValueError, match="decoder must be one of"):
        Discretized8bitLikelihood((4,), decoder="table")
    with pytest.raises(ValueError, match="levels must be an integer >= 2"):
        Discretized8bitLikelihood((4,), levels=1)


@pytest.mark.parametrize("build", [
    lambda: VAE((1, 4, 4), "8bit", latent_dim=2, hidden=8),
    lambda: BottomUpHVAE((1, 4, 4), "8bit", latent_dims=(3, 2), hidden=8),
    lambda: TopDownHVAE((1, 4, 4), "8bit", layers=2, latent_dim=2, hidden=8),
    lambda: VDM((1, 4, 4), "8bit", T=3, width=8, depth=1),
], ids=["vae", "hvae-bu", "hvae-td", "vdm"])
def test_every_model_trains_a_step_on_8bit_data(build):
    pyro.set_rng_seed(0)
    model = build().to(DEVICE)
    x = torch.randint(0, K, (5, 1, 4, 4)).to(DEVICE, torch.get_default_dtype())
    svi = SVI(model.model, model.guide, Adam({"lr": 1e-3}), Trace_ELBO())
    losses = [svi.step(x) for _ in range(2)]
    assert all(math.isfinite(v) for v in losses)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
