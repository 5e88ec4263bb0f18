"""Gaussian diffusion in the γ-parameterization (Table 1 of De Sousa Ribeiro & Glocker).

Every function takes log-SNR levels γ rather than a schedule, so it serves any schedule and
any hierarchy.  With σ² = sigmoid(γ), α² = sigmoid(−γ) and s < t (γ_s < γ_t):

* q(z_t | x)        = N(α_t x, σ_t² I)
* q(z_t | z_s)      = N(α_{t|s} z_s, σ²_{t|s} I),   α_{t|s} = α_t/α_s,
  σ²_{t|s} = σ_t² − α²_{t|s} σ_s² = σ_t² · (−expm1(γ_s − γ_t))
* q(z_s | z_t, x)   = N(μ_Q, σ_Q² I),
  μ_Q = (α_{t|s} σ_s²/σ_t²) z_t + (α_s σ²_{t|s}/σ_t²) x,   σ_Q² = σ_s² · (−expm1(γ_s − γ_t))
* KL(q(z_s|z_t,x) ‖ q(z_s|z_t,x̂)) = ½ (SNR(s) − SNR(t)) ‖x − x̂‖²

Variances are never formed as differences of two nearly equal numbers: ``expm1``, ``sigmoid``
and ``logsigmoid`` carry the precision, so values and gradients stay finite for γ ∈ [−30, 30]
in float32.

References:
    Kingma, Salimans, Poole, Ho. *Variational Diffusion Models*. NeurIPS 2021, eqs. (3)–(5), (13).
    De Sousa Ribeiro, Glocker. *Demystifying Variational Diffusion Models*, 2024, Table 1.
    Luo. *Understanding Diffusion Models: A Unified Perspective*, 2022, eqs. (84)–(99).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import pyro.distributions as dist
from pyro.infer.util import is_validation_enabled

__all__ = [
    "alpha_sigma",
    "alpha_sigma_sq",
    "snr",
    "alpha_ts",
    "sigma_sq_ts",
    "posterior_coefficients",
    "q_zt_given_x",
    "q_zt_given_zs",
    "q_zs_given_zt_x",
    "diffusion_kl",
    "diffusion_kl_eps",
    "prior_kl",
    "check_levels",
    "pad_gamma",
    "batch_gamma",
    "p_zs_given_zt",
]


def alpha_sigma_sq(gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(α², σ²) = (sigmoid(−γ), sigmoid(γ)), each computed directly (no 1 − x)."""
    return torch.sigmoid(-gamma), torch.sigmoid(gamma)


