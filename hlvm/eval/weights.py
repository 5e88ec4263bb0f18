"""Importance weights of any model/guide pair, per example, and the bounds built on them.

The guide is traced (:func:`pyro.poutine.trace`) and the model replayed on its draws; each site's
log-density is summed over every dim but that of the per-example plate, giving

* :func:`per_site_terms` — one Monte Carlo draw of −ELBO site by site (KL per latent,
  reconstruction, factors);
* :func:`per_example_log_weights` — log w_k = log p(x, z_k) − log q(z_k | x), z_k ∼ q(· | x);
* :func:`iwae_bound` — log (1/K) Σ_k w_k (Burda, Grosse & Salakhutdinov 2016, eq. 8), which equals
  the ELBO for K = 1 and is non-decreasing in K (their Theorem 1).

Importance weights always use the *stock* Pyro program (no :class:`~hlvm.DiffusionELBO`
collapsing): for a VDM that is its T-step chain, or in continuous time the ``trace_steps``-step
discretization (see :func:`per_example_log_weights`).
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample
from torch import nn
from torch.distributions import kl_divergence

from ..programs.chain import StockChains, chains_of, override_steps
from ..programs.roles import data_roles
from .chunking import check_memory, rows_per_pass, trace_bytes

__all__ = ["per_site_terms", "per_example_log_weights", "iwae_bound", "programs_of", "traces", "data_dim",
           "is_factor", "guide_scored"]


def programs_of(model, guide=None):
    """(model_fn, guide_fn, owner module or None) from a hierarchy or two callables."""
    if guide is None:
        if not (hasattr(model, "model") and hasattr(model, "guide")):
            raise TypeError("pass a module with .model and .guide, or a model callable and a guide callable")
        return model.model, model.guide, model if isinstance(model, nn.Module) else None
    owner = model if isinstance(model, nn.Module) else getattr(model, "__self__", None)
    return model, guide, owner if isinstance(owner, nn.Module) else None


def _continuous_steps(owner, steps):
    """Run continuous-time chains of ``owner`` with ``steps`` trace steps (None: as they are)."""
    if steps is None:
        return nullcontext()
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    chains = [c for c in chains_of(owner) if c.T is None]
    if not chains:
        raise ValueError("steps overrides trace_steps of continuous-time DiffusionChains; the model has none")
    return override_steps(chains, lambda _: steps)


def data_dim(site, plate: str) -> int:
    for frame in site["cond_indep_stack"]:
        if frame.name == plate:
            return frame.dim
    raise ValueError(f"site {site['name']!r} is not inside pyro.plate({plate!r}): per-example terms are undefined "
                     "(global latents cannot be importance-weighted per example)")


def _per_example(value: torch.Tensor, site, plate: str, batch: int) -> torch.Tensor:
    """Sum a site-shaped tensor (batch shape) over every dim but the plate's: → (batch,)."""
    dim = data_dim(site, plate)
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


def is_factor(site) -> bool:
    fn = site["fn"]
    while isinstance(fn, dist.MaskedDistribution):
        fn = fn.base_dist
    return isinstance(fn, dist.Unit)


def guide_scored(site) -> bool:
    """Guide sites that enter log q: all sample sites except auxiliary non-factor ones (e.g. the
    top-down HVAE's deterministic ladder states d_l, Delta sites with log-density 0)."""
    if site["type"] != "sample" or site_is_subsample(site):
        return False
    return is_factor(site) or not site["infer"].get("is_auxiliary", False)


def traces(model_fn, guide_fn, x, *, context=None):
    """One guide trace and the model replayed against it (``context``: a DiffusionELBO to collapse
    diffusion chains with; anything else runs the stock program, even inside a collapsing handler)."""
    with context.collapse() if hasattr(context, "collapse") else StockChains():
        guide_trace = poutine.trace(guide_fn).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model_fn, trace=guide_trace)).get_trace(x)
    return model_trace, guide_trace


