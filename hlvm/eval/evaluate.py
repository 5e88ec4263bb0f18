"""Evaluation of any hlvm model/guide pair: test ELBO, its breakdown, IWAE bounds, PSIS k̂, active units.

Every model in hlvm bounds the same discrete log-likelihood (see :mod:`hlvm.likelihoods`), so the
numbers below are comparable across VAE, hierarchical VAEs and VDMs:

* **ELBO** in nats per example and bits per dimension, ``bpd = nats / (D · ln 2)`` with D the
  number of data dimensions (Kingma et al. 2021, §5);
* its **breakdown** — for diffusion chains evaluated by :class:`~hlvm.elbo.DiffusionELBO`, the
  reconstruction / prior / diffusion terms of VDM (Kingma et al. 2021, eqs. 11–17); otherwise the
  per-site KL terms E_q[log q(z_l | ·) − log p(z_l | ·)] and the reconstruction −E_q log p(x | ·);
* the **importance-weighted bound** (Burda, Grosse & Salakhutdinov 2016, eq. 8)

      log p(x) ≥ IWAE_K(x) = E[ log (1/K) Σ_k p(x, z_k) / q(z_k | x) ],   z_k ∼ q(· | x),

  which equals the ELBO for K = 1 and is non-decreasing in K (their Theorem 1);
* the **Pareto k̂** of those importance weights (Vehtari, Simpson, Gelman, Yao & Gabry,
  *Pareto Smoothed Importance Sampling*, arXiv:1507.02646, 2015/2024): the estimated shape of a
  generalized Pareto fit to the largest weights (Zhang & Stephens 2009). k̂ ≈ 1/α when the weights'
  tail is Pareto with index α; k̂ > 0.7 means the IWAE estimate is unreliable (the weights have
  too heavy a tail for the number of draws), reported with :class:`ParetoKWarning`;
* **active units** (Burda et al. 2016, §5.2): latent dimensions u with Cov_x(E_q[u | x]) > 0.01.

Importance weights always use the *stock* Pyro program (no :class:`~hlvm.elbo.DiffusionELBO`
collapsing): for a VDM that is its T-step chain, or in continuous time the ``trace_steps``-step
discretization (see :func:`per_example_log_weights`).

Nothing here trains; everything runs under :func:`torch.no_grad` in :func:`evaluate`.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager, nullcontext

import numpy as np
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample
from torch import nn

from ..data import DataSplit
from ..programs.chain import DiffusionChain, analytic_context
from ..programs.elbo import DiffusionELBO

__all__ = [
    "ParetoKWarning", "KHAT_THRESHOLD", "MIN_KHAT_SAMPLES", "per_example_log_weights", "iwae_bound",
    "pareto_khat", "per_site_terms", "active_units", "evaluate",
]

#: k̂ above this: the importance-sampling estimate is unreliable (Vehtari et al. 2024).
KHAT_THRESHOLD = 0.7
#: fewest importance samples for which k̂ is defined: PSIS fits its tail to M = ⌊K/5⌋ ≥ 5 draws.
MIN_KHAT_SAMPLES = 25
#: default cap on rows (importance samples × examples) per vectorized model/guide pass
_MAX_ROWS = 8192


class ParetoKWarning(UserWarning):
    """The largest Pareto k̂ exceeds 0.7: importance-weighted estimates are unreliable."""


# --------------------------------------------------------------------------- helpers
def _programs(model, guide=None):
    """(model_fn, guide_fn, owner module or None) from a PyroModule or two callables."""
    if guide is None:
        if not (hasattr(model, "model") and hasattr(model, "guide")):
            raise TypeError("pass a module with .model and .guide, or a model callable and a guide callable")
        return model.model, model.guide, model if isinstance(model, nn.Module) else None
    owner = model if isinstance(model, nn.Module) else getattr(model, "__self__", None)
    return model, guide, owner if isinstance(owner, nn.Module) else None


def _chains(owner) -> list:
    return [] if owner is None else [m for m in owner.modules() if isinstance(m, DiffusionChain)]


@contextmanager
def _override_steps(owner, steps):
    """Temporarily set ``trace_steps`` of every continuous-time chain of ``owner``."""
    if steps is None:
        yield
        return
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    chains = [c for c in _chains(owner) if c.T is None]
    if not chains:
        raise ValueError("steps overrides trace_steps of continuous-time DiffusionChains; the model has none")
    old = [c.trace_steps for c in chains]
    try:
        for c in chains:
            c.trace_steps = steps
        yield
    finally:
        for c, s in zip(chains, old):
            c.trace_steps = s


def _data_dim(site, plate: str) -> int:
    for frame in site["cond_indep_stack"]:
        if frame.name == plate:
            return frame.dim
    raise ValueError(f"site {site['name']!r} is not inside pyro.plate({plate!r}): per-example terms are undefined "
                     "(global latents cannot be importance-weighted per example)")


def _per_example(value: torch.Tensor, site, plate: str, batch: int) -> torch.Tensor:
    """Sum a site-shaped tensor (batch shape) over every dim but the plate's: → (batch,)."""
    dim = _data_dim(site, plate)
    if value.dim() < -dim:
        value = value.reshape((1,) * (-dim - value.dim()) + value.shape)
    value = value.movedim(dim, 0)  # (..., B, ...) -> (B, ...)
    if value.shape[0] != batch:
        value = value.expand((batch,) + value.shape[1:])
    return value.reshape(batch, -1).sum(-1)


