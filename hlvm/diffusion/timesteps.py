"""Timestep samplers for the Monte Carlo diffusion term: uniform, antithetic, importance.

Each returns ``(t, weight)`` for a batch: t ∈ [0, 1) (continuous; the same measure as (0, 1], and
γ(0) is a level of the chain) or t = i/T with i ∈ {1..T}, so t ∈ (0, 1] (discrete: step i runs from
s = (i−1)/T to t), and importance weights such that E[weight · term(t)] equals the uniform average —
so every sampler is an unbiased estimator of the same diffusion loss.

* ``uniform``    — i.i.d. t ∼ U(0, 1) (or i ∼ U{1..T}).
* ``antithetic`` — VDM's low-discrepancy sampler: t_b = (u + b/B) mod 1 with one shared u.
* ``importance`` — Nichol & Dhariwal's loss-aware sampler: K bins, p_k ∝ sqrt(E[term²]) from a
  running history, mixed with the uniform density (a *defensive* mixture, Hesterberg 1995:
  p_k = (1 − λ) p̃_k + λ/K, λ = ``uniform_share``), uniform within a bin, weight 1/(K p_k);
  uniform until every bin has ``warmup`` observations.

.. warning:: Without the defensive share the history feeds on itself: a bin whose first terms were
    ≈ 0 gets p ≈ 0, is never drawn again, and its history never learns that the model (or a learned
    schedule) has changed there — the estimate then silently drops that part of the integral.
    Measured on ``hlvm demo``'s VDM (learned-density schedule, 2,000 steps): 36 of 64 bins starved,
    training "ELBO" −35.7 nats against −101.05 for the same model scored with stratified times.  With
    λ = 0.1 every weight is at most 1/λ = 10 and every bin is drawn about every 5 steps at batch 128.

References: Kingma et al. 2021, Appendix I.2; Nichol & Dhariwal 2021, §3.3; Hesterberg,
*Weighted average importance sampling and defensive mixture distributions*, Technometrics 1995.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TimestepSampler", "SAMPLERS"]

SAMPLERS = ("uniform", "antithetic", "importance")


class TimestepSampler(nn.Module):
    """Draw diffusion times for a batch.  ``T=None`` is continuous time.

    The importance sampler's history lives in buffers, so it is saved with a checkpoint.
    """

    def __init__(self, kind: str = "antithetic", T: int | None = None, bins: int = 64, warmup: int = 10,
                 decay: float = 0.99, uniform_share: float = 0.1):
        super().__init__()
        if kind not in SAMPLERS:
            raise ValueError(f"unknown timestep sampler {kind!r}; expected one of {list(SAMPLERS)}")
        if not 0 < uniform_share <= 1:
            raise ValueError(f"uniform_share must be in (0, 1] (the defensive mixture's weight), got {uniform_share!r}")
        self.uniform_share = uniform_share
        if T is not None and T < 1:
            raise ValueError(f"T must be >= 1 or None (continuous time), got {T}")
        self.kind, self.T = kind, T
        k = T if (T is not None and T <= 4096) else bins
        self.warmup, self.decay = warmup, decay
        self.register_buffer("sq_mean", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("count", torch.zeros(k, dtype=torch.long))

    @property
    def bins(self) -> int:
        return self.sq_mean.numel()

    def _uniform01(self, n, device, dtype, generator=None):
        if self.kind == "antithetic":
            u = torch.rand((), device=device, dtype=dtype, generator=generator)
            return torch.remainder(u + torch.arange(n, device=device, dtype=dtype) / n, 1.0)
        return torch.rand(n, device=device, dtype=dtype, generator=generator)

    def forward(self, n: int, device=None, dtype=torch.float32, generator=None):
        """Return ``(t, weight)`` of shape (n,)."""
        if self.kind == "importance" and bool((self.count >= self.warmup).all()):
            p = self.sq_mean.sqrt()
            p = p / p.sum() if bool(p.sum() > 0) else torch.full_like(p, 1.0 / self.bins)
            p = (1 - self.uniform_share) * p + self.uniform_share / self.bins  # defensive: p_k ≥ λ/K
            k = torch.multinomial(p.to(device=device), n, replacement=True, generator=generator)
            w = (1.0 / (self.bins * p.to(device=device)[k])).to(dtype)
            u = torch.rand(n, device=device, dtype=dtype, generator=generator)
            pos = (k.to(dtype) + u) / self.bins  # continuous position in [0, 1)
        else:
            pos = self._uniform01(n, device, dtype, generator)
            w = torch.ones(n, device=device, dtype=dtype)
        if self.T is None:
            return pos, w
        i = (pos * self.T).floor().clamp(max=self.T - 1) + 1  # i ∈ {1..T}
        return i / self.T, w

    @torch.no_grad()
    def update(self, t: torch.Tensor, term: torch.Tensor) -> None:
        """Record per-example diffusion terms (unweighted) at times t for the importance sampler."""
        if self.kind != "importance":
            return
        if self.T is not None and self.bins == self.T:
            k = (t * self.T).round().long().clamp(1, self.T) - 1
        else:
            k = (t * self.bins).floor().long().clamp(0, self.bins - 1)
        k, sq = k.reshape(-1).cpu(), term.detach().double().reshape(-1).pow(2).cpu()
        for b in torch.unique(k).tolist():
            v = sq[k == b].mean()
            if self.count[b] == 0:
                self.sq_mean[b] = v
            else:
                self.sq_mean[b] = self.decay * self.sq_mean[b] + (1 - self.decay) * v
            self.count[b] += 1