# --------------------------------------------------------------------------- per-site terms
def per_site_terms(model, guide=None, x=None, *, plate: str | None = None, context=None, analytic_kl: bool = False) -> dict:
    """Per-example terms of one Monte Carlo sample of −ELBO, site by site.

    With z ∼ q(· | x) drawn once by the guide and the model replayed on it:

    * ``kl[name]`` = log q(z_l | ·) − log p(z_l | ·) for each latent in both programs (its mean over
      z is the KL term of that layer, E_q[log q(z_l|·) − log p(z_l|·)]); with ``analytic_kl`` the
      closed form KL(q(z_l | ·) ‖ p(z_l | ·)) given the drawn parents wherever torch registers one
      (else the draw), as :class:`pyro.infer.TraceMeanField_ELBO` computes it;
    * ``reconstruction`` = −Σ log p(y | ·) over observed, non-factor model sites;
    * ``factor`` = −Σ model ``pyro.factor`` terms + Σ guide ``pyro.factor`` terms;
    * ``total`` = reconstruction + Σ_l kl[l] + factor, the single-sample −ELBO that
      :class:`pyro.infer.Trace_ELBO` computes (same draws ⇒ same number).

    Also returned: ``guide_trace`` (for active units) and ``model_trace``. Model latents absent from
    the guide are sampled from their model conditional and left out (their prior cancels the
    proposal); auxiliary guide sites other than factors are skipped. Everything is (B,).

    Args:
        model: a module with ``.model``/``.guide`` (then ``guide`` is None) or a model callable.
        x: data, batch first.
        plate: the name of the per-example plate (default: read from the model, :mod:`hlvm.programs.roles`).
        context: a DiffusionELBO to collapse diffusion chains with (anything else: the stock program).
        analytic_kl: closed-form KLs where available (the terms of ``TraceMeanField_ELBO``).
    """
    model_fn, guide_fn, owner = programs_of(model, guide)
    b = x.shape[0]
    plate = plate or data_roles(model_fn if owner is None else owner, x).plate
    model_trace, guide_trace = traces(model_fn, guide_fn, x, context=context)
    zero = x.new_zeros(b) if torch.is_floating_point(x) else torch.zeros(b)
    kl, recon, factor = {}, zero.clone(), zero.clone()
    for name, site in guide_trace.nodes.items():
        if not guide_scored(site):
            continue
        lq = _site_log_prob(site, plate, b)
        if is_factor(site) or site["is_observed"]:
            factor = factor + lq
        elif name in model_trace.nodes:
            kl[name] = lq
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site) or site["infer"].get("_deterministic", False):
            continue
        if is_factor(site):
            factor = factor - _site_log_prob(site, plate, b)
        elif site["is_observed"]:
            recon = recon - _site_log_prob(site, plate, b)
        elif name in kl:
            kl[name] = _site_kl(guide_trace.nodes[name], site, kl[name], plate, b, analytic_kl)
    total = recon + factor + sum(kl.values(), zero)
    return {"kl": kl, "reconstruction": recon, "factor": factor, "total": total, "guide_trace": guide_trace,
            "model_trace": model_trace}


def _site_kl(q_site, p_site, log_q, plate: str, b: int, analytic: bool) -> torch.Tensor:
    """One latent's KL term per example: KL(q ‖ p) in closed form when ``analytic`` and torch has
    one for the pair, else the one-draw log q − log p (``log_q`` already per example)."""
    if analytic:
        try:
            kl = kl_divergence(q_site["fn"], p_site["fn"])
        except NotImplementedError:
            pass
        else:
            return _per_example(scale_and_mask(kl, 1.0, q_site["mask"]), q_site, plate, b)
    return log_q - _site_log_prob(p_site, plate, b)


