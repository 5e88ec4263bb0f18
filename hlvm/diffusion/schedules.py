"""Noise schedules γ(t) = −log SNR(t) on t ∈ [0, 1].

Every schedule is a small :class:`torch.nn.Module` whose ``forward(t)`` returns γ(t); the
variance-preserving quantities follow from γ alone (VDM convention, Kingma et al. 2021, §3):

    σ_t² = sigmoid(γ_t),   α_t² = sigmoid(−γ_t),   SNR(t) = α_t² / σ_t² = exp(−γ_t).

Schedules provided:

* :class:`LinearSchedule` — fixed linear γ (VDM's default, γ ∈ [−13.3, 5]).
* :class:`CosineSchedule` — the cosine ᾱ of Nichol & Dhariwal (2021), truncated to [γ_min, γ_max].
* :class:`LearnedLinearSchedule` — linear γ with learnable endpoints.
* :class:`MonotoneNetSchedule` — VDM's monotone network with positive weights (Appendix H.1).
* :class:`DDPMSchedule` — the discrete β-schedules of DDPM (Ho et al. 2020), linear and cosine.

References:
    Kingma, Salimans, Poole, Ho. *Variational Diffusion Models*. NeurIPS 2021.
    Nichol, Dhariwal. *Improved Denoising Diffusion Probabilistic Models*. ICML 2021.
    Ho, Jain, Abbeel. *Denoising Diffusion Probabilistic Models*. NeurIPS 2020.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from pyro.infer.util import is_validation_enabled

__all__ = [
    "NoiseSchedule",
    "LinearSchedule",
    "CosineSchedule",
    "LearnedLinearSchedule",
    "MonotoneNetSchedule",
    "DDPMSchedule",
    "make_schedule",
    "check_time",
]


def check_time(t: torch.Tensor, name: str = "t") -> torch.Tensor:
    """Return ``t`` as a tensor after checking that every entry lies in [0, 1].

    The check reads the values (a device sync on CUDA), so like ``torch.distributions`` argument
    validation it runs only while Pyro validation is enabled (the default; see
    ``pyro.enable_validation``).
    """
    t = torch.as_tensor(t)
    if not torch.is_floating_point(t):
        t = t.to(torch.get_default_dtype())
    if t.numel() and is_validation_enabled() and not torch.jit.is_tracing() and not _is_compiling():
        if bool(torch.isnan(t).any()) or bool((t < 0).any()) or bool((t > 1).any()):
            raise ValueError(f"{name} must lie in [0, 1], got values in [{t.min().item()}, {t.max().item()}]")
    return t


def _is_compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover - older torch
        return False


def _check_endpoints(gamma_min: float, gamma_max: float) -> None:
    if not (math.isfinite(gamma_min) and math.isfinite(gamma_max)):
        raise ValueError(f"gamma_min and gamma_max must be finite, got {gamma_min}, {gamma_max}")
    if gamma_min >= gamma_max:
        raise ValueError(f"gamma_min must be < gamma_max (γ increases with t), got gamma_min={gamma_min} >= gamma_max={gamma_max}")


class NoiseSchedule(nn.Module):
    """Base class: a monotone increasing map t ↦ γ(t) = −log SNR(t).

    Subclasses implement :meth:`gamma`; everything else is derived from it.
    """

    #: whether the schedule was built for a fixed number of discrete steps (DDPM)
    discrete_steps: int | None = None

    def gamma(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """γ(t), after validating that t ∈ [0, 1]."""
        return self.gamma(check_time(t))

    # --- derived quantities -------------------------------------------------------------
    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """α_t = sqrt(sigmoid(−γ_t))."""
        return torch.sigmoid(-self(t)).sqrt()

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """σ_t = sqrt(sigmoid(γ_t))."""
        return torch.sigmoid(self(t)).sqrt()

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """SNR(t) = α_t² / σ_t² = exp(−γ_t)."""
        return torch.exp(-self(t))

    def dgamma_dt(self, t: torch.Tensor) -> torch.Tensor:
        """γ'(t) by forward-mode-free autograd (elementwise; t may be any shape).

        Subclasses with a closed form override this.  The result keeps the graph so that
        schedule parameters receive gradients through γ'(t) (needed by the continuous-time ELBO).
        """
        t = check_time(t)
        with torch.enable_grad():
            t_ = t.detach().requires_grad_(True)
            g = self.gamma(t_)
            (dg,) = torch.autograd.grad(g.sum(), t_, create_graph=True)
        return dg

    @property
    def gamma_min(self) -> torch.Tensor:
        """γ(0): the least noisy level."""
        return self(torch.zeros(()))

    @property
    def gamma_max(self) -> torch.Tensor:
        """γ(1): the noisiest level."""
        return self(torch.ones(()))

    def extra_repr(self) -> str:
        with torch.no_grad():
            return f"gamma_min={float(self.gamma_min):.3f}, gamma_max={float(self.gamma_max):.3f}"


class LinearSchedule(NoiseSchedule):
    """Fixed linear schedule γ(t) = γ_min + (γ_max − γ_min) t (VDM, §3.5)."""

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0):
        super().__init__()
        _check_endpoints(gamma_min, gamma_max)
        self.register_buffer("g0", torch.tensor(float(gamma_min)))
        self.register_buffer("g1", torch.tensor(float(gamma_max)))

    def gamma(self, t):
        return self.g0 + (self.g1 - self.g0) * t

    def dgamma_dt(self, t):
        t = check_time(t)
        return (self.g1 - self.g0).expand_as(t).to(t.dtype)


class CosineSchedule(NoiseSchedule):
    """Cosine schedule of Nichol & Dhariwal (2021), truncated to [γ_min, γ_max].

    ᾱ(u) = cos²(πu/2) gives SNR(u) = cot²(πu/2), i.e. γ(u) = 2 log tan(πu/2).  Nichol &
    Dhariwal's offset ``s`` merely moves the u-range; here the range [u_0, u_1] is fixed by the
    requested endpoints so that γ(0) = γ_min and γ(1) = γ_max exactly:

        u(t) = u_0 + (u_1 − u_0) t,   u_i = (2/π) atan(exp(γ_i / 2)).
    """

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0):
        super().__init__()
        _check_endpoints(gamma_min, gamma_max)
        self.register_buffer("u0", torch.tensor(2 / math.pi * math.atan(math.exp(gamma_min / 2))))
        self.register_buffer("u1", torch.tensor(2 / math.pi * math.atan(math.exp(gamma_max / 2))))
        # v = 1 − u, computed directly, keeps precision where u is close to 1 (large γ)
        self.register_buffer("v0", torch.tensor(2 / math.pi * math.atan(math.exp(-gamma_min / 2))))
        self.register_buffer("v1", torch.tensor(2 / math.pi * math.atan(math.exp(-gamma_max / 2))))

    def gamma(self, t):
        u = self.u0 + (self.u1 - self.u0) * t
        v = self.v0 + (self.v1 - self.v0) * t
        # γ = 2 log tan(πu/2) = −2 log tan(πv/2); use the better-conditioned branch
        return torch.where(u <= 0.5, 2 * torch.log(torch.tan(0.5 * math.pi * u)),
                           -2 * torch.log(torch.tan(0.5 * math.pi * v)))

    def dgamma_dt(self, t):
        t = check_time(t)
        u = self.u0 + (self.u1 - self.u0) * t
        # d/du 2 log tan(πu/2) = π / (sin(πu/2) cos(πu/2)) = 2π / sin(πu)
        return 2 * math.pi / torch.sin(math.pi * u) * (self.u1 - self.u0)


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + eˣ) without F.softplus's linear cut-off at x > 20 (exact inverse of the init)."""
    return torch.logaddexp(x, torch.zeros_like(x))


