"""Learned noise schedules: γ(t) with trainable endpoints and/or interior.

In continuous time the ELBO depends on a schedule only through its endpoints γ(0), γ(1); the
interior sets the *variance* of the Monte Carlo loss (Kingma et al. 2021, §5, App. I.1).  A
schedule with a learned interior is an :class:`InteriorSchedule`: γ = γ_min + (γ_max − γ_min) ·
frac(t), and its :meth:`~InteriorSchedule.parts` gives the endpoints and the interior apart, so
that an objective can train them differently (``DiffusionELBO(schedule_objective="variance")``).

* :class:`LearnedLinearSchedule` — linear γ with learnable endpoints (no interior: frac(t) = t).
* :class:`MonotoneNetSchedule` — VDM's monotone network with positive weights (Appendix H.1).
* :class:`DensitySchedule` — γ(t) the inverse CDF of a learned piecewise-linear density of noise
  levels: the schedule *is* the importance distribution of the loss over γ.

References:
    Kingma, Salimans, Poole, Ho. *Variational Diffusion Models*. NeurIPS 2021.
    Nichol, Dhariwal. *Improved Denoising Diffusion Probabilistic Models*. ICML 2021 (§3.3).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .fixed import CosineSchedule, LinearSchedule, NoiseSchedule, _check_endpoints, check_time

__all__ = ["LearnedLinearSchedule", "InteriorSchedule", "MonotoneNetSchedule", "DensitySchedule"]


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + eˣ) without F.softplus's linear cut-off at x > 20 (exact inverse of the init)."""
    return torch.logaddexp(x, torch.zeros_like(x))


class LearnedLinearSchedule(NoiseSchedule):
    """Linear schedule with learnable endpoints (VDM, §4: only γ_min, γ_max affect L_∞).

    The gap γ_max − γ_min is parameterized through softplus so it stays positive.  Its interior
    frac(t) = t has no parameters, so it is not an :class:`InteriorSchedule`: the variance
    objective, which trains only an interior, has nothing to train here.
    """

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0):
        super().__init__()
        _check_endpoints(gamma_min, gamma_max)
        gap = gamma_max - gamma_min
        self.g0 = nn.Parameter(torch.tensor(float(gamma_min)))
        # inverse softplus of the gap
        self.raw_gap = nn.Parameter(torch.tensor(gap + math.log(-math.expm1(-gap))))

    @property
    def gap(self) -> torch.Tensor:
        """γ_max − γ_min (> 0)."""
        return _softplus(self.raw_gap)

    def gamma(self, t):
        return self.g0 + self.gap * t

    def dgamma_dt(self, t):
        t = check_time(t)
        return self.gap.expand_as(t).to(t.dtype)


class _PositiveLinear(nn.Module):
    """A linear layer whose weights are softplus-positive, so it is monotone increasing."""

    def __init__(self, d_in: int, d_out: int, init_scale: float = 0.0):
        super().__init__()
        self.raw_weight = nn.Parameter(torch.randn(d_out, d_in) * 0.1 + init_scale)
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, h):
        return F.linear(h, F.softplus(self.raw_weight), self.bias)


class InteriorSchedule(NoiseSchedule):
    """γ = γ_min + (γ_max − γ_min) · frac(t) with a learned interior frac and fixed or learned endpoints.

    Subclasses implement :meth:`parts`.  Being one is what makes a schedule eligible for the
    variance objective (:func:`hlvm.diffusion.bound.variance_gradient`).
    """

    def _init_endpoints(self, gamma_min: float, gamma_max: float, learn_endpoints: bool) -> None:
        self.learn_endpoints = learn_endpoints
        if learn_endpoints:
            self.endpoints = LearnedLinearSchedule(gamma_min, gamma_max)
        else:
            self.register_buffer("g0", torch.tensor(float(gamma_min)))
            self.register_buffer("g1", torch.tensor(float(gamma_max)))

    def _endpoints(self):
        """(γ_min, γ_max − γ_min)."""
        if self.learn_endpoints:
            return self.endpoints.g0, self.endpoints.gap
        return self.g0, self.g1 - self.g0

    def parts(self, t):  # pragma: no cover - abstract
        """(γ_min, γ_max − γ_min, frac(t), frac'(t)) with γ = γ_min + gap · frac: the endpoints and the
        interior apart, for objectives that train them differently (VDM App. I.1)."""
        raise NotImplementedError