def _site_log_prob(site, plate: str, batch: int) -> torch.Tensor:
    """log p(value) of one site per example (mask applied; subsample scale ignored)."""
    lp = site["fn"].log_prob(site["value"])
    lp = scale_and_mask(lp, 1.0, site["mask"])
    if not torch.is_tensor(lp):
        lp = torch.as_tensor(lp)
    return _per_example(lp, site, plate, batch)


def _is_factor(site) -> bool:
    fn = site["fn"]
    while isinstance(fn, dist.MaskedDistribution):
        fn = fn.base_dist
    return isinstance(fn, dist.Unit)


def _guide_scored(site) -> bool:
    """Guide sites that enter log q: all sample sites except auxiliary non-factor ones (e.g. the
    top-down HVAE's deterministic ladder states d_l, Delta sites with log-density 0)."""
    if site["type"] != "sample" or site_is_subsample(site):
        return False
    return _is_factor(site) or not site["infer"].get("is_auxiliary", False)


def _traces(model_fn, guide_fn, x, *, context=None):
    """One guide trace and the model replayed against it (``context``: an ELBO to collapse
    diffusion chains with, or None for the stock program)."""
    with analytic_context(context):
        guide_trace = poutine.trace(guide_fn).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model_fn, trace=guide_trace)).get_trace(x)
    return model_trace, guide_trace


def _ref(module):
    if module is None:
        return None
    p = next(iter(module.parameters()), None)
    return p if p is not None else next(iter(module.buffers()), None)