def alpha_sigma(gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(α, σ) of the variance-preserving process at log-SNR −γ."""
    a2, s2 = alpha_sigma_sq(gamma)
    return a2.sqrt(), s2.sqrt()


def snr(gamma: torch.Tensor) -> torch.Tensor:
    """SNR = exp(−γ)."""
    return torch.exp(-gamma)


def check_levels(gamma_s: torch.Tensor, gamma_t: torch.Tensor) -> None:
    """Raise ValueError unless γ_s < γ_t elementwise (s is the less noisy level).

    Runs only while Pyro validation is enabled (it reads values: a device sync on CUDA).
    """
    if not is_validation_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return
    if bool((torch.as_tensor(gamma_s) >= torch.as_tensor(gamma_t)).any()):
        raise ValueError("gamma_s must be < gamma_t (s < t means less noise at s)")


def alpha_ts(gamma_s: torch.Tensor, gamma_t: torch.Tensor) -> torch.Tensor:
    """α_{t|s} = α_t / α_s = exp(½ (log sigmoid(−γ_t) − log sigmoid(−γ_s)))."""
    return torch.exp(0.5 * (F.logsigmoid(-gamma_t) - F.logsigmoid(-gamma_s)))


def sigma_sq_ts(gamma_s: torch.Tensor, gamma_t: torch.Tensor) -> torch.Tensor:
    """σ²_{t|s} = σ_t² − α²_{t|s} σ_s² = sigmoid(γ_t) · (−expm1(γ_s − γ_t))."""
    return torch.sigmoid(gamma_t) * -torch.expm1(gamma_s - gamma_t)


def posterior_coefficients(gamma_s: torch.Tensor, gamma_t: torch.Tensor):
    """Coefficients of q(z_s | z_t, x) = N(c_z z_t + c_x x, σ_Q²).

    Returns ``(c_z, c_x, sigma_q_sq)`` with
    c_z = α_{t|s} σ_s²/σ_t² = (α_s/α_t) exp(γ_s − γ_t),  c_x = α_s · c,  σ_Q² = σ_s² · c,
    where c = σ²_{t|s}/σ_t² = −expm1(γ_s − γ_t).
    """
    c = -torch.expm1(gamma_s - gamma_t)
    alpha_s = torch.sigmoid(-gamma_s).sqrt()
    c_z = torch.exp(0.5 * (F.logsigmoid(-gamma_s) - F.logsigmoid(-gamma_t)) + (gamma_s - gamma_t))
    return c_z, alpha_s * c, torch.sigmoid(gamma_s) * c


def _check_shapes(**tensors) -> None:
    shapes = {k: tuple(v.shape) for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    try:
        torch.broadcast_shapes(*shapes.values())
    except RuntimeError:
        raise ValueError(f"shapes do not broadcast: {shapes}") from None


def pad_gamma(gamma, like: torch.Tensor) -> torch.Tensor:
    """γ as a tensor that broadcasts against ``like`` of shape (B, ...): a scalar stays a scalar,
    a per-example (B,) becomes (B, 1, …, 1).  The one place where levels are broadcast."""
    gamma = torch.as_tensor(gamma, dtype=like.dtype, device=like.device)
    if gamma.dim() == 0 or gamma.dim() >= like.dim():
        return gamma
    return gamma.reshape(gamma.shape + (1,) * (like.dim() - gamma.dim()))  # (B,) -> (B, 1, ..., 1)


def batch_gamma(gamma, like: torch.Tensor) -> torch.Tensor:
    """γ as one level per example, shape (B,), for networks fed (z_t, γ_t); a scalar is expanded."""
    gamma = torch.as_tensor(gamma, dtype=like.dtype, device=like.device)
    if gamma.dim() == 0:
        gamma = gamma.expand(like.shape[0])
    if gamma.shape != like.shape[:1]:
        raise ValueError(f"gamma_t must be a scalar or of shape (batch,) = {tuple(like.shape[:1])}, "
                         f"got {tuple(gamma.shape)}")
    return gamma


def q_zt_given_x(x: torch.Tensor, gamma_t: torch.Tensor) -> dist.Normal:
    """The forward marginal q(z_t | x) = N(α_t x, σ_t² I), elementwise (no event dims)."""
    g = pad_gamma(gamma_t, x)
    _check_shapes(x=x, gamma_t=g)
    alpha, sigma = alpha_sigma(g)
    return dist.Normal(alpha * x, sigma.expand_as(alpha * x))


def q_zt_given_zs(z_s: torch.Tensor, gamma_s: torch.Tensor, gamma_t: torch.Tensor) -> dist.Normal:
    """The forward transition q(z_t | z_s) = N(α_{t|s} z_s, σ²_{t|s} I)."""
    gs, gt = pad_gamma(gamma_s, z_s), pad_gamma(gamma_t, z_s)
    _check_shapes(z_s=z_s, gamma_s=gs, gamma_t=gt)
    check_levels(gs, gt)
    loc = alpha_ts(gs, gt) * z_s
    return dist.Normal(loc, sigma_sq_ts(gs, gt).sqrt().expand_as(loc))


def q_zs_given_zt_x(z_t: torch.Tensor, x: torch.Tensor, gamma_s: torch.Tensor,
                    gamma_t: torch.Tensor) -> dist.Normal:
    """The forward-process posterior q(z_s | z_t, x) = N(μ_Q, σ_Q² I), s < t.

    With x replaced by x̂θ(z_t; t) this is the generative transition p(z_s | z_t).
    """
    gs, gt = pad_gamma(gamma_s, z_t), pad_gamma(gamma_t, z_t)
    _check_shapes(z_t=z_t, x=x, gamma_s=gs, gamma_t=gt)
    check_levels(gs, gt)
    c_z, c_x, var = posterior_coefficients(gs, gt)
    loc = c_z * z_t + c_x * x
    return dist.Normal(loc, var.sqrt().expand_as(loc))


def p_zs_given_zt(denoiser, z_t: torch.Tensor, gamma_s: torch.Tensor, gamma_t: torch.Tensor) -> dist.Normal:
    """The generative transition p(z_s | z_t) = q(z_s | z_t, x = x̂θ(z_t; γ_t)), s < t.

    The one definition shared by every diffusion chain, the top-down HVAE's denoiser transitions
    and all samplers (De Sousa Ribeiro & Glocker, eq. 31; Kingma et al. 2021, eq. 27).
    ``denoiser(z_t, γ_t)`` returns x̂θ; γ's are scalars or per-example (B,).
    """
    return q_zs_given_zt_x(z_t, denoiser(z_t, gamma_t), gamma_s, gamma_t)


def _sum_per_example(v: torch.Tensor, event_dims: int | None) -> torch.Tensor:
    if event_dims is None:
        event_dims = max(v.dim() - 1, 0)
    return v.sum(dim=tuple(range(v.dim() - event_dims, v.dim()))) if event_dims else v


def diffusion_kl(x: torch.Tensor, x_hat: torch.Tensor, gamma_s: torch.Tensor, gamma_t: torch.Tensor,
                 event_dims: int | None = None) -> torch.Tensor:
    """KL(q(z_s | z_t, x) ‖ p(z_s | z_t)) = ½ (SNR(s) − SNR(t)) ‖x − x̂‖², per example.

    SNR(s) − SNR(t) = exp(−γ_s) · (−expm1(γ_s − γ_t)).  ``event_dims`` trailing dims are summed
    (default: all but the first).
    """
    _check_shapes(x=x, x_hat=x_hat)
    gs, gt = pad_gamma(gamma_s, x), pad_gamma(gamma_t, x)
    w = torch.exp(-gs) * -torch.expm1(gs - gt)
    return _sum_per_example(0.5 * w * (x - x_hat) ** 2, event_dims)


def diffusion_kl_eps(eps: torch.Tensor, eps_hat: torch.Tensor, gamma_s: torch.Tensor,
                     gamma_t: torch.Tensor, event_dims: int | None = None) -> torch.Tensor:
    """The same KL in noise space: ½ expm1(γ_t − γ_s) ‖ε − ε̂‖² (VDM eq. 13), per example."""
    _check_shapes(eps=eps, eps_hat=eps_hat)
    gs, gt = pad_gamma(gamma_s, eps), pad_gamma(gamma_t, eps)
    return _sum_per_example(0.5 * torch.expm1(gt - gs) * (eps - eps_hat) ** 2, event_dims)


def prior_kl(x: torch.Tensor, gamma_1: torch.Tensor, event_dims: int | None = None) -> torch.Tensor:
    """KL(q(z_1 | x) ‖ N(0, I)) per example.

    Per dimension ½(σ² + α² x² − 1 − log σ²) = ½(α² (x² − 1) − log sigmoid(γ_1)), using 1 − σ² = α².
    """
    g = pad_gamma(gamma_1, x)
    a2 = torch.sigmoid(-g)
    return _sum_per_example(0.5 * (a2 * (x**2 - 1) - F.logsigmoid(g)), event_dims)
