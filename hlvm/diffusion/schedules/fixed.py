"""Fixed noise schedules γ(t) = −log SNR(t) on t ∈ [0, 1], and their base class.

Every schedule is a small :class:`torch.nn.Module` whose ``forward(t)`` returns γ(t); the
variance-preserving quantities follow from γ alone (VDM convention, Kingma et al. 2021, §3):

    σ_t² = sigmoid(γ_t),   α_t² = sigmoid(−γ_t),   SNR(t) = α_t² / σ_t² = exp(−γ_t).

* :class:`LinearSchedule` — fixed linear γ (VDM's default, γ ∈ [−13.3, 5]).
* :class:`CosineSchedule` — the cosine ᾱ of Nichol & Dhariwal (2021), truncated to [γ_min, γ_max].
* :class:`DDPMSchedule` — the discrete β-schedules of DDPM (Ho et al. 2020), linear and cosine.

References:
    Kingma, Salimans, Poole, Ho. *Variational Diffusion Models*. NeurIPS 2021.
    Nichol, Dhariwal. *Improved Denoising Diffusion Probabilistic Models*. ICML 2021.
    Ho, Jain, Abbeel. *Denoising Diffusion Probabilistic Models*. NeurIPS 2020.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from pyro.infer.util import is_validation_enabled

__all__ = [
    "NoiseSchedule",
    "LinearSchedule",
    "CosineSchedule",
    "DDPMSchedule",
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
