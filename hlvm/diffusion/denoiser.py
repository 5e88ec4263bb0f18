"""The shared denoiser x̂θ(z_t; γ_t): one wrapper turns any backbone into an x̂-predictor.

Whatever the backbone predicts (x, ε, score, energy, v or flow velocity), the wrapper exposes
the same function x̂θ(z_t; γ_t) — and any other target on request — through the affine
conversions of :mod:`hlvm.parameterization`.  Every model in the zoo that needs a denoiser calls
this one object, so the generative transitions p(z_s | z_t) = q(z_s | z_t, x = x̂θ(z_t; t)) of all
levels share its weights (De Sousa Ribeiro & Glocker, §2.4; Karras et al. 2022, §2 / k-diffusion's
``Denoiser`` for the idea of parameterizations as changes of scalings).
"""

from __future__ import annotations

import torch
from torch import nn

from .parameterization import SOURCES, TARGETS, check_target, convert, score_from_energy, x_from_binary_logit

__all__ = ["Denoiser"]


class Denoiser(nn.Module):
    """Wrap ``backbone(z_t, gamma_t)`` predicting ``parameterization`` into x̂θ(z_t; γ_t).

    Args:
        backbone: a module mapping (z_t of shape (B, ...), γ_t of shape (B,)) to a tensor of z_t's
            shape — or, for ``"energy"``, to energies of shape (B,).
        parameterization: what the backbone predicts, one of
            ``x``, ``eps``, ``score``, ``v``, ``flow``, ``energy``, or ``logit`` (binary data in
            {−1, 1}: x̂ = tanh(αz/σ² + out), see :mod:`hlvm.parameterization`).

    .. warning:: ``flow`` needs γ'(t), which γ alone does not determine: pass ``dgamma_dt``.
    """

    def __init__(self, backbone: nn.Module, parameterization: str = "eps"):
        super().__init__()
        self.backbone = backbone
        self.parameterization = check_target(parameterization, SOURCES)

    def _gamma(self, gamma_t, z_t):
        gamma_t = torch.as_tensor(gamma_t, dtype=z_t.dtype, device=z_t.device)
        if gamma_t.dim() == 0:
            gamma_t = gamma_t.expand(z_t.shape[0])
        if gamma_t.shape != z_t.shape[:1]:
            raise ValueError(f"gamma_t must be a scalar or of shape (batch,) = {tuple(z_t.shape[:1])}, "
                             f"got {tuple(gamma_t.shape)}")
        return gamma_t

    def raw(self, z_t, gamma_t):
        """The backbone's own output and its kind (the energy is returned as the score)."""
        gamma_t = self._gamma(gamma_t, z_t)
        if self.parameterization == "energy":
            return score_from_energy(lambda z: self.backbone(z, gamma_t), z_t, create_graph=torch.is_grad_enabled()), "score"
        out = self.backbone(z_t, gamma_t)
        if self.parameterization == "logit":
            return x_from_binary_logit(out, z_t, gamma_t), "x"
        if out.shape != z_t.shape:
            raise ValueError(f"backbone output shape {tuple(out.shape)} does not match z_t {tuple(z_t.shape)}")
        return out, self.parameterization

    def predict(self, z_t, gamma_t, target: str = "x", dgamma_dt=None):
        """Prediction of ``target`` (one of :data:`~hlvm.parameterization.TARGETS`) at (z_t, γ_t)."""
        check_target(target, TARGETS)
        gamma_t = self._gamma(gamma_t, z_t)
        out, kind = self.raw(z_t, gamma_t)
        return convert(out, kind, target, z_t, gamma_t, dgamma_dt)

    def forward(self, z_t, gamma_t, dgamma_dt=None):
        """x̂θ(z_t; γ_t)."""
        return self.predict(z_t, gamma_t, "x", dgamma_dt)

    def eps_hat(self, z_t, gamma_t, dgamma_dt=None):
        """ε̂θ(z_t; γ_t)."""
        return self.predict(z_t, gamma_t, "eps", dgamma_dt)

    def score(self, z_t, gamma_t, dgamma_dt=None):
        """ŝθ(z_t; γ_t) ≈ ∇ log q(z_t)."""
        return self.predict(z_t, gamma_t, "score", dgamma_dt)
