"""Active units (Burda, Grosse & Salakhutdinov 2016, §5.2): latent dimensions u whose posterior
mean moves with the data, Cov_x(E_q[u | x]) > 0.01."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro import poutine

from ..programs.chain import StockChains
from ..programs.roles import data_roles
from .weights import data_dim, guide_scored, is_factor, programs_of

__all__ = ["active_units", "ActiveUnits"]


def _normal_loc(fn):
    """The loc of a (possibly Independent/Masked) Normal, or None."""
    while isinstance(fn, (dist.Independent, torch.distributions.Independent, dist.MaskedDistribution)):
        fn = fn.base_dist
    if isinstance(fn, torch.distributions.Normal):
        return fn.loc.expand(fn.batch_shape)
    return None


class _RunningVariance:
    """Per-dimension mean/variance over examples, merged batch by batch (Chan et al. 1979)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, None

    def update(self, v: torch.Tensor):  # v: (B, d)
        v = v.detach().to(torch.float64)
        nb = v.shape[0]
        mb = v.mean(0)
        m2b = (v - mb).pow(2).sum(0)
        if self.n == 0:
            self.n, self.mean, self.m2 = nb, mb, m2b
            return
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * nb / n
        self.m2 = self.m2 + m2b + delta.pow(2) * self.n * nb / n
        self.n = n

    def variance(self) -> torch.Tensor:
        return self.m2 / max(self.n - 1, 1)


class ActiveUnits:
    """Accumulates E_q[u | x] of every Normal guide latent over batches of guide traces."""

    def __init__(self, plate: str):
        self.plate, self.stats = plate, {}

    def add(self, guide_trace, batch: int) -> None:
        for name, site in guide_trace.nodes.items():
            if site["type"] != "sample" or site["is_observed"] or not guide_scored(site) or is_factor(site):
                continue
            loc = _normal_loc(site["fn"])
            if loc is None:
                continue
            # loc has the site's batch + event shape; the plate's dim counts within the batch shape
            full_dim = data_dim(site, self.plate) - len(site["fn"].event_shape)
            v = loc.movedim(full_dim, 0).reshape(batch, -1)  # (..., B, ..., event) -> (B, d)
            self.stats.setdefault(name, _RunningVariance()).update(v)

    def counts(self, threshold: float = 0.01) -> dict:
        """{site: number of dimensions with Cov_x(E_q[u | x]) > threshold}."""
        return {name: int((s.variance() > threshold).sum().item()) for name, s in self.stats.items()}


def active_units(model, x: torch.Tensor, threshold: float = 0.01, batch_size: int = 500, *,
                 plate: str | None = None, context=None) -> dict:
    """Active units per latent site (Burda et al. 2016, §5.2): ``{site: count}``.

    A dimension u of a latent site whose guide distribution is a (diagonal) Normal is active if
    Cov_x(E_q[u | x]) > ``threshold``, with E_q[u | x] read from the traced guide distribution's
    ``loc`` and the variance taken over the examples of ``x``. For a guide site that depends on
    other sampled latents (top-down hierarchies) the loc is conditional on one draw of those.
    Sites with non-Normal guides are not counted. ``context``: a DiffusionELBO whose collapsed
    program is traced (otherwise the stock program).  ``plate``: the per-example plate (default: read
    from the model, :mod:`hlvm.programs.roles`).
    """
    _, guide_fn, _ = programs_of(model)
    acc = ActiveUnits(plate or data_roles(model, x).plate)
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size]
        with context.collapse() if hasattr(context, "collapse") else StockChains():
            tr = poutine.trace(guide_fn).get_trace(xb)
        acc.add(tr, xb.shape[0])
    return acc.counts(threshold)
