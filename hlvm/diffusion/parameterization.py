"""Parameterizations of the denoiser: x̂, ε̂, ŝ, energy E, v̂ and flow velocity û.

Given z_t = α_t x + σ_t ε (variance preserving, α² + σ² = 1), every prediction target is an
affine function of any other one and z_t:

* x̂ = (z − σ ε̂)/α = (z + σ² ŝ)/α = α z − σ v̂ = α z − 2 û/(α γ')
* ε̂ = (z − α x̂)/σ = −σ ŝ,   ŝ = (α x̂ − z)/σ² = −∇_z E
* v̂ = α ε̂ − σ x̂   (Salimans & Ho 2022)
* û = dz_t/dt = α' x̂ + σ' ε̂ = ½ γ' α σ v̂,  since α' = −½ γ' α σ² and σ' = ½ γ' σ α²

For binary data x ∈ {−1, 1} the ``logit`` parameterization builds in the likelihood: the exact
posterior of one pixel given z_t has logit 2αz/σ² + prior logit, so a backbone predicting half the
(context-dependent) prior logit h gives x̂ = tanh(αz/σ² + h).  At h = 0 this is already the Bayes
denoiser of independent fair coins; the network only learns the correlations.  Like the energy it is
source-only.

The energy is a *source-only* parameterization: a backbone may output a scalar E(z) per example
and the score follows by autograd, but a general score field need not be conservative, so
nothing converts *to* an energy.

Loss weights (MSE between target and prediction, z_t fixed): the errors are proportional,
x − x̂ = −(σ/α)(ε − ε̂) = −σ (v − v̂), so with SNR = α²/σ²

    ‖ε − ε̂‖² = SNR · ‖x − x̂‖²,   ‖v − v̂‖² = (1 + SNR) · ‖x − x̂‖² = ‖ε − ε̂‖² / α²,
    ‖s − ŝ‖² = ‖ε − ε̂‖² / σ²,     ‖u − û‖² = (½ γ' α σ)² ‖v − v̂‖².

(The printed Table 4 of De Sousa Ribeiro & Glocker gives a different v-weight; the relations
above are derived here and checked numerically in ``tests/diffusion/test_parameterization.py``.)

References:
    Kingma et al. 2021 (VDM), Appendix; Salimans & Ho 2022 (*Progressive Distillation*, v-pred);
    Song et al. 2021 (score SDE); Lipman et al. 2023 / Liu et al. 2023 (flow velocity);
    De Sousa Ribeiro & Glocker 2024, §3.
"""

from __future__ import annotations

from typing import Callable

import torch

from .gaussian import alpha_sigma, pad_gamma

__all__ = ["TARGETS", "SOURCES", "to_x", "from_x", "convert", "score_from_energy", "loss_weight",
           "check_target", "resolve_source", "x_from_binary_logit"]

#: prediction targets that can be converted to and from one another
TARGETS = ("x", "eps", "score", "v", "flow")
#: targets a backbone may predict (energy converts to the others via autograd; logit is for {−1, 1} data)
SOURCES = TARGETS + ("energy", "logit")


def check_target(name: str, allowed=TARGETS) -> str:
    if name not in allowed:
        raise ValueError(f"unknown parameterization {name!r}; expected one of {list(allowed)}")
    return name


def resolve_source(name: str, likelihood_kind: str) -> str:
    """What a backbone predicts, ``name`` checked against :data:`SOURCES`; ``"auto"`` is the zoo's rule
    for every denoiser (the VDM's and the top-down HVAE's denoiser transitions alike): the logits of x
    for binary data (x̂ bounded; ε-prediction's x̂ = (z − σε̂)/α divides by a small α at low SNR), ε
    otherwise."""
    if name == "auto":
        return "logit" if likelihood_kind == "binary" else "eps"
    return check_target(name, SOURCES)


def _need_dgamma(dgamma, what):
    if dgamma is None:
        raise ValueError(f"the flow parameterization needs dgamma_dt (γ'(t)) to {what}")
    return dgamma


def to_x(pred: torch.Tensor, kind: str, z_t: torch.Tensor, gamma_t: torch.Tensor,
         dgamma_dt: torch.Tensor | None = None) -> torch.Tensor:
    """Convert a prediction of type ``kind`` into the data prediction x̂."""
    check_target(kind)
    if pred.shape != z_t.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} does not match z_t shape {tuple(z_t.shape)}")
    g = pad_gamma(gamma_t, z_t)
    alpha, sigma = alpha_sigma(g)
    if kind == "x":
        return pred
    if kind == "eps":
        return (z_t - sigma * pred) / alpha
    if kind == "score":
        return (z_t + sigma**2 * pred) / alpha
    if kind == "v":
        return alpha * z_t - sigma * pred
    dg = pad_gamma(_need_dgamma(dgamma_dt, "convert from flow"), z_t)
    return alpha * z_t - 2 * pred / (alpha * dg)  # kind == "flow"