# --------------------------------------------------------------------------- per-site terms
def per_site_terms(model, guide=None, x=None, *, plate: str = "data", context=None) -> dict:
    """Per-example terms of one Monte Carlo sample of −ELBO, site by site.

    With z ∼ q(· | x) drawn once by the guide and the model replayed on it:

    * ``kl[name]`` = log q(z_l | ·) − log p(z_l | ·) for each latent in both programs (its mean over
      z is the KL term of that layer, E_q[log q(z_l|·) − log p(z_l|·)]);
    * ``reconstruction`` = −Σ log p(y | ·) over observed, non-factor model sites;
    * ``factor`` = −Σ model ``pyro.factor`` terms + Σ guide ``pyro.factor`` terms;
    * ``total`` = reconstruction + Σ_l kl[l] + factor, the single-sample −ELBO that
      :class:`pyro.infer.Trace_ELBO` computes (same draws ⇒ same number).

    Also returned: ``guide_trace`` (for :func:`active_units`). Model latents absent from the guide
    are sampled from their model conditional and left out (their prior cancels the proposal);
    auxiliary guide sites other than factors are skipped. Everything is (B,).

    Args:
        model: a module with ``.model``/``.guide`` (then ``guide`` is None) or a model callable.
        x: data, batch first.
        plate: the name of the per-example plate.
        context: an ELBO under whose :func:`~hlvm.diffusion.analytic_context` to trace (None: stock).
    """
    model_fn, guide_fn, _ = _programs(model, guide)
    b = x.shape[0]
    model_trace, guide_trace = _traces(model_fn, guide_fn, x, context=context)
    zero = x.new_zeros(b) if torch.is_floating_point(x) else torch.zeros(b)
    kl, recon, factor = {}, zero.clone(), zero.clone()
    for name, site in guide_trace.nodes.items():
        if not _guide_scored(site):
            continue
        lq = _site_log_prob(site, plate, b)
        if _is_factor(site) or site["is_observed"]:
            factor = factor + lq
        elif name in model_trace.nodes:
            kl[name] = lq
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site) or site["infer"].get("_deterministic", False):
            continue
        if _is_factor(site):
            factor = factor - _site_log_prob(site, plate, b)
        elif site["is_observed"]:
            recon = recon - _site_log_prob(site, plate, b)
        elif name in kl:
            kl[name] = kl[name] - _site_log_prob(site, plate, b)
    total = recon + factor + sum(kl.values(), zero)
    return {"kl": kl, "reconstruction": recon, "factor": factor, "total": total, "guide_trace": guide_trace}