class LearnedLinearSchedule(NoiseSchedule):
    """Linear schedule with learnable endpoints (VDM, §4: only γ_min, γ_max affect L_∞).

    The gap γ_max − γ_min is parameterized through softplus so it stays positive.
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

    def parts(self, t):
        """(γ_min, γ_max − γ_min, frac(t), frac'(t)) with γ = γ_min + gap · frac: here frac(t) = t."""
        return self.g0, self.gap, t, torch.ones_like(t)


class _PositiveLinear(nn.Module):
    """A linear layer whose weights are softplus-positive, so it is monotone increasing."""

    def __init__(self, d_in: int, d_out: int, init_scale: float = 0.0):
        super().__init__()
        self.raw_weight = nn.Parameter(torch.randn(d_out, d_in) * 0.1 + init_scale)
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, h):
        return F.linear(h, F.softplus(self.raw_weight), self.bias)


class MonotoneNetSchedule(NoiseSchedule):
    """VDM's learned monotone γ: a positive-weight network, rescaled to fixed or learned endpoints.

    γ̃(t) = l₁(t) + l₃(φ(l₂(l₁(t)))) with φ = sigmoid and every weight positive, so γ̃ is monotone
    increasing (Kingma et al. 2021, Appendix H.1).  It is then normalised

        γ(t) = γ_min + (γ_max − γ_min) (γ̃(t) − γ̃(0)) / (γ̃(1) − γ̃(0)),

    which pins the endpoints (held fixed, or learned when ``learn_endpoints=True``).  The
    non-linear branch is initialised with tiny weights, so γ starts out linear (to ~1e-4) — or, with
    ``base="cosine"``, the network acts on the cosine schedule's normalised γ instead of t (a
    composition of monotone maps), so γ starts out as the cosine schedule.
    """

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0, hidden: int = 1024,
                 learn_endpoints: bool = False, base: str = "linear"):
        super().__init__()
        _check_endpoints(gamma_min, gamma_max)
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        if base not in ("linear", "cosine"):
            raise ValueError(f"unknown base {base!r}; expected 'linear' or 'cosine'")
        self.base = CosineSchedule(gamma_min, gamma_max) if base == "cosine" else None
        self.l1 = _PositiveLinear(1, 1, init_scale=1.0)
        self.l2 = _PositiveLinear(1, hidden)
        self.l3 = _PositiveLinear(hidden, 1, init_scale=-12.0)
        self.learn_endpoints = learn_endpoints
        if learn_endpoints:
            self.endpoints = LearnedLinearSchedule(gamma_min, gamma_max)
        else:
            self.register_buffer("g0", torch.tensor(float(gamma_min)))
            self.register_buffer("g1", torch.tensor(float(gamma_max)))

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

    def _endpoints(self):
        if self.learn_endpoints:
            return self.endpoints.g0, self.endpoints.gap
        return self.g0, self.g1 - self.g0

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


