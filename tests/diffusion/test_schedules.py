"""Noise schedules γ(t) = −log SNR(t): monotonicity, endpoints, VP identities, γ'(t) against
finite differences, the monotone network's positivity, and DDPM's ᾱ reproduced independently."""

import math

import pytest
import torch

from hlvm.diffusion.schedules import (
    CosineSchedule,
    DDPMSchedule,
    DensitySchedule,
    LearnedLinearSchedule,
    LinearSchedule,
    MonotoneNetSchedule,
    NoiseSchedule,
    make_schedule,
)

F64 = torch.float64
GMIN, GMAX = -13.3, 5.0


@pytest.fixture(autouse=True)
def _float64_schedules():
    """These checks are float64 ones (1e-10 endpoints, h = 1e-6 differences) whatever HLVM_DTYPE
    says: schedules are built with float64 buffers and parameters from the start."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    yield
    torch.set_default_dtype(old)

# name -> factory(gamma_min, gamma_max); DDPM schedules ignore the endpoints
CONFIGURABLE = {
    "linear": lambda a, b: LinearSchedule(a, b),
    "cosine": lambda a, b: CosineSchedule(a, b),
    "learned-linear": lambda a, b: LearnedLinearSchedule(a, b),
    "net": lambda a, b: MonotoneNetSchedule(a, b, hidden=64),
    "net-learned-endpoints": lambda a, b: MonotoneNetSchedule(a, b, hidden=64, learn_endpoints=True),
    "density": lambda a, b: _perturbed(DensitySchedule(a, b, bins=16)),
    "density-learned-endpoints": lambda a, b: _perturbed(DensitySchedule(a, b, bins=16, learn_endpoints=True)),
}


def _perturbed(sched):
    """A DensitySchedule away from its (linear) start, so that its shape matters."""
    with torch.no_grad():
        sched.logits.add_(torch.randn_like(sched.logits))
    return sched
DDPM = {
    "ddpm-linear": lambda: DDPMSchedule(1000, "linear"),
    "ddpm-cosine": lambda: DDPMSchedule(1000, "cosine"),
}
ALL = sorted(CONFIGURABLE) + sorted(DDPM)


def build(name, gamma_min=GMIN, gamma_max=GMAX):
    torch.manual_seed(0)
    if name in DDPM:
        return DDPM[name]().to(F64)
    return CONFIGURABLE[name](gamma_min, gamma_max).to(F64)


def grid(n=4001):
    return torch.linspace(0.0, 1.0, n, dtype=F64)


# --- monotonicity and endpoints -------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_gamma_strictly_increasing(name):
    sched = build(name)
    with torch.no_grad():
        g = sched(grid())
    assert torch.isfinite(g).all()
    assert (g.diff() > 0).all(), f"γ not strictly increasing; min increment {g.diff().min().item()}"


ENDPOINTS = [(GMIN, GMAX), (-10.0, 10.0), (-5.0, 1.0), (-1.0, 1.0), (-30.0, 60.0)]


# (the cosine schedule's u = (2/π) atan(exp(γ/2)) lies within 1e-13 of 1 for γ_max = 60, where
# tan near π/2 is ill-conditioned in float64; it is checked on the practical range only)
@pytest.mark.parametrize("name, gamma_min, gamma_max", [
    (n, a, b) for n in sorted(CONFIGURABLE) for a, b in ENDPOINTS if not (n == "cosine" and b > 15)])
def test_endpoints_exact(name, gamma_min, gamma_max):
    sched = build(name, gamma_min, gamma_max)
    with torch.no_grad():
        g = sched(torch.tensor([0.0, 1.0], dtype=F64))
        assert abs(g[0].item() - gamma_min) < 1e-10
        assert abs(g[1].item() - gamma_max) < 1e-10
        # the gamma_min / gamma_max properties agree with the forward pass
        assert abs(sched.gamma_min.item() - gamma_min) < 1e-10
        assert abs(sched.gamma_max.item() - gamma_max) < 1e-10


# F.softplus's default threshold=20 would make softplus(x) = x above 20, so a gap in (20, ~23)
# would miss γ_max by exp(−gap) ≈ 1e-9; the schedule uses an exact softplus.
@pytest.mark.parametrize("name", ["learned-linear", "net-learned-endpoints", "density-learned-endpoints"])
def test_learned_endpoint_gap_just_above_softplus_threshold(name):
    sched = build(name, -15.0, 6.0)  # gap 21
    with torch.no_grad():
        assert abs(sched(torch.tensor(1.0, dtype=F64)).item() - 6.0) < 1e-10


def test_cosine_endpoints_precise_at_large_gamma():
    sched = build("cosine", -30.0, 40.0)
    with torch.no_grad():
        g = sched(torch.tensor([0.0, 1.0], dtype=F64))
    assert abs(g[0].item() + 30.0) < 1e-9 and abs(g[1].item() - 40.0) < 1e-9


# --- variance-preserving identities ---------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_vp_identities(name):
    sched = build(name)
    t = grid(501)
    with torch.no_grad():
        g = sched(t)
        a, s, snr = sched.alpha(t), sched.sigma(t), sched.snr(t)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(t), rtol=0, atol=1e-12)
    torch.testing.assert_close(snr, torch.exp(-g), rtol=1e-12, atol=0)
    torch.testing.assert_close(snr, a**2 / s**2, rtol=1e-10, atol=0)
    # σ² = sigmoid(γ) in closed form
    torch.testing.assert_close(s**2, 1 / (1 + torch.exp(-g)), rtol=1e-12, atol=0)


# --- γ'(t) ----------------------------------------------------------------------------------
def fd_points(name):
    if name in DDPM:
        n = 1000
        k = torch.tensor([0, 1, 7, 100, 333, 500, 777, 990, 998], dtype=F64)
        return (k + 0.5) / (n - 1)  # mid-way between knots t = k/(N−1)
    return torch.linspace(0.02, 0.98, 25, dtype=F64)


@pytest.mark.parametrize("name", ALL)
def test_dgamma_dt_matches_central_differences(name):
    sched = build(name)
    t = fd_points(name)
    h = 1e-6
    with torch.no_grad():
        fd = (sched(t + h) - sched(t - h)) / (2 * h)
    dg = sched.dgamma_dt(t).detach()
    assert dg.shape == t.shape
    torch.testing.assert_close(dg, fd, rtol=1e-6, atol=1e-6)
    assert (dg > 0).all()


def test_dgamma_dt_closed_forms():
    t = torch.linspace(0.0, 1.0, 11, dtype=F64)
    lin = build("linear")
    torch.testing.assert_close(lin.dgamma_dt(t), torch.full_like(t, GMAX - GMIN), rtol=1e-14, atol=0)
    cos = build("cosine")
    # γ = 2 log tan(πu/2), u linear in t: γ' = 2π/sin(πu) · du/dt
    u0 = 2 / math.pi * math.atan(math.exp(GMIN / 2))
    u1 = 2 / math.pi * math.atan(math.exp(GMAX / 2))
    u = u0 + (u1 - u0) * t
    torch.testing.assert_close(cos.dgamma_dt(t), 2 * math.pi / torch.sin(math.pi * u) * (u1 - u0),
                               rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["learned-linear", "net", "net-learned-endpoints", "density", "density-learned-endpoints"])
def test_dgamma_dt_carries_gradients_to_parameters(name):
    sched = build(name)
    if name.startswith("net"):
        # move away from the (nearly linear) initialisation so the shape matters
        with torch.no_grad():
            for p in sched.parameters():
                p.add_(torch.randn_like(p))
    t = torch.linspace(0.05, 0.95, 7, dtype=F64)
    params = [p for p in sched.parameters()]
    grads = torch.autograd.grad(sched.dgamma_dt(t).sum(), params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    assert all(torch.isfinite(g).all() for g in grads)
    assert any((g != 0).any() for g in grads)
    # and the gradient is the right one: directional finite difference in parameter space
    direction = [torch.randn_like(p) for p in params]
    analytic = sum((g * d).sum() for g, d in zip(grads, direction))
    eps = 1e-6

    def total(sign):
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(sign * eps * d)
        out = sched.dgamma_dt(t).sum().item()
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.sub_(sign * eps * d)
        return out

    fd = (total(1) - total(-1)) / (2 * eps)
    assert abs(fd - analytic.item()) <= 1e-5 * max(1.0, abs(fd))


def test_learned_linear_dgamma_gradient_closed_form():
    sched = build("learned-linear")
    t = torch.linspace(0.1, 0.9, 5, dtype=F64)
    (g_raw,) = torch.autograd.grad(sched.dgamma_dt(t).sum(), [sched.raw_gap])
    # d/dr Σ softplus(r) = n · sigmoid(r)
    torch.testing.assert_close(g_raw, 5 * torch.sigmoid(sched.raw_gap.detach()), rtol=1e-12, atol=0)


# --- the monotone network --------------------------------------------------------------------
@pytest.mark.parametrize("learn_endpoints", [False, True])
def test_monotone_net_starts_linear(learn_endpoints):
    torch.manual_seed(1)
    sched = MonotoneNetSchedule(GMIN, GMAX, learn_endpoints=learn_endpoints).to(F64)  # default width
    t = grid(1001)
    with torch.no_grad():
        dev = (sched(t) - (GMIN + (GMAX - GMIN) * t)).abs().max().item()
    assert dev < 1e-2


@pytest.mark.parametrize("learn_endpoints", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("boost", [False, True])
def test_monotone_net_stays_monotone_after_random_perturbation(learn_endpoints, seed, boost):
    torch.manual_seed(seed)
    sched = MonotoneNetSchedule(GMIN, GMAX, hidden=128, learn_endpoints=learn_endpoints).to(F64)
    t = grid()
    with torch.no_grad():
        g_init = sched(t)
        for p in sched.parameters():
            p.add_(torch.randn_like(p))
        if boost:  # undo the tiny initialisation of the non-linear branch, and sharpen it
            sched.l3.raw_weight.add_(12.0)
            sched.l2.raw_weight.add_(3.0)
            sched.l2.bias.mul_(5.0)
        g = sched(t)
    assert torch.isfinite(g).all()
    assert (g - g_init).abs().max() > 0  # the perturbation did change γ
    assert (g.diff() > 0).all()
    if boost:  # the non-linear branch now dominates: γ is visibly non-linear in t
        g0, g1 = g[0], g[-1]
        assert (g - (g0 + (g1 - g0) * t)).abs().max() > 0.1
    if not learn_endpoints:  # endpoints stay pinned
        assert abs(g[0].item() - GMIN) < 1e-10 and abs(g[-1].item() - GMAX) < 1e-10
    else:  # endpoints follow the learned linear schedule
        ends = sched.endpoints(torch.tensor([0.0, 1.0], dtype=F64)).detach()
        torch.testing.assert_close(g[[0, -1]], ends, rtol=0, atol=1e-10)


# --- DDPM β-schedules --------------------------------------------------------------------------
def _alpha_bar_from_betas(betas):
    out, prod = [], 1.0
    for b in betas:
        prod *= 1.0 - b
        out.append(prod)
    return torch.tensor(out, dtype=F64)


def _linear_betas(n, lo=1e-4, hi=0.02):
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def _cosine_betas(n, s=0.008):
    def f(k):
        return math.cos((k / n + s) / (1 + s) * math.pi / 2) ** 2
    return [min(1 - f(k) / f(k - 1), 0.999) for k in range(1, n + 1)]


@pytest.mark.parametrize("kind, betas_fn", [("linear", _linear_betas), ("cosine", _cosine_betas)])
def test_ddpm_reproduces_alpha_bar(kind, betas_fn):
    n = 1000
    abar = _alpha_bar_from_betas(betas_fn(n))
    # the same with torch.cumprod, as a check of the python loop
    torch.testing.assert_close(abar, torch.cumprod(1 - torch.tensor(betas_fn(n), dtype=F64), 0),
                               rtol=1e-12, atol=0)
    sched = DDPMSchedule(n, kind)
    assert sched.discrete_steps == n - 1
    t_n = torch.arange(n, dtype=F64) / (n - 1)  # t_n = (n − 1)/(N − 1) for n = 1..N
    with torch.no_grad():
        a2 = sched.alpha(t_n) ** 2
        s2 = sched.sigma(t_n) ** 2
    torch.testing.assert_close(a2, abar, rtol=1e-10, atol=0)
    torch.testing.assert_close(s2, 1 - abar, rtol=1e-10, atol=0)


def test_ddpm_interpolates_log_alpha_bar_linearly():
    n = 1000
    sched = DDPMSchedule(n, "linear")
    log_abar = torch.log(_alpha_bar_from_betas(_linear_betas(n)))
    k, w = 417, 0.3
    t = torch.tensor((k + w) / (n - 1), dtype=F64)
    la = (1 - w) * log_abar[k] + w * log_abar[k + 1]
    with torch.no_grad():
        torch.testing.assert_close(sched(t), torch.log(1 - la.exp()) - la, rtol=1e-10, atol=0)


def test_ddpm_small_num_betas():
    sched = DDPMSchedule(2, "linear", beta_start=0.1, beta_end=0.5)
    with torch.no_grad():
        a2 = sched.alpha(torch.tensor([0.0, 1.0], dtype=F64)) ** 2
    torch.testing.assert_close(a2, torch.tensor([0.9, 0.9 * 0.5], dtype=F64), rtol=1e-12, atol=0)


# --- validation --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_time_outside_unit_interval_raises(name, bad):
    sched = build(name)
    t = torch.tensor([0.5, bad], dtype=F64)
    for fn in (sched, sched.alpha, sched.sigma, sched.snr, sched.dgamma_dt):
        with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
            fn(t)
    with pytest.raises(ValueError, match="t must lie"):
        sched(bad)


@pytest.mark.parametrize("name", sorted(CONFIGURABLE))
@pytest.mark.parametrize("gamma_min, gamma_max", [(5.0, -13.3), (1.0, 1.0)])
def test_gamma_min_not_below_gamma_max_raises(name, gamma_min, gamma_max):
    with pytest.raises(ValueError, match="gamma_min"):
        CONFIGURABLE[name](gamma_min, gamma_max)


@pytest.mark.parametrize("name", sorted(CONFIGURABLE))
def test_non_finite_endpoints_raise(name):
    with pytest.raises(ValueError, match="gamma_min and gamma_max must be finite"):
        CONFIGURABLE[name](-math.inf, 5.0)


def test_make_schedule_unknown_name():
    with pytest.raises(ValueError, match="unknown schedule 'quadratic'"):
        make_schedule("quadratic")


def test_ddpm_validation():
    with pytest.raises(ValueError, match="unknown DDPM schedule kind 'sigmoid'"):
        DDPMSchedule(10, "sigmoid")
    with pytest.raises(ValueError, match="num_betas"):
        DDPMSchedule(1)
    with pytest.raises(ValueError, match="beta_start"):
        DDPMSchedule(10, "linear", beta_start=0.02, beta_end=1e-4)


def test_monotone_net_hidden_validation():
    with pytest.raises(ValueError, match="hidden"):
        MonotoneNetSchedule(hidden=0)


# --- make_schedule -------------------------------------------------------------------------------
@pytest.mark.parametrize("name, cls, kwargs", [
    ("linear", LinearSchedule, {}),
    ("cosine", CosineSchedule, {}),
    ("learned-linear", LearnedLinearSchedule, {}),
    ("learned-net", MonotoneNetSchedule, {"hidden": 16}),
    ("learned-net", MonotoneNetSchedule, {"hidden": 16, "learn_endpoints": True}),
    ("learned-density", DensitySchedule, {"bins": 8}),
    ("learned-density", DensitySchedule, {"bins": 8, "base": "cosine"}),
])
def test_make_schedule_builds_configurable(name, cls, kwargs):
    sched = make_schedule(name, -7.0, 3.0, **kwargs).to(F64)
    assert type(sched) is cls and isinstance(sched, NoiseSchedule)
    with torch.no_grad():
        g = sched(torch.tensor([0.0, 0.5, 1.0], dtype=F64))
    torch.testing.assert_close(g[[0, 2]], torch.tensor([-7.0, 3.0], dtype=F64), rtol=0, atol=1e-10)
    if cls in (LinearSchedule, LearnedLinearSchedule) or (cls is DensitySchedule and "base" not in kwargs):
        assert abs(g[1].item() - (-2.0)) < 1e-10
    if cls is DensitySchedule:
        assert sched.bins == 8
    if cls is MonotoneNetSchedule:
        assert sched.learn_endpoints == kwargs.get("learn_endpoints", False)
        assert sched.l2.raw_weight.shape == (16, 1)
    if cls is CosineSchedule:  # midpoint of u: closed form
        u = 0.5 * (2 / math.pi) * (math.atan(math.exp(-3.5)) + math.atan(math.exp(1.5)))
        assert abs(g[1].item() - 2 * math.log(math.tan(math.pi * u / 2))) < 1e-12


@pytest.mark.parametrize("name, kind, betas_fn", [("ddpm-linear", "linear", _linear_betas),
                                                  ("ddpm-cosine", "cosine", _cosine_betas)])
def test_make_schedule_builds_ddpm(name, kind, betas_fn):
    sched = make_schedule(name, num_betas=50)
    assert isinstance(sched, DDPMSchedule) and sched.kind == kind and sched.discrete_steps == 49
    abar = _alpha_bar_from_betas(betas_fn(50))
    with torch.no_grad():
        a2 = sched.alpha(torch.arange(50, dtype=F64) / 49) ** 2
    torch.testing.assert_close(a2, abar, rtol=1e-10, atol=0)


def test_monotone_net_on_the_cosine_shape_starts_as_cosine():
    """``base="cosine"``: the network acts on the cosine schedule's normalised γ, so the learned
    schedule starts as cosine (to ~1e-3), keeps the endpoints exactly and stays monotone."""
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    m = MonotoneNetSchedule(-13.3, 5.0, base="cosine").double()
    c = CosineSchedule(-13.3, 5.0).double()
    g = m.gamma(t)
    assert (g - c.gamma(t)).abs().max() < 1e-3
    assert g[0].item() == pytest.approx(-13.3, abs=1e-9) and g[-1].item() == pytest.approx(5.0, abs=1e-9)
    with torch.no_grad():  # any positive-weight network keeps it monotone
        m.l3.raw_weight.normal_(0.0, 2.0)
    assert bool((m.gamma(t).diff() > 0).all())
    with pytest.raises(ValueError, match="unknown base"):
        MonotoneNetSchedule(base="sigmoid")


# --- the learned density of noise levels -----------------------------------------------------------
def test_density_schedule_starts_as_its_base():
    """From "linear" it *is* linear (constant density); from "cosine" it is the cosine schedule
    with its density interpolated linearly between 64 knots: γ within 0.01 of cosine, γ' within 1%."""
    t = torch.linspace(0, 1, 2001, dtype=F64)
    lin = DensitySchedule(GMIN, GMAX).double()
    torch.testing.assert_close(lin.gamma(t), GMIN + (GMAX - GMIN) * t, rtol=0, atol=1e-12)
    torch.testing.assert_close(lin.dgamma_dt(t), torch.full_like(t, GMAX - GMIN), rtol=1e-12, atol=0)
    cos, ref = DensitySchedule(GMIN, GMAX, base="cosine").double(), CosineSchedule(GMIN, GMAX)
    assert (cos.gamma(t) - ref.gamma(t)).abs().max() < 1e-2
    assert ((cos.dgamma_dt(t) / ref.dgamma_dt(t)) - 1).abs().max() < 1e-2


