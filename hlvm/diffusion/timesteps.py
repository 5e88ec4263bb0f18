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

import contextlib

import torch
from torch import nn

__all__ = ["TimestepSampler", "SAMPLERS", "deferred_updates"]

SAMPLERS = ("uniform", "antithetic", "importance")

#: while a :func:`deferred_updates` block runs: the ``(sampler, t, term)`` of every history update
_DEFERRED: list | None = None


@contextlib.contextmanager
def deferred_updates():
    """Inside the block, :meth:`TimestepSampler.update` records its arguments in the yielded list
    instead of writing the history: the recorded step (:mod:`hlvm.training.compile`) returns them
    from its graph and applies them after each replay, so the graph itself writes into no buffer."""
    global _DEFERRED
    saved, _DEFERRED = _DEFERRED, []
    try:
        yield _DEFERRED
    finally:
        _DEFERRED = saved


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
        """Return ``(t, weight)`` of shape (n,).

        Branch-free (no value leaves the device): the recorded step (:mod:`hlvm.training.compile`)
        can record it, and on CUDA it costs no synchronisation."""
        if self.kind == "importance":
            pos, w = self._importance(n, device, dtype, generator)
        else:
            pos = self._uniform01(n, device, dtype, generator)
            w = torch.ones(n, device=device, dtype=dtype)
        if self.T is None:
            return pos, w
        i = (pos * self.T).floor().clamp(max=self.T - 1) + 1  # i ∈ {1..T}
        return i / self.T, w

    def _importance(self, n, device, dtype, generator):
        """Bins from the defensive mixture p_k = (1 − λ) p̃_k + λ/K (uniform until every bin has its
        ``warmup`` observations), uniform within a bin, weight 1/(K p_k)."""
        root = self.sq_mean.sqrt()
        total = root.sum()
        p_hat = torch.where(total > 0, root / total.clamp(min=torch.finfo(root.dtype).tiny), 1.0 / self.bins)
        mixed = (1 - self.uniform_share) * p_hat + self.uniform_share / self.bins  # defensive: p_k ≥ λ/K
        p = torch.where((self.count >= self.warmup).all(), mixed, torch.full_like(mixed, 1.0 / self.bins)).to(device=device)
        k = torch.multinomial(p, n, replacement=True, generator=generator)
        w = (1.0 / (self.bins * p[k])).to(dtype)
        u = torch.rand(n, device=device, dtype=dtype, generator=generator)
        return (k.to(dtype) + u) / self.bins, w  # continuous position in [0, 1)

    @torch.no_grad()
    def update(self, t: torch.Tensor, term: torch.Tensor) -> None:
        """Record per-example diffusion terms (unweighted) at times t for the importance sampler: each
        bin's running mean of term² (its batch mean, decayed by ``decay``; the first one taken as is)."""
        if self.kind != "importance":
            return
        if _DEFERRED is not None:
            _DEFERRED.append((self, t.detach(), term.detach()))
            return
        if self.T is not None and self.bins == self.T:
            k = (t * self.T).round().long().clamp(1, self.T) - 1
        else:
            k = (t * self.bins).floor().long().clamp(0, self.bins - 1)
        k, sq = k.reshape(-1).to(self.sq_mean.device), term.detach().to(self.sq_mean).reshape(-1).pow(2)
        sums = torch.zeros_like(self.sq_mean).index_add_(0, k, sq)
        seen = torch.zeros_like(self.sq_mean).index_add_(0, k, torch.ones_like(sq))
        v = sums / seen.clamp(min=1)
        new = torch.where(self.count == 0, v, self.decay * self.sq_mean + (1 - self.decay) * v)
        self.sq_mean.copy_(torch.where(seen > 0, new, self.sq_mean))
        self.count.add_((seen > 0).long())