class MonotoneNetSchedule(InteriorSchedule):
    """VDM's learned monotone γ: a positive-weight network, rescaled to fixed or learned endpoints.

    γ̃(t) = l₁(t) + l₃(φ(l₂(l₁(t)))) with φ = sigmoid and every weight positive, so γ̃ is monotone
    increasing (Kingma et al. 2021, Appendix H.1).  It is then normalised

        γ(t) = γ_min + (γ_max − γ_min) (γ̃(t) − γ̃(0)) / (γ̃(1) − γ̃(0)),

    which pins the endpoints (held fixed, or learned when ``learn_endpoints=True``).  The
    non-linear branch is initialised with tiny weights, so γ starts out linear (to ~1e-4) — or, with
    ``base="cosine"`` (or any schedule with the same endpoints), the network acts on that
    schedule's normalised γ instead of t (a composition of monotone maps), so γ starts out as it.
    """

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0, hidden: int = 1024,
                 learn_endpoints: bool = False, base: str = "linear"):
        super().__init__()
        _check_endpoints(gamma_min, gamma_max)
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        base = _base_schedule(base, gamma_min, gamma_max)
        self.base = None if isinstance(base, LinearSchedule) else base  # linear: the network acts on t itself
        self.l1 = _PositiveLinear(1, 1, init_scale=1.0)
        self.l2 = _PositiveLinear(1, hidden)
        self.l3 = _PositiveLinear(hidden, 1, init_scale=-12.0)
        self._init_endpoints(gamma_min, gamma_max, learn_endpoints)

    def _raw(self, t):
        h = self.l1(t.unsqueeze(-1))  # (..., 1)
        return (h + self.l3(torch.sigmoid(self.l2(h)))).squeeze(-1)

    def _frac(self, t):
        """The normalised interior frac(t) ∈ [0, 1], frac(0) = 0, frac(1) = 1."""
        t = t.to(self.l1.bias.dtype)
        if self.base is not None:  # the cosine schedule's shape, normalised to [0, 1]
            g_lo, g_hi = self.base.gamma(torch.tensor([0.0, 1.0], dtype=t.dtype, device=t.device)).unbind(0)
            t = (self.base.gamma(t) - g_lo) / (g_hi - g_lo)
        r0, r1 = self._raw(torch.tensor([0.0, 1.0], dtype=t.dtype, device=t.device)).unbind(0)
        return (self._raw(t) - r0) / (r1 - r0)

    def gamma(self, t):
        g0, gap = self._endpoints()
        return g0 + gap * self._frac(t)

    def parts(self, t):
        """(γ_min, γ_max − γ_min, frac(t), frac'(t)) with γ = γ_min + gap · frac: the endpoints and
        the interior apart, for objectives that train them differently (VDM App. I.1)."""
        t = check_time(t)
        with torch.enable_grad():
            t_ = t.detach().requires_grad_(True)
            frac = self._frac(t_)
            (dfrac,) = torch.autograd.grad(frac.sum(), t_, create_graph=True)
        g0, gap = self._endpoints()
        return g0, gap, frac, dfrac




def _base_schedule(base, gamma_min: float, gamma_max: float) -> NoiseSchedule:
    """The schedule whose shape a learned schedule starts from: a name or a schedule with the same endpoints."""
    if isinstance(base, str):
        table = {"linear": LinearSchedule, "cosine": CosineSchedule}
        if base not in table:
            raise ValueError(f"unknown base {base!r}; expected 'linear', 'cosine' or a NoiseSchedule")
        return table[base](gamma_min, gamma_max)
    if not isinstance(base, NoiseSchedule):
        raise ValueError(f"base must be 'linear', 'cosine' or a NoiseSchedule, got {type(base).__name__}")
    with torch.no_grad():
        lo, hi = float(base.gamma_min), float(base.gamma_max)
    if abs(lo - gamma_min) > 1e-3 or abs(hi - gamma_max) > 1e-3:
        raise ValueError(f"base schedule spans γ ∈ [{lo:.4g}, {hi:.4g}], not the requested [{gamma_min}, {gamma_max}]")
    return base


@torch.no_grad()
def _inverse_times(schedule: NoiseSchedule, gammas: torch.Tensor, iters: int = 60) -> torch.Tensor:
    """t with schedule.gamma(t) = γ for each γ (float64 bisection; the schedule is increasing)."""
    lo, hi = torch.zeros_like(gammas), torch.ones_like(gammas)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        below = schedule.gamma(mid.to(torch.get_default_dtype())).double() < gammas
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


