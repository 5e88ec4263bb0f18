"""Weightings w(λ) of the diffusion loss, λ = −γ = log SNR (Kingma & Gao 2023, Table 1).

The weighted loss is L_w = ½ E_{t∼U(0,1)}[ w(λ_t) · (−dλ/dt) · ‖ε − ε̂‖² ].  Only w ≡ 1 is the
ELBO; a monotone w gives an ELBO of noise-augmented data (Kingma & Gao, §4), the others are
plain training objectives.  Each weighting is written for the schedule it was published with:

* ``elbo``     — w = 1 (VDM).
* ``sigmoid``  — w = sigmoid(k − λ), k = 2 by default (Kingma & Gao).
* ``v``        — v-prediction MSE under the cosine schedule: w = e^{−λ/2} (Salimans & Ho 2022).
* ``iddpm``    — ε-MSE under the cosine schedule: w = sech(λ/2) (Nichol & Dhariwal 2021).
* ``edm``      — w = N(λ; 2.4, 2.4²) · (e^{−λ} + σ_d²)/σ_d², σ_d = 0.5 (Karras et al. 2022).
* ``min-snr``  — ε-MSE with min-SNR-5 under cosine: w = sech(λ/2) · min(1, 5 e^{−λ}) (Hang et al. 2023).
"""

from __future__ import annotations

import math

import torch

__all__ = ["WEIGHTINGS", "get_weighting", "is_monotone"]


def _sigmoid(lam, k=2.0):
    return torch.sigmoid(k - lam)


def _v(lam):
    return torch.exp(-0.5 * lam)


def _iddpm(lam):
    return 1 / torch.cosh(0.5 * lam)


def _edm(lam, mu=2.4, sd=2.4, sigma_data=0.5):
    pdf = torch.exp(-0.5 * ((lam - mu) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
    return pdf * (torch.exp(-lam) + sigma_data**2) / sigma_data**2


def _min_snr(lam, gamma=5.0):
    return _iddpm(lam) * torch.clamp(gamma * torch.exp(-lam), max=1.0)


WEIGHTINGS = {"elbo": None, "sigmoid": _sigmoid, "v": _v, "iddpm": _iddpm, "edm": _edm, "min-snr": _min_snr}
_MONOTONE = {"elbo", "sigmoid", "v"}


def get_weighting(name: str):
    """The weighting function λ ↦ w(λ), or None for the ELBO (w ≡ 1)."""
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {name!r}; expected one of {list(WEIGHTINGS)}")
    return WEIGHTINGS[name]


def is_monotone(name: str) -> bool:
    """Whether w is non-increasing in λ (then L_w is an ELBO of noise-augmented data)."""
    get_weighting(name)
    return name in _MONOTONE
