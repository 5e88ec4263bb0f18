"""The PSIS Pareto k̂ of importance weights (Vehtari, Simpson, Gelman, Yao & Gabry,
*Pareto Smoothed Importance Sampling*, arXiv:1507.02646, 2015/2024): the estimated shape of a
generalized Pareto fit to the largest weights (Zhang & Stephens 2009).  k̂ ≈ 1/α when the weights'
tail is Pareto with index α; k̂ > 0.7 means an importance-sampling estimate such as the IWAE bound
is unreliable (the weights have too heavy a tail for the number of draws).
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["ParetoKWarning", "KHAT_THRESHOLD", "MIN_KHAT_SAMPLES", "pareto_khat", "khat_summary"]

#: k̂ above this: the importance-sampling estimate is unreliable (Vehtari et al. 2024).
KHAT_THRESHOLD = 0.7
#: fewest importance samples for which k̂ is defined: PSIS fits its tail to M = ⌊K/5⌋ draws, and
#: the Zhang–Stephens fit needs a first tail quartile above the tail's minimum, i.e. M ≥ 6
#: (with M = 5, the K = 25..29 of arviz_stats' own minimum of 5, every k̂ is NaN).
MIN_KHAT_SAMPLES = 30


class ParetoKWarning(UserWarning):
    """The largest Pareto k̂ exceeds 0.7: importance-weighted estimates are unreliable."""


def pareto_khat(log_weights, rtol: float | None = None) -> torch.Tensor:
    """The PSIS Pareto k̂ of importance weights, per example: (K, B) or (K,) → (B,) (or (1,)).

    Vehtari, Simpson, Gelman, Yao & Gabry, *Pareto Smoothed Importance Sampling* (2015/2024):
    fit a generalized Pareto distribution (Zhang & Stephens 2009, with the weakly informative
    prior of the 2024 version) to the M = min(⌊K/5⌋, ⌊3√K⌋) largest weights; its shape k̂
    estimates 1/α for weights with a Pareto(α) tail. k̂ < 0.5: finite variance; 0.5–0.7: usable;
    > 0.7: unreliable. Computed with ``arviz_stats.base.array_stats.psislw`` with r_eff = 1
    (independent draws).

    Orientation: ``arviz_stats``'s ``psislw`` takes *log-likelihood* values and smooths
    *their negatives* (LOO weights are 1/p(y_i | θ)), so the log-weights are passed negated —
    checked in the tests on Pareto(α) weights, where the other sign gives k̂ < 0. (Its
    ``pareto_khat(..., log_weights=True)`` does not exponentiate and fits the tail of log w
    instead; it is not used here.)

    Degenerate weights: if an example's log-weights span at most ``rtol · max(1, |max log w|)``
    (default rtol = √eps of the dtype), importance sampling is exact to working precision and k̂
    is reported as −inf (no tail). ``arviz_stats`` raises ``ValueError('All tail values are the
    same')`` for exactly constant weights and its fit to rounding noise is undefined (NaN).
    Non-finite inputs other than −inf give NaN.

    Raises:
        ValueError: if K < 30 (:data:`MIN_KHAT_SAMPLES`: the tail fit needs ≥ 6 draws).
    """
    from arviz_stats.base import array_stats

    lw = torch.as_tensor(log_weights)
    squeeze = lw.dim() == 1
    if squeeze:
        lw = lw.unsqueeze(1)
    if lw.dim() != 2:
        raise ValueError(f"log_weights must be (K,) or (K, B), got shape {tuple(lw.shape)}")
    K, B = lw.shape
    if K < MIN_KHAT_SAMPLES:
        raise ValueError(f"Pareto k̂ needs at least {MIN_KHAT_SAMPLES} importance samples, got K={K}")
    if rtol is None:
        rtol = math.sqrt(torch.finfo(lw.dtype).eps) if torch.is_floating_point(lw) else 1.5e-8
    a = lw.detach().to("cpu", torch.float64).numpy()
    khat = np.full(B, np.nan)
    top = a.max(0)
    ok = ~np.isnan(a).any(0) & (top < np.inf) & (top > -np.inf)
    span = np.where(ok, top - np.where(ok, a, 0).min(0), np.nan)
    degenerate = ok & (span <= rtol * np.maximum(1.0, np.abs(np.where(ok, top, 0))))
    khat[degenerate] = -np.inf
    fit = ok & ~degenerate
    if fit.any():
        with np.errstate(all="ignore"):
            _, k = array_stats.psislw(-a[:, fit], r_eff=1.0, axis=0)
        khat[fit] = np.asarray(k, dtype=np.float64).reshape(-1)
    out = torch.as_tensor(khat, dtype=lw.dtype if torch.is_floating_point(lw) else torch.float64, device=lw.device)
    return out


def khat_summary(khat: torch.Tensor) -> dict:
    """Max, mean (finite values) and the fractions > 0.7, degenerate (−inf) and NaN of per-example k̂."""
    k = khat.detach().cpu().double()
    valid = k[~torch.isnan(k)]
    finite = valid[torch.isfinite(valid)]
    return {
        "khat_max": float(valid.max()) if valid.numel() else float("nan"),
        "khat_mean": float(finite.mean()) if finite.numel() else (float("-inf") if valid.numel() else float("nan")),
        "khat_frac_gt_0.7": float((k > KHAT_THRESHOLD).double().mean()) if k.numel() else 0.0,
        "khat_frac_degenerate": float(torch.isneginf(k).double().mean()) if k.numel() else 0.0,
        "khat_frac_nan": float(torch.isnan(k).double().mean()) if k.numel() else 0.0,
    }
