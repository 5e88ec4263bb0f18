"""Stochastic-layer building blocks for VAEs and hierarchical VAEs.

* :func:`mlp` — a plain SiLU MLP.
* :class:`GaussianLayer` — h ↦ (μ, σ) of a diagonal Gaussian, σ = softplus(·) + σ_min.
* :func:`precision_merge` — the ladder VAE's precision-weighted combination of a bottom-up
  and a top-down Gaussian (Sønderby et al. 2016, eq. 18–19).

References:
    Kingma & Welling 2014 (VAE); Rezende et al. 2014; Sønderby et al. 2016 (Ladder VAE);
    Vahdat & Kautz 2020 (NVAE, residual posterior).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .likelihoods import at_least_float32

__all__ = ["mlp", "GaussianLayer", "precision_merge", "deterministic"]


def mlp(d_in: int, d_out: int, hidden: int = 256, depth: int = 2) -> nn.Sequential:
    """``depth`` hidden SiLU layers of width ``hidden``, then a linear output."""
    if depth < 0 or hidden < 1:
        raise ValueError(f"need depth >= 0 and hidden >= 1, got depth={depth}, hidden={hidden}")
    layers, d = [], d_in
    for _ in range(depth):
        layers += [nn.Linear(d, hidden), nn.SiLU()]
        d = hidden
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


class GaussianLayer(nn.Module):
    """h ↦ (loc, scale) of N(loc, diag(scale²)); input flattened to (B, d_in)."""

    def __init__(self, d_in: int, d_out: int, hidden: int = 256, depth: int = 1, min_scale: float = 1e-3):
        super().__init__()
        self.net = mlp(d_in, 2 * d_out, hidden, depth)
        self.min_scale = min_scale

    def forward(self, h):
        out = at_least_float32(self.net(h.flatten(1)))  # the Gaussian's parameters in float32 under autocast
        loc, raw = out.chunk(2, dim=-1)  # (B, 2·d_out) -> 2 × (B, d_out)
        return loc, F.softplus(raw) + self.min_scale


def precision_merge(loc_a, scale_a, loc_b, scale_b):
    """Product of two Gaussians (up to normalisation): precisions add, means are precision-weighted."""
    pa, pb = scale_a.pow(-2), scale_b.pow(-2)
    var = 1 / (pa + pb)
    return var * (loc_a * pa + loc_b * pb), var.sqrt()


def deterministic(name: str, value, event_dim: int = 1):
    """Record a deterministic guide quantity (e.g. a ladder's bottom-up d_l) as a site.

    Like :func:`pyro.deterministic`, but marked auxiliary so that ELBOs treat a guide-only
    deterministic as contributing nothing (``TraceMeanField_ELBO`` insists on it), while
    rendering still draws it (dashed).
    """
    import pyro
    import pyro.distributions as dist

    return pyro.sample(name, dist.Delta(value, event_dim=event_dim),
                       infer={"is_auxiliary": True, "_deterministic": True})
