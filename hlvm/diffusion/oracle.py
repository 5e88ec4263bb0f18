"""The Bayes-optimal denoiser for Gaussian data, in closed form.

For x ∼ N(μ, Σ) and z_t = α_t x + σ_t ε, the posterior mean is

    E[x | z_t] = μ + Σ α (α² Σ + σ² I)⁻¹ (z_t − α μ) = μ + U diag(α λ / (α² λ + σ²)) Uᵀ (z_t − α μ),

with Σ = U diag(λ) Uᵀ.  Plugged into the diffusion ELBO it gives the tightest bound any denoiser
can reach, which lets tests compare the ELBO against the exact log p(x) (Kingma et al. 2021, §5;
the MMSE is non-increasing in SNR, which is why doubling T never increases L_T).
"""

from __future__ import annotations

import math

import torch

from .denoiser import XPredictor
from .gaussian import alpha_sigma, pad_gamma
from .parameterization import TARGETS, check_target, convert

__all__ = ["GaussianOracle"]


class GaussianOracle(XPredictor):
    """x̂(z_t; γ_t) = E[x | z_t] for x ∼ N(mean, cov) over flat data of shape (B, D).

    An :class:`~hlvm.diffusion.denoiser.XPredictor`: it stands in wherever a
    :class:`~hlvm.diffusion.denoiser.Denoiser` does — as a :class:`~hlvm.DiffusionChain`'s
    denoiser, in the bound and in every sampler — so exact tests run through the same code.
    """

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor):
        super().__init__()
        mean = torch.as_tensor(mean)
        cov = torch.as_tensor(cov, dtype=mean.dtype)
        if cov.shape != (mean.numel(), mean.numel()):
            raise ValueError(f"cov must be ({mean.numel()}, {mean.numel()}), got {tuple(cov.shape)}")
        lam, u = torch.linalg.eigh(cov)
        if bool((lam <= 0).any()):
            raise ValueError("cov must be positive definite")
        self.register_buffer("mean", mean.reshape(-1))
        self.register_buffer("cov", cov)
        self.register_buffer("lam", lam)
        self.register_buffer("u", u)

    def predict(self, z_t, gamma_t, target: str = "x", dgamma_dt=None):
        check_target(target, TARGETS)
        return convert(self.posterior_mean(z_t, gamma_t), "x", target, z_t, gamma_t, dgamma_dt)

    def posterior_mean(self, z_t, gamma_t):
        """E[x | z_t] in closed form (module docstring)."""
        g = pad_gamma(gamma_t, z_t)
        alpha, sigma = alpha_sigma(g)  # (B, 1) or ()
        mu, lam, u = self.mean.to(z_t), self.lam.to(z_t), self.u.to(z_t)
        r = (z_t - alpha * mu) @ u  # (B, D) in the eigenbasis
        gain = alpha * lam / (alpha**2 * lam + sigma**2)  # (B, D)
        return mu + (gain * r) @ u.T

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log N(x; μ, Σ) per example."""
        d = self.mean.numel()
        r = (x - self.mean.to(x)) @ self.u.to(x)
        return -0.5 * ((r**2 / self.lam.to(x)).sum(-1) + self.lam.log().sum().to(x) + d * math.log(2 * math.pi))