def test_density_schedule_is_the_inverse_cdf_of_its_density():
    """t(γ) = ∫ q: at each knot γ_k the schedule's time is the CDF there, and γ'(t) = 1/q(γ(t))
    (frac units), with q linear between knots: checked against an independent quadrature."""
    sched = build("density")
    q, cdf = sched.density(F64)
    with torch.no_grad():
        g_at_cdf = sched.gamma(cdf)
    torch.testing.assert_close(g_at_cdf, torch.linspace(GMIN, GMAX, sched.bins + 1, dtype=F64), rtol=0, atol=1e-9)
    # the CDF by an independent fine trapezoid of q interpolated between knots
    f = torch.linspace(0, 1, 16 * 400 + 1, dtype=F64)
    q_f = torch.from_numpy(__import__("numpy").interp(f.numpy(), torch.linspace(0, 1, 17, dtype=F64).numpy(), q.detach().numpy()))
    cdf_f = torch.cat([torch.zeros(1, dtype=F64), torch.cumulative_trapezoid(q_f, f)])
    torch.testing.assert_close(cdf_f[::400], cdf.detach(), rtol=0, atol=1e-6)
    assert abs(cdf_f[-1].item() - 1.0) < 1e-6
    with torch.no_grad():  # γ' = gap / q(frac) at a few times
        t = torch.tensor([0.03, 0.31, 0.5, 0.77, 0.99], dtype=F64)
        frac = (sched.gamma(t) - GMIN) / (GMAX - GMIN)
        q_t = torch.from_numpy(__import__("numpy").interp(frac.numpy(), torch.linspace(0, 1, 17, dtype=F64).numpy(), q.detach().numpy()))
        torch.testing.assert_close(sched.dgamma_dt(t), (GMAX - GMIN) / q_t, rtol=1e-9, atol=0)


def test_density_schedule_validation():
    with pytest.raises(ValueError, match="bins"):
        DensitySchedule(bins=0)
    with pytest.raises(ValueError, match="unknown base"):
        DensitySchedule(base="sigmoid")
    with pytest.raises(ValueError, match="spans"):
        DensitySchedule(-10.0, 5.0, base=CosineSchedule(-13.3, 5.0))
