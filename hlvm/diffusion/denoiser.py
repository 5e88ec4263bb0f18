"""The shared denoiser x̂θ(z_t; γ_t): one interface, whatever the network predicts.

:class:`XPredictor` is what every diffusion chain, sampler and bound calls: ``predict(z_t, γ_t,
target)`` for any target (x, ε, score, v, flow), with ``x̂`` as the call itself.  :class:`Denoiser`
turns any backbone into one through the affine conversions of :mod:`hlvm.diffusion.parameterization`
(k-diffusion's ``Denoiser``: a parameterization is a change of scalings; Karras et al. 2022, §2);
:class:`~hlvm.diffusion.oracle.GaussianOracle` is another, in closed form.  Every model that needs a
denoiser calls one such object, so the generative transitions p(z_s | z_t) = q(z_s | z_t,
x = x̂θ(z_t; t)) of all levels share its weights (De Sousa Ribeiro & Glocker, §2.4).
"""

from __future__ import annotations

import torch
from torch import nn

from .gaussian import batch_gamma
from .parameterization import SOURCES, TARGETS, check_target, convert, score_from_energy, x_from_binary_logit

__all__ = ["XPredictor", "Denoiser"]


class XPredictor(nn.Module):
    """Anything that predicts the clean data from a noisy latent: subclasses implement
    :meth:`predict`; x̂, ε̂ and ŝ follow.

    Attributes:
        parameterization: what the underlying function predicts natively (``"x"`` by default).
    """

    parameterization = "x"

    @property
    def needs_dgamma(self) -> bool:
        """True when predictions need γ'(t) (the flow velocity u = dz_t/dt depends on it)."""
        return self.parameterization == "flow"

    def predict(self, z_t, gamma_t, target: str = "x", dgamma_dt=None):  # pragma: no cover - abstract
        """Prediction of ``target`` (one of :data:`~hlvm.diffusion.parameterization.TARGETS`) at (z_t, γ_t)."""
        raise NotImplementedError

    def forward(self, z_t, gamma_t, dgamma_dt=None):
        """x̂θ(z_t; γ_t)."""
        return self.predict(z_t, gamma_t, "x", dgamma_dt)

    def eps_hat(self, z_t, gamma_t, dgamma_dt=None):
        """ε̂θ(z_t; γ_t)."""
        return self.predict(z_t, gamma_t, "eps", dgamma_dt)

    def score(self, z_t, gamma_t, dgamma_dt=None):
        """ŝθ(z_t; γ_t) ≈ ∇ log q(z_t)."""
        return self.predict(z_t, gamma_t, "score", dgamma_dt)


class Denoiser(XPredictor):
    """Wrap ``backbone(z_t, gamma_t)`` predicting ``parameterization`` into x̂θ(z_t; γ_t).

    Args:
        backbone: a module mapping (z_t of shape (B, ...), γ_t of shape (B,)) to a tensor of z_t's
            shape — or, for ``"energy"``, to energies of shape (B,).
        parameterization: what the backbone predicts, one of
            ``x``, ``eps``, ``score``, ``v``, ``flow``, ``energy``, or ``logit`` (binary data in
            {−1, 1}: x̂ = tanh(αz/σ² + out), see :mod:`hlvm.diffusion.parameterization`).

    .. warning:: ``flow`` needs γ'(t), which γ alone does not determine: pass ``dgamma_dt``.
    """

    def __init__(self, backbone: nn.Module, parameterization: str = "eps"):
        super().__init__()
        self.backbone = backbone
        self.parameterization = check_target(parameterization, SOURCES)

    def raw(self, z_t, gamma_t):
        """The backbone's own output and its kind (the energy is returned as the score)."""
        gamma_t = batch_gamma(gamma_t, z_t)
        if self.parameterization == "energy":
            return score_from_energy(lambda z: self.backbone(z, gamma_t), z_t, create_graph=torch.is_grad_enabled()), "score"
        out = self.backbone(z_t, gamma_t)
        if self.parameterization == "logit":
            return x_from_binary_logit(out, z_t, gamma_t), "x"
        if out.shape != z_t.shape:
            raise ValueError(f"backbone output shape {tuple(out.shape)} does not match z_t {tuple(z_t.shape)}")
        return out, self.parameterization

    def predict(self, z_t, gamma_t, target: str = "x", dgamma_dt=None):
        check_target(target, TARGETS)
        gamma_t = batch_gamma(gamma_t, z_t)
        out, kind = self.raw(z_t, gamma_t)
        return convert(out, kind, target, z_t, gamma_t, dgamma_dt)