class DDPMSchedule(NoiseSchedule):
    """A discrete DDPM β-schedule expressed as γ(t) (Ho et al. 2020; Nichol & Dhariwal 2021).

    With β_1..β_N and ᾱ_n = ∏_{i≤n} (1 − β_i), the grid point t_n = (n − 1)/(N − 1) carries
    γ(t_n) = log((1 − ᾱ_n)/ᾱ_n); between grid points log ᾱ is interpolated linearly.  Hence a
    discrete-time model with T = N − 1 steps (t(i) = i/T) visits exactly ᾱ_1..ᾱ_N: z_0 is DDPM's
    x_1, the first noisy latent, and p(x | z_0) plays the role of DDPM's decoder L_0.  A chain with
    T dividing N − 1 visits the sub-grid n = i(N − 1)/T + 1 (diffusers' ``linspace`` timestep
    spacing, exact when it divides); :class:`~hlvm.DiffusionChain` refuses any other T, and
    continuous time, rather than use interpolated levels the β's do not define.

    Args:
        num_betas: N, the number of β's (DDPM: 1000).
        kind: ``"linear"`` (β from 1e-4 to 0.02) or ``"cosine"`` (Nichol & Dhariwal, s = 0.008,
            β clipped at 0.999).
    """

    def __init__(self, num_betas: int = 1000, kind: str = "linear", beta_start: float = 1e-4,
                 beta_end: float = 0.02, s: float = 0.008):
        super().__init__()
        if num_betas < 2:
            raise ValueError(f"num_betas must be >= 2, got {num_betas}")
        if kind == "linear":
            if not 0 < beta_start < beta_end < 1:
                raise ValueError(f"need 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
            betas = torch.linspace(beta_start, beta_end, num_betas, dtype=torch.float64)
        elif kind == "cosine":
            n = torch.arange(num_betas + 1, dtype=torch.float64)
            f = torch.cos((n / num_betas + s) / (1 + s) * math.pi / 2) ** 2
            abar = f / f[0]
            betas = (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
        else:
            raise ValueError(f"unknown DDPM schedule kind {kind!r}; expected 'linear' or 'cosine'")
        self.kind = kind
        self.discrete_steps = num_betas - 1
        self.register_buffer("betas", betas)
        self.register_buffer("log_alpha_bar", torch.cumsum(torch.log1p(-betas), 0))

    def gamma(self, t):
        n = self.betas.numel()
        log_ab = self.log_alpha_bar.to(t.dtype)
        pos = t * (n - 1)  # fractional index into the grid
        i0 = pos.floor().clamp(max=n - 2).long()
        w = pos - i0.to(t.dtype)
        la = log_ab[i0] * (1 - w) + log_ab[i0 + 1] * w
        # γ = log(1 − ᾱ) − log ᾱ = log(−expm1(log ᾱ)) − log ᾱ
        return torch.log(-torch.expm1(la)) - la


def make_schedule(name: str, gamma_min: float = -13.3, gamma_max: float = 5.0, **kwargs) -> NoiseSchedule:
    """Build a schedule by name: linear, cosine, learned-linear, learned-net, ddpm-linear, ddpm-cosine."""
    table = {
        "linear": lambda: LinearSchedule(gamma_min, gamma_max),
        "cosine": lambda: CosineSchedule(gamma_min, gamma_max),
        "learned-linear": lambda: LearnedLinearSchedule(gamma_min, gamma_max),
        "learned-net": lambda: MonotoneNetSchedule(gamma_min, gamma_max, **kwargs),
        "ddpm-linear": lambda: DDPMSchedule(kind="linear", **kwargs),
        "ddpm-cosine": lambda: DDPMSchedule(kind="cosine", **kwargs),
    }
    if name not in table:
        raise ValueError(f"unknown schedule {name!r}; expected one of {sorted(table)}")
    return table[name]()