class DensitySchedule(InteriorSchedule):
    """A learned γ(t): the quantile function of a learned density of noise levels.

    Under t ∼ U(0, 1) the level γ(t) has density q(γ) = 1/γ'(t); this schedule parameterizes q
    directly — continuous and piecewise linear on K bins equally spaced in γ, positive values
    exp(w_0..w_K) at the knots, normalised — and γ(t) is its inverse CDF, in closed form (a
    quadratic on each bin).  The continuous-time loss ½ γ'(t) ‖ε − ε̂‖² is then an importance-
    sampling estimate of ½ ∫ E‖ε − ε̂(z_γ; γ)‖² dγ with proposal q, whose per-example variance is
    least at q ∝ sqrt(E[ℓ(γ)²]) (Kingma et al. 2021, App. I.1; the optimum of Nichol & Dhariwal's
    loss-aware sampler, §3.3).  This family reaches it up to the bin width, and its K + 1 logits
    move at an ordinary learning rate, where :class:`MonotoneNetSchedule` starts from tiny weights.

    γ' is continuous in t (q is continuous), so the loss is continuous in t for every parameter
    value and its pathwise gradient — the variance objective's — is unbiased; a piecewise-*linear*
    γ(t) would make γ' jump at knots that move with the parameters, a boundary term the pathwise
    gradient misses.

    Args:
        bins: K, the number of linear pieces of q.
        learn_endpoints: learn γ_min, γ_max as well (through the ELBO).
        base: ``"linear"``, ``"cosine"`` or a :class:`NoiseSchedule` with the same endpoints; q starts
            as the base's density at the knots (linear: exactly linear).
    """

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0, bins: int = 64,
                 learn_endpoints: bool = False, base="linear"):
        super().__init__()
        _check_endpoints(gamma_min, gamma_max)
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ValueError(f"bins must be an integer >= 1, got {bins!r}")
        base = _base_schedule(base, gamma_min, gamma_max)
        knots = torch.linspace(gamma_min, gamma_max, bins + 1, dtype=torch.float64)  # γ_k, (K+1,)
        with torch.no_grad():
            times = _inverse_times(base, knots).to(torch.get_default_dtype())
            density = 1.0 / base.dgamma_dt(times).double()  # dt/dγ at the knots
        self.logits = nn.Parameter(density.log().to(torch.get_default_dtype()))
        self._init_endpoints(gamma_min, gamma_max, learn_endpoints)

    @property
    def bins(self) -> int:
        return self.logits.numel() - 1

    def density(self, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(q at the K + 1 knots, the CDF t_k there), q a density of frac = (γ − γ_min)/(γ_max − γ_min)
        on [0, 1] (trapezoid-normalised, exact for a piecewise-linear q); differentiable."""
        w = self.logits.to(dtype or self.logits.dtype)
        q = torch.exp(w - w.max())
        mass = 0.5 * (q[1:] + q[:-1]) / self.bins  # (K,)
        q = q / mass.sum()
        cdf = torch.cumsum(mass / mass.sum(), 0)[:-1]
        return q, torch.cat([cdf.new_zeros(1), cdf, cdf.new_ones(1)])

    def _frac(self, t):
        """(frac(t), frac'(t)): the inverse CDF of q and 1/q there."""
        t = t if torch.is_floating_point(t) else t.to(torch.get_default_dtype())
        q, cdf = self.density(t.dtype)
        k = torch.searchsorted(cdf[1:-1].detach().contiguous(), t.detach().contiguous(), right=True)  # bin of t
        h = 1.0 / self.bins
        # take, not q[k]: a 0-d index tensor would be read back as a Python int (untraceable by make_fx)
        b, slope = q.take(k), (q.take(k + 1) - q.take(k)) / h
        s = (t - cdf.take(k)).clamp_min(0.0)
        # s = b u + slope u²/2 on the bin, solved for u ∈ [0, h] in the cancellation-free form
        u = (2 * s / (b + torch.sqrt((b * b + 2 * slope * s).clamp_min(0.0)))).clamp(0.0, h)
        return k.to(t.dtype) * h + u, 1.0 / (b + slope * u)

    def gamma(self, t):
        g0, gap = self._endpoints()
        return g0 + gap * self._frac(t)[0]

    def dgamma_dt(self, t):
        t = check_time(t)
        return self._endpoints()[1] * self._frac(t)[1]

    def parts(self, t):
        """(γ_min, γ_max − γ_min, frac(t), frac'(t)) with γ = γ_min + gap · frac (VDM App. I.1)."""
        t = check_time(t)
        g0, gap = self._endpoints()
        return (g0, gap) + self._frac(t)