# --------------------------------------------------------------------------- importance weights
def per_example_log_weights(model, guide=None, x=None, K: int = 1, chunk: int | None = None, *,
                            steps: int | None = None, plate: str | None = None, memory: int | None = None) -> torch.Tensor:
    """Importance log-weights log w_k = log p(x, z_k) − log q(z_k | x), z_k ∼ q(· | x): shape (K, B).

    The guide is traced (:func:`pyro.poutine.trace`) and the model replayed on its draws
    (:func:`pyro.poutine.replay`); each site's ``log_prob`` is summed over every dim but that of
    ``pyro.plate(plate)``, giving one weight per example (Burda et al. 2016, eq. 8). The K draws
    are **vectorized**: x is repeated along the batch dim so that one pass of the model and guide
    computes many draws at once (row j·n + b is draw j of example b of the pass).

    **Memory bound.** A pass holds at most ⌊memory / (2 · bytes held per row)⌋ rows; on CPU it
    aims at a cache-sized 16 MiB but at no fewer than 256 rows (see :mod:`hlvm.eval.chunking`;
    the bytes per row are measured on a one-row probe pass, which does not consume the random
    stream): ⌊rows / B⌋ draws of the whole batch per pass, or, when one
    draw of the batch is already too many rows, slices of the batch one draw at a time. So a
    deep VDM (T = 1000 steps over 784 pixels, ~10 MB a row) and a small VAE (~7 kB a row) both
    stay within ``memory``. ``chunk`` instead fixes the draws per pass (no probe). The first pass
    runs with Pyro's validation as configured; the others repeat the same program on the same
    data with other draws and skip it (~15% of a VAE's time).

    * Guide sites marked ``infer={"is_auxiliary": True}`` (e.g. :func:`hlvm.programs.layers.deterministic`
      ladder states) are skipped; ``pyro.factor`` sites count in both programs (added in the
      model, subtracted in the guide, as :class:`pyro.infer.Trace_ELBO` does).
    * Model latents that the guide does not sample are drawn from their model conditional, which
      is then their proposal: they cancel and are left out.
    * The **stock** program is always used, even inside a :class:`~hlvm.programs.elbo.DiffusionELBO`
      context: a diffusion chain contributes its T latent sites z_T … z_0. In continuous time
      the program has ``chain.trace_steps`` steps; ``steps`` overrides ``trace_steps`` of every
      continuous-time chain for this call only (restored afterwards). The weights are then those
      of that *discretization* of the model, whose log-likelihood differs from the continuous one.
    * Gradients flow if enabled (this function does not switch grad mode; the memory rule then
      does not count the activations kept for backward).

    Args:
        model: a module with ``.model``/``.guide`` (then ``guide`` is None) or a model callable.
        guide: the guide callable, or None.
        x: data (B, ...).
        K: importance samples per example.
        chunk: draws of the whole batch per pass (default: from ``memory``).
        steps: trace steps of continuous-time chains (ValueError if the model has none).
        plate: the name of the per-example plate (default: read from the model, :mod:`hlvm.programs.roles`).
        memory: bytes one pass may hold (default :data:`hlvm.eval.chunking.DEFAULT_MEMORY`: 1 GiB
            on CPU, 4 GiB on accelerators).
    """
    if x is None:
        raise ValueError("per_example_log_weights needs data x")
    if K < 1:
        raise ValueError(f"K must be >= 1, got {K}")
    if chunk is not None and int(chunk) < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    memory = check_memory(memory, x.device)
    model_fn, guide_fn, owner = programs_of(model, guide)
    b = x.shape[0]
    plate = plate or data_roles(model_fn if owner is None else owner, x).plate
    with _continuous_steps(owner, steps):
        rows = int(chunk) * b if chunk is not None else rows_per_pass(_bytes_per_row(model_fn, guide_fn, x, plate), memory, x.device)
        if rows >= b:
            draws = rows // b
            return torch.cat([_pass(model_fn, guide_fn, x, min(draws, K - s), plate, first=s == 0)
                              for s in range(0, K, draws)], 0)
        return torch.cat([torch.cat([_pass(model_fn, guide_fn, x[i:i + rows], 1, plate, first=(j, i) == (0, 0))
                                     for i in range(0, b, rows)], 1) for j in range(K)], 0)


def _pass(model_fn, guide_fn, x, k: int, plate: str, first: bool) -> torch.Tensor:
    """log-weights (k, n) of k draws of the n examples x, in one vectorized pass (validated if first)."""
    n = x.shape[0]
    xx = x.repeat((k,) + (1,) * (x.dim() - 1))  # (k·n, ...), draw-major
    with nullcontext() if first else pyro.validation_enabled(False):
        return -per_site_terms(model_fn, guide_fn, xx, plate=plate, context=None)["total"].reshape(k, n)


def _bytes_per_row(model_fn, guide_fn, x, plate: str) -> int:
    """Bytes the traces of a one-row pass hold (a probe that leaves the random stream untouched)."""
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        terms = per_site_terms(model_fn, guide_fn, x[:1], plate=plate, context=None)
        return trace_bytes(terms["model_trace"], terms["guide_trace"])


def iwae_bound(model, x: torch.Tensor, K: int, chunk: int | None = None, *, guide=None,
               steps: int | None = None, plate: str | None = None) -> torch.Tensor:
    """The importance-weighted bound log (1/K) Σ_k w_k per example, shape (B,).

    Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders*, ICLR 2016, eq. 8:
    E[IWAE_K] ≤ E[IWAE_{K+1}] ≤ log p(x), with IWAE_1 = ELBO in expectation. Computed as
    logsumexp_k log w_k − log K from :func:`per_example_log_weights` (see it for the arguments;
    ``model`` is a module with ``.model``/``.guide`` unless ``guide`` is given).
    """
    lw = per_example_log_weights(model, guide, x, K, chunk, steps=steps, plate=plate)
    return torch.logsumexp(lw, 0) - math.log(K)