def from_x(x_hat: torch.Tensor, kind: str, z_t: torch.Tensor, gamma_t: torch.Tensor,
           dgamma_dt: torch.Tensor | None = None) -> torch.Tensor:
    """Convert the data prediction x̂ into a prediction of type ``kind``."""
    check_target(kind)
    if x_hat.shape != z_t.shape:
        raise ValueError(f"x_hat shape {tuple(x_hat.shape)} does not match z_t shape {tuple(z_t.shape)}")
    g = pad_gamma(gamma_t, z_t)
    alpha, sigma = alpha_sigma(g)
    if kind == "x":
        return x_hat
    eps_hat = (z_t - alpha * x_hat) / sigma
    if kind == "eps":
        return eps_hat
    if kind == "score":
        return (alpha * x_hat - z_t) / sigma**2
    v_hat = alpha * eps_hat - sigma * x_hat
    if kind == "v":
        return v_hat
    dg = pad_gamma(_need_dgamma(dgamma_dt, "convert to flow"), z_t)
    return 0.5 * dg * alpha * sigma * v_hat  # kind == "flow"


def convert(pred: torch.Tensor, src: str, dst: str, z_t: torch.Tensor, gamma_t: torch.Tensor,
            dgamma_dt: torch.Tensor | None = None) -> torch.Tensor:
    """Convert a prediction from parameterization ``src`` to ``dst`` (both in :data:`TARGETS`)."""
    check_target(src)
    check_target(dst)
    if src == dst:
        return pred
    return from_x(to_x(pred, src, z_t, gamma_t, dgamma_dt), dst, z_t, gamma_t, dgamma_dt)


def x_from_binary_logit(h: torch.Tensor, z_t: torch.Tensor, gamma_t: torch.Tensor) -> torch.Tensor:
    """x̂ = E[x | z_t] = tanh(α z/σ² + h) for x ∈ {−1, 1} with prior logit 2h (see module docstring)."""
    if h.shape != z_t.shape:
        raise ValueError(f"prediction shape {tuple(h.shape)} does not match z_t shape {tuple(z_t.shape)}")
    g = pad_gamma(gamma_t, z_t)
    # α/σ² = sqrt(sigmoid(−γ)) / sigmoid(γ)
    return torch.tanh(z_t * torch.sigmoid(-g).sqrt() / torch.sigmoid(g) + h)


def score_from_energy(energy_fn: Callable[[torch.Tensor], torch.Tensor], z_t: torch.Tensor,
                      create_graph: bool = True) -> torch.Tensor:
    """ŝ(z) = −∇_z E(z) by autograd; ``energy_fn`` maps z of shape (B, ...) to energies (B,)."""
    with torch.enable_grad():
        z = z_t if z_t.requires_grad else z_t.detach().requires_grad_(True)
        energy = energy_fn(z)
        if energy.shape != z.shape[:1]:
            raise ValueError(f"energy must have shape (batch,) = {tuple(z.shape[:1])}, got {tuple(energy.shape)}")
        (grad,) = torch.autograd.grad(energy.sum(), z, create_graph=create_graph)
    return -grad


def loss_weight(src: str, dst: str, gamma_t: torch.Tensor, dgamma_dt: torch.Tensor | None = None) -> torch.Tensor:
    """Weight w with ‖dst − dst̂‖² = w · ‖src − srĉ‖² for the same z_t (see module docstring).

    Derived from the per-target scale factors relative to the x-error:
    x: 1, ε: α/σ, v: 1/σ, score: α/σ², flow: ½ γ' α.
    """
    check_target(src)
    check_target(dst)
    alpha, sigma = alpha_sigma(torch.as_tensor(gamma_t))

    def factor(kind):
        # |kind − kind̂| / |x − x̂|
        if kind == "x":
            return torch.ones_like(alpha)
        if kind == "eps":
            return alpha / sigma
        if kind == "v":
            return 1 / sigma
        if kind == "score":
            return alpha / sigma**2
        return 0.5 * _need_dgamma(dgamma_dt, "weigh a flow loss") * alpha  # flow

    return (factor(dst) / factor(src)) ** 2