# --------------------------------------------------------------------------- importance weights
def per_example_log_weights(model, guide=None, x=None, K: int = 1, chunk: int | None = None, *,
                            steps: int | None = None, plate: str = "data") -> torch.Tensor:
    """Importance log-weights log w_k = log p(x, z_k) − log q(z_k | x), z_k ∼ q(· | x): shape (K, B).

    The guide is traced (:func:`pyro.poutine.trace`) and the model replayed on its draws
    (:func:`pyro.poutine.replay`); each site's ``log_prob`` is summed over every dim but that of
    ``pyro.plate(plate)``, giving one weight per example (Burda et al. 2016, eq. 8). The K draws
    are vectorized by repeating x K times along the batch dim (row k·B + b is draw k of example b),
    ``chunk`` draws per pass.

    * Guide sites marked ``infer={"is_auxiliary": True}`` (e.g. :func:`hlvm.layers.deterministic`
      ladder states) are skipped; ``pyro.factor`` sites count in both programs (added in the
      model, subtracted in the guide, as :class:`pyro.infer.Trace_ELBO` does).
    * Model latents that the guide does not sample are drawn from their model conditional, which
      is then their proposal: they cancel and are left out.
    * The **stock** program is always used, even inside a :class:`~hlvm.elbo.DiffusionELBO`
      context: a diffusion chain contributes its T latent sites z_T … z_0. In continuous time
      the program has ``chain.trace_steps`` steps; ``steps`` overrides ``trace_steps`` of every
      continuous-time chain for this call only (restored afterwards). The weights are then those
      of that *discretization* of the model, whose log-likelihood differs from the continuous one.
    * Gradients flow if enabled (this function does not switch grad mode).

    Args:
        model: a module with ``.model``/``.guide`` (then ``guide`` is None) or a model callable.
        guide: the guide callable, or None.
        x: data (B, ...).
        K: importance samples per example.
        chunk: draws per vectorized pass (default: as many as fit in 8192 rows, at least 1).
        steps: trace steps of continuous-time chains (ValueError if the model has none).
        plate: the name of the per-example plate.
    """
    if x is None:
        raise ValueError("per_example_log_weights needs data x")
    if K < 1:
        raise ValueError(f"K must be >= 1, got {K}")
    model_fn, guide_fn, owner = _programs(model, guide)
    b = x.shape[0]
    chunk = max(1, _MAX_ROWS // max(b, 1)) if chunk is None else int(chunk)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    out = []
    with _override_steps(owner, steps):
        for start in range(0, K, chunk):
            k = min(chunk, K - start)
            xx = x.repeat((k,) + (1,) * (x.dim() - 1))  # (k·B, ...), draw-major
            terms = per_site_terms(model_fn, guide_fn, xx, plate=plate, context=None)
            out.append(-terms["total"].reshape(k, b))
    return torch.cat(out, 0)


def iwae_bound(model, x: torch.Tensor, K: int, chunk: int | None = None, *, guide=None,
               steps: int | None = None, plate: str = "data") -> torch.Tensor:
    """The importance-weighted bound log (1/K) Σ_k w_k per example, shape (B,).

    Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders*, ICLR 2016, eq. 8:
    E[IWAE_K] ≤ E[IWAE_{K+1}] ≤ log p(x), with IWAE_1 = ELBO in expectation. Computed as
    logsumexp_k log w_k − log K from :func:`per_example_log_weights` (see it for the arguments;
    ``model`` is a module with ``.model``/``.guide`` unless ``guide`` is given).
    """
    lw = per_example_log_weights(model, guide, x, K, chunk, steps=steps, plate=plate)
    return torch.logsumexp(lw, 0) - math.log(K)


# --------------------------------------------------------------------------- Pareto k̂
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
        ValueError: if K < 25 (PSIS needs ≥ 5 tail draws).
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


# --------------------------------------------------------------------------- active units
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


def _accumulate_active(stats: dict, guide_trace, plate: str, b: int):
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or not _guide_scored(site) or _is_factor(site):
            continue
        loc = _normal_loc(site["fn"])
        if loc is None:
            continue
        # loc has the site's batch + event shape; the plate's dim counts within the batch shape
        full_dim = _data_dim(site, plate) - len(site["fn"].event_shape)
        v = loc.movedim(full_dim, 0).reshape(b, -1)  # (..., B, ..., event) -> (B, d)
        stats.setdefault(name, _RunningVariance()).update(v)


def active_units(model, x: torch.Tensor, threshold: float = 0.01, batch_size: int = 500, *,
                 plate: str = "data", context=None) -> dict:
    """Active units per latent site (Burda et al. 2016, §5.2): ``{site: count}``.

    A dimension u of a latent site whose guide distribution is a (diagonal) Normal is active if
    Cov_x(E_q[u | x]) > ``threshold``, with E_q[u | x] read from the traced guide distribution's
    ``loc`` and the variance taken over the examples of ``x``. For a guide site that depends on
    other sampled latents (top-down hierarchies) the loc is conditional on one draw of those.
    Sites with non-Normal guides are not counted. ``context``: an ELBO under whose
    :func:`~hlvm.diffusion.analytic_context` the guide is traced (None: stock program).
    """
    _, guide_fn, _ = _programs(model)
    stats: dict = {}
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size]
        with analytic_context(context):
            tr = poutine.trace(guide_fn).get_trace(xb)
        _accumulate_active(stats, tr, plate, xb.shape[0])
    return _count_active(stats, threshold)


def _count_active(stats: dict, threshold: float) -> dict:
    return {name: int((s.variance() > threshold).sum().item()) for name, s in stats.items()}


# --------------------------------------------------------------------------- evaluate
def _default_elbo(model):
    from pyro.infer import Trace_ELBO

    return DiffusionELBO(exact=False) if _chains(model) else Trace_ELBO()


def _finite_stats(khat: torch.Tensor) -> dict:
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


