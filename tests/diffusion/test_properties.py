"""Property-based tests (hypothesis) of the Gaussian-diffusion maths and the parameterizations.

Levels γ_s < γ_t range over [−30, 30], including the extremes and gaps as small as 1e-3, in
float32 and float64: the stable forms (expm1, sigmoid, log-sigmoid) must keep values and
gradients finite and variances positive there.
"""

import itertools
import math

import pytest
import torch
from hypothesis import example, given, settings, strategies as st

from hlvm.diffusion import gaussian
from hlvm.diffusion.parameterization import TARGETS, convert

SETTINGS = settings(max_examples=50, deadline=None)
DTYPES = st.sampled_from([torch.float32, torch.float64])
GMIN, GMAX, MIN_GAP = -30.0, 30.0, 1e-3


@st.composite
def levels(draw):
    """(γ_s, γ_t) with −30 ≤ γ_s < γ_t ≤ 30 and γ_t − γ_s ≥ 1e-3; small gaps are drawn often."""
    gap = draw(st.one_of(st.floats(MIN_GAP, 1e-2), st.floats(MIN_GAP, GMAX - GMIN)))
    gamma_s = draw(st.floats(GMIN, GMAX - gap))
    return gamma_s, min(gamma_s + gap, GMAX)


def _as(v, dtype, grad=False):
    return torch.tensor(v, dtype=dtype, requires_grad=grad)


def _all_finite(*ts):
    return all(bool(torch.isfinite(t).all()) for t in ts)


@SETTINGS
@given(lv=levels(), dtype=DTYPES)
@example(lv=(-30.0, 30.0), dtype=torch.float32)
@example(lv=(-30.0, -30.0 + 1e-3), dtype=torch.float32)
@example(lv=(30.0 - 1e-3, 30.0), dtype=torch.float32)
@example(lv=(-1e-3 / 2, 1e-3 / 2), dtype=torch.float32)
@example(lv=(-30.0, 30.0), dtype=torch.float64)
def test_transition_quantities_finite_and_ordered(lv, dtype):
    gs, gt = _as(lv[0], dtype), _as(lv[1], dtype)
    assert bool(gs < gt)  # still ordered after rounding to dtype
    var_ts = gaussian.sigma_sq_ts(gs, gt)
    a_ts = gaussian.alpha_ts(gs, gt)
    c_z, c_x, var_q = gaussian.posterior_coefficients(gs, gt)
    assert _all_finite(var_ts, a_ts, c_z, c_x, var_q)
    assert var_ts > 0
    assert var_ts <= torch.sigmoid(gt)  # σ²_{t|s} ≤ σ_t²
    assert var_q > 0
    assert var_q <= torch.sigmoid(gs)  # σ_Q² ≤ σ_s²
    assert 0 < a_ts <= 1  # α_t ≤ α_s
    assert c_z > 0 and c_x > 0
    # closed forms in double precision at the levels as rounded to dtype, as a reference
    # (σ_Q² = σ_s² (1 − SNR(t)/SNR(s)), σ²_{t|s} = σ_t² (1 − SNR(t)/SNR(s)))
    s, t = float(gs), float(gt)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    assert math.isclose(var_q.item(), 1 / (1 + math.exp(-s)) * -math.expm1(s - t), rel_tol=rtol)
    assert math.isclose(var_ts.item(), 1 / (1 + math.exp(-t)) * -math.expm1(s - t), rel_tol=rtol)