def evaluate(model, data, elbo=None, batch_size: int = 500, K: int = 0, iwae_batch: int = 100,
             max_examples: int | None = None, *, steps: int | None = None, seed: int | None = None,
             au_threshold: float = 0.01, plate: str = "data") -> dict:
    """Evaluate a model/guide pair on test data; returns a JSON-serialisable dict of plain numbers.

    Args:
        model: a module with ``.model(x)`` and ``.guide(x)`` (a zoo model or a user's hierarchy).
        data: a :class:`~hlvm.data.DataSplit` (its ``test`` split is used) or a tensor (B, ...).
        elbo: the estimator of the ELBO; default :class:`~hlvm.elbo.DiffusionELBO` (``exact=False``)
            when the model has a :class:`~hlvm.diffusion.DiffusionChain`, else ``Trace_ELBO()``.
        batch_size: examples per ELBO evaluation.
        K: importance samples for the IWAE bound and k̂ (0: skip). k̂ needs K ≥ 25.
        iwae_batch: examples per IWAE pass (each pass runs K · iwae_batch rows, chunked).
        max_examples: evaluate on the first ``max_examples`` examples only.
        steps: trace steps of continuous-time chains for the IWAE program
            (see :func:`per_example_log_weights`).
        seed: if given, all randomness of the evaluation is drawn from this seed (global RNG
            state restored afterwards).
        au_threshold: the active-unit threshold on Cov_x(E_q[u | x]).

    Returns (means over examples; ``nats`` and ``bpd`` are losses: lower is better):

    * ``n_examples``, ``dim`` (D), ``estimator`` (class name);
    * ``elbo`` (nats, ≤ log p(x)), ``nats`` = −elbo, ``bpd`` = nats / (D ln 2);
    * with chains evaluated by DiffusionELBO: ``reconstruction``, ``prior``, ``diffusion`` (summed
      over chains, from ``elbo.last_terms``), ``chains`` {name: {those and ``loss``}} and
      ``rest`` = nats − Σ chain losses (the part of −ELBO outside chains; 0 for a VDM);
    * otherwise: ``reconstruction`` (−E log p(x | ·)), ``kl`` {site: E_q[log q − log p]},
      ``kl_total``, ``factor`` — an independent one-sample Monte Carlo estimate of the same −ELBO
      (``reconstruction + kl_total + factor`` ≈ ``nats``);
    * ``active_units`` {site: count} and ``active_units_total`` (guide sites with Normal fns);
    * when K > 0: ``K``, ``iwae`` (mean bound), ``iwae_nats`` = −iwae, ``iwae_bpd``; and when
      K ≥ 25 the k̂ statistics ``khat_max``, ``khat_mean`` (over examples with a finite k̂),
      ``khat_frac_gt_0.7``, ``khat_frac_degenerate`` (exact weights, k̂ = −inf),
      ``khat_frac_nan``. Emits :class:`ParetoKWarning` when ``khat_max`` > 0.7.
      (k̂ is −inf when every example's weights are constant; Python's ``json`` writes it as
      ``-Infinity``.)

    Runs under :func:`torch.no_grad` with ``model.eval()`` (training mode restored).
    """
    x = data.test if isinstance(data, DataSplit) else torch.as_tensor(data)
    if max_examples is not None:
        x = x[:max_examples]
    n = x.shape[0]
    if n == 0:
        raise ValueError("no examples to evaluate")
    ref = _ref(model) if isinstance(model, nn.Module) else None
    if ref is not None:
        x = x.to(device=ref.device, dtype=ref.dtype if torch.is_floating_point(x) and torch.is_floating_point(ref) else x.dtype)
    D = math.prod(x.shape[1:])
    elbo = _default_elbo(model) if elbo is None else elbo
    chain_mode = isinstance(elbo, DiffusionELBO) and bool(_chains(model))
    rng = (torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else [])
           if seed is not None else nullcontext())
    was_training = model.training if isinstance(model, nn.Module) else None
    if was_training is not None:
        model.eval()
    try:
        with rng, torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            out = _evaluate(model, x, elbo, chain_mode, batch_size, K, iwae_batch, steps, au_threshold, plate)
    finally:
        if was_training is not None:
            model.train(was_training)
    out = {"n_examples": n, "dim": D, "estimator": type(elbo).__name__, **out}
    out["elbo"] = -out["nats"]
    out["bpd"] = out["nats"] / (D * math.log(2))
    if K:
        out["iwae_bpd"] = out["iwae_nats"] / (D * math.log(2))
        if out.get("khat_max", float("nan")) > KHAT_THRESHOLD:
            warnings.warn(
                f"max Pareto k̂ = {out['khat_max']:.2f} > {KHAT_THRESHOLD} "
                f"({100 * out['khat_frac_gt_0.7']:.1f}% of examples): the importance weights are heavy-tailed "
                f"and the IWAE bound with K={K} is unreliable (Vehtari et al. 2024)", ParetoKWarning, stacklevel=2)
    return out


def _evaluate(model, x, elbo, chain_mode, batch_size, K, iwae_batch, steps, au_threshold, plate) -> dict:
    n = x.shape[0]
    total = 0.0
    chain_sums: dict = {}
    site_kl: dict = {}
    recon_sum = factor_sum = 0.0
    au_stats: dict = {}
    for i in range(0, n, batch_size):
        xb = x[i:i + batch_size]
        b = xb.shape[0]
        if chain_mode:
            elbo.last_terms.clear()  # no stale terms from earlier models
        total += float(elbo.loss(model.model, model.guide, xb))
        if chain_mode:
            for name, terms in elbo.last_terms.items():
                acc = chain_sums.setdefault(name, {k: 0.0 for k in ("reconstruction", "prior", "diffusion", "loss")})
                for k in acc:
                    acc[k] += float(terms[k].sum())
            with analytic_context(elbo):
                gtr = poutine.trace(model.guide).get_trace(xb)
        else:
            terms = per_site_terms(model, None, xb, plate=plate,
                                   context=elbo if isinstance(elbo, DiffusionELBO) else None)
            gtr = terms["guide_trace"]
            recon_sum += float(terms["reconstruction"].sum())
            factor_sum += float(terms["factor"].sum())
            for name, v in terms["kl"].items():
                site_kl[name] = site_kl.get(name, 0.0) + float(v.sum())
        _accumulate_active(au_stats, gtr, plate, b)
    out: dict = {"nats": total / n}
    if chain_mode:
        chains = {name: {k: v / n for k, v in acc.items()} for name, acc in chain_sums.items()}
        out["chains"] = chains
        for k in ("reconstruction", "prior", "diffusion"):
            out[k] = sum(c[k] for c in chains.values())
        out["rest"] = out["nats"] - sum(c["loss"] for c in chains.values())
    else:
        out["reconstruction"] = recon_sum / n
        out["kl"] = {k: v / n for k, v in site_kl.items()}
        out["kl_total"] = sum(out["kl"].values())
        out["factor"] = factor_sum / n
    au = _count_active(au_stats, au_threshold)
    out["active_units"] = au
    out["active_units_total"] = int(sum(au.values()))
    if K:
        bounds, khats = [], []
        for i in range(0, n, iwae_batch):
            xb = x[i:i + iwae_batch]
            lw = per_example_log_weights(model, None, xb, K, steps=steps, plate=plate)
            bounds.append(torch.logsumexp(lw, 0) - math.log(K))
            if K >= MIN_KHAT_SAMPLES:
                khats.append(pareto_khat(lw))
        iwae = torch.cat(bounds)
        out["K"] = int(K)
        out["iwae"] = float(iwae.double().mean())
        out["iwae_nats"] = -out["iwae"]
        if khats:
            out.update(_finite_stats(torch.cat(khats)))
    return out