@SETTINGS
@given(lv=levels(), dtype=DTYPES, seed=st.integers(0, 2**16))
@example(lv=(-30.0, 30.0), dtype=torch.float32, seed=0)
@example(lv=(-30.0, -30.0 + 1e-3), dtype=torch.float32, seed=0)
@example(lv=(30.0 - 1e-3, 30.0), dtype=torch.float32, seed=0)
def test_kls_finite_and_nonnegative(lv, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, generator=g).to(dtype)
    x_hat = torch.randn(3, 4, generator=g).to(dtype)
    gs, gt = _as(lv[0], dtype), _as(lv[1], dtype)
    kl = gaussian.diffusion_kl(x, x_hat, gs, gt)
    prior = gaussian.prior_kl(x, gt)
    assert kl.shape == (3,) and prior.shape == (3,)
    assert _all_finite(kl, prior)
    assert (kl >= 0).all() and (prior >= 0).all()
    assert (gaussian.diffusion_kl(x, x, gs, gt) == 0).all()
    # against the KL of the two Gaussians as torch.distributions computes it, in float64
    # (its naive form loses absolute precision ~1e-16·SNR(s), hence the atol)
    gs64, gt64 = float(gs), float(gt)
    x64, xh64 = x.double(), x_hat.double()
    c_z, c_x, var_q = gaussian.posterior_coefficients(torch.tensor(gs64, dtype=torch.float64),
                                                      torch.tensor(gt64, dtype=torch.float64))
    z_t = torch.zeros_like(x64)  # the KL does not depend on z_t
    q = torch.distributions.Normal(c_z * z_t + c_x * x64, var_q.sqrt())
    p = torch.distributions.Normal(c_z * z_t + c_x * xh64, var_q.sqrt())
    ref = torch.distributions.kl_divergence(q, p).sum(-1)
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(kl.double(), ref, rtol=tol, atol=1e-12)
    a2, s2 = 1 / (1 + math.exp(gt64)), 1 / (1 + math.exp(-gt64))
    ref_prior = torch.distributions.kl_divergence(
        torch.distributions.Normal(math.sqrt(a2) * x64, math.sqrt(s2)), torch.distributions.Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(prior.double(), ref_prior, rtol=tol, atol=1e-9)


FUNCTIONS = {
    "sigma_sq_ts": lambda gs, gt, x, xh: gaussian.sigma_sq_ts(gs, gt),
    "alpha_ts": lambda gs, gt, x, xh: gaussian.alpha_ts(gs, gt),
    "posterior_coefficients": lambda gs, gt, x, xh: torch.stack(gaussian.posterior_coefficients(gs, gt)),
    "diffusion_kl": lambda gs, gt, x, xh: gaussian.diffusion_kl(x, xh, gs, gt),
    "prior_kl": lambda gs, gt, x, xh: gaussian.prior_kl(x, gt),
    "q_zs_given_zt_x": lambda gs, gt, x, xh: torch.stack(
        [(d := gaussian.q_zs_given_zt_x(xh, x, gs, gt)).loc, d.scale]),
}


@SETTINGS
@given(lv=levels(), dtype=DTYPES, name=st.sampled_from(sorted(FUNCTIONS)))
@example(lv=(-30.0, 30.0), dtype=torch.float32, name="posterior_coefficients")
@example(lv=(-30.0, 30.0), dtype=torch.float32, name="diffusion_kl")
@example(lv=(-30.0, -30.0 + 1e-3), dtype=torch.float32, name="sigma_sq_ts")
@example(lv=(30.0 - 1e-3, 30.0), dtype=torch.float32, name="posterior_coefficients")
@example(lv=(30.0 - 1e-3, 30.0), dtype=torch.float32, name="q_zs_given_zt_x")
@example(lv=(-30.0, -30.0 + 1e-3), dtype=torch.float32, name="q_zs_given_zt_x")
def test_gradients_finite(lv, dtype, name):
    gs, gt = _as(lv[0], dtype, grad=True), _as(lv[1], dtype, grad=True)
    x = torch.linspace(-2, 2, 6, dtype=dtype).reshape(2, 3)
    x_hat = torch.linspace(1, -1, 6, dtype=dtype).reshape(2, 3)
    # sum after weighting by random signs so that no gradient cancels by symmetry
    out = FUNCTIONS[name](gs, gt, x, x_hat)
    w = torch.cos(torch.arange(out.numel(), dtype=dtype)).reshape(out.shape)
    grads = torch.autograd.grad((w * out).sum(), [gs, gt], allow_unused=True)
    used = [gr for gr in grads if gr is not None]
    assert used and _all_finite(*used)
    if name != "prior_kl":  # prior_kl depends on γ_1 only
        assert all(gr is not None for gr in grads)


@SETTINGS
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_posterior_shapes_and_values_per_example_levels(shape, seed):
    g = torch.Generator().manual_seed(seed)
    dtype = torch.float64
    z_t = torch.randn(shape, generator=g, dtype=dtype)
    x = torch.randn(shape, generator=g, dtype=dtype)
    b = shape[0]
    gamma_s = torch.rand(b, generator=g, dtype=dtype) * 20 - 12
    gamma_t = gamma_s + 0.01 + 5 * torch.rand(b, generator=g, dtype=dtype)
    q = gaussian.q_zs_given_zt_x(z_t, x, gamma_s, gamma_t)
    assert q.loc.shape == z_t.shape and q.scale.shape == z_t.shape
    # each example i uses its own (γ_s[i], γ_t[i]): compare with the Table-1 form, example by example
    for i in range(b):
        gs, gt = float(gamma_s[i]), float(gamma_t[i])
        a_s, a_t = math.sqrt(1 / (1 + math.exp(gs))), math.sqrt(1 / (1 + math.exp(gt)))
        s2_s, s2_t = 1 / (1 + math.exp(-gs)), 1 / (1 + math.exp(-gt))
        a_ts = a_t / a_s
        s2_ts = s2_t - a_ts**2 * s2_s
        mu = (a_ts * s2_s / s2_t) * z_t[i] + (a_s * s2_ts / s2_t) * x[i]
        torch.testing.assert_close(q.loc[i], mu, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(q.scale[i], torch.full_like(mu, math.sqrt(s2_ts * s2_s / s2_t)),
                                   rtol=1e-9, atol=0)


@SETTINGS
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
    gamma_lo=st.floats(-10, 10),
    dgamma_lo=st.floats(0.1, 50),
)
@example(shape=[2, 3], seed=0, gamma_lo=10.0, dgamma_lo=0.1)
@example(shape=[2, 3], seed=0, gamma_lo=-10.0, dgamma_lo=50.0)
@example(shape=[1], seed=0, gamma_lo=10.0, dgamma_lo=0.1)
@pytest.mark.parametrize("src, dst", list(itertools.product(TARGETS, TARGETS)))
def test_convert_round_trip(src, dst, shape, seed, gamma_lo, dgamma_lo):
    g = torch.Generator().manual_seed(seed)
    dtype = torch.float64
    z_t = torch.randn(shape, generator=g, dtype=dtype)
    pred = torch.randn(shape, generator=g, dtype=dtype)
    b = shape[0]
    # per-example levels in [−10, 10] and γ' in [0.1, 50], anchored at the drawn extremes
    gamma = (gamma_lo + (10 - gamma_lo) * torch.rand(b, generator=g, dtype=dtype)).clamp(-10, 10)
    gamma[0] = gamma_lo
    dgamma = dgamma_lo + (50 - dgamma_lo) * torch.rand(b, generator=g, dtype=dtype)
    dgamma[0] = dgamma_lo
    there = convert(pred, src, dst, z_t, gamma, dgamma)
    assert there.shape == z_t.shape
    back = convert(there, dst, src, z_t, gamma, dgamma)
    torch.testing.assert_close(back, pred, rtol=1e-10, atol=1e-10)
    # going through x gives the same dst (the conversions are consistent)
    via_x = convert(convert(pred, src, "x", z_t, gamma, dgamma), "x", dst, z_t, gamma, dgamma)
    scale = 1 + there.abs()
    assert bool(((via_x - there).abs() <= 1e-10 * scale).all())


@st.composite
def safe_levels(draw):
    """γ_s < γ_t in (−20, 20) with γ_t − γ_s > 1e-2: where the naive Table-1 form is accurate."""
    gap = draw(st.one_of(st.floats(1.0001e-2, 1e-1), st.floats(1.0001e-2, 39.98)))
    gamma_s = draw(st.floats(-19.99, 19.99 - gap))
    return gamma_s, gamma_s + gap


@SETTINGS
@given(lv=safe_levels())
@example(lv=(-19.99, -19.99 + 1.0001e-2))
@example(lv=(19.97, 19.97 + 1.0001e-2))
@example(lv=(-19.99, 19.99))
def test_sigma_sq_ts_identity(lv):
    gamma_s, gamma_t = lv
    gs, gt = torch.tensor(gamma_s, dtype=torch.float64), torch.tensor(gamma_t, dtype=torch.float64)
    s2_s, s2_t = torch.sigmoid(gs), torch.sigmoid(gt)
    a2_ts = torch.sigmoid(-gt) / torch.sigmoid(-gs)
    naive = s2_t - a2_ts * s2_s  # Table 1: σ²_{t|s} = σ_t² − α²_{t|s} σ_s²
    stable = gaussian.sigma_sq_ts(gs, gt)
    assert math.isclose(stable.item(), naive.item(), rel_tol=1e-9)
    # and α_{t|s}² agrees with the ratio of α²'s
    assert math.isclose(gaussian.alpha_ts(gs, gt).item() ** 2, a2_ts.item(), rel_tol=1e-12)
