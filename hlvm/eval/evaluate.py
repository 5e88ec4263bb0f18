"""The one evaluation loop of hlvm: test ELBO, its breakdown, IWAE bound, PSIS k̂ and active units
of any hierarchy — used by :func:`hlvm.evaluate`, ``hlvm compare`` and the Trainer.

Every model in hlvm bounds the same discrete log-likelihood (see :mod:`hlvm.programs.likelihoods`), so the
numbers below are comparable across VAE, hierarchical VAEs and VDMs:

* **ELBO** in nats per example and bits per dimension, ``bpd = nats / (D · ln 2)`` with D the
  number of data dimensions (Kingma et al. 2021, §5);
* its **breakdown** — for diffusion chains evaluated by :class:`~hlvm.DiffusionELBO`, the
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

The pieces live beside it: :mod:`.weights` (per-site terms, importance weights, IWAE),
:mod:`.psis` (k̂) and :mod:`.active` (active units).

Nothing here trains; everything runs under :func:`torch.no_grad` in :func:`evaluate`.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager

import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch import nn

from ..data import DataSplit
from ..diffusion.ode import pf_ode_bound
from ..estimators import default_estimator
from ..programs.chain import bound_terms, chains_of
from ..programs.elbo import DiffusionELBO
from ..programs.roles import data_roles
from .active import ActiveUnits
from .chunking import check_memory
from .possible import check_possible
from .psis import KHAT_THRESHOLD, MIN_KHAT_SAMPLES, ParetoKWarning, khat_summary, pareto_khat
from .weights import per_example_log_weights, per_site_terms

__all__ = ["evaluate", "data_chain", "has_data_chain"]

_CHAIN_KEYS = ("reconstruction", "prior", "diffusion", "loss")


_ONE_TRACE = (Trace_ELBO, TraceMeanField_ELBO, DiffusionELBO)


def _reads_from_trace(elbo) -> bool:
    """Whether ``elbo``'s loss is the single-draw −ELBO of one guide trace and its replayed model
    (Trace_ELBO, TraceMeanField_ELBO — its analytic KLs — and DiffusionELBO, with one particle):
    then one trace gives the loss per example and its breakdown."""
    return type(elbo) in _ONE_TRACE and elbo.num_particles == 1 and not elbo.vectorize_particles


def _as_tensor_on(model, data, max_examples):
    x = data.test if isinstance(data, DataSplit) else torch.as_tensor(data)
    if max_examples is not None:
        x = x[:max_examples]
    if x.shape[0] == 0:
        raise ValueError("no examples to evaluate")
    ref = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
    if ref is not None:
        x = x.to(device=ref.device, dtype=ref.dtype if torch.is_floating_point(x) and torch.is_floating_point(ref) else x.dtype)
    return x


def evaluate(model, data, elbo=None, batch_size: int = 500, K: int = 0, iwae_batch: int = 100,
             max_examples: int | None = None, *, steps: int | None = None, seed: int | None = None,
             au_threshold: float = 0.01, plate: str | None = None, breakdown: bool = True, pfode: bool = False,
             pfode_samples: int = 1, pfode_batch: int = 100, ode_options: dict | None = None,
             iwae_memory: int | None = None, per_example: bool = False, progress=None) -> dict:
    """Evaluate a hierarchy on test data; returns a JSON-serialisable dict of plain numbers.

    Args:
        model: a hierarchy (:class:`hlvm.Hierarchy`: ``model(x)``, ``guide(x)``).
        data: a :class:`~hlvm.data.DataSplit` (its ``test`` split is used) or a tensor (B, ...).
        elbo: the estimator of the ELBO; default :func:`hlvm.estimators.default_estimator`, the
            one rule training follows too (a chain inside → DiffusionELBO; a mean-field-exact
            guide → TraceMeanField_ELBO; else Trace_ELBO).
        batch_size: examples per ELBO evaluation.
        K: importance samples for the IWAE bound and k̂ (0: skip). k̂ needs K ≥ 30.
        iwae_batch: examples per IWAE call; its K · iwae_batch rows (draws × examples) run in
            vectorized passes of at most ``iwae_memory`` bytes each (default 1 GiB on CPU, 4 GiB
            on accelerators; the rule is :func:`~hlvm.eval.weights.per_example_log_weights`').
        max_examples: evaluate on the first ``max_examples`` examples only.
        steps: trace steps of continuous-time chains for the IWAE program
            (see :func:`~hlvm.eval.weights.per_example_log_weights`).
        seed: if given, all randomness of the evaluation is drawn from this seed (global RNG
            state restored afterwards).
        au_threshold: the active-unit threshold on Cov_x(E_q[u | x]).
        breakdown: also report the terms and active units (False: the ELBO alone, as the
            Trainer's periodic test evaluation does).
        pfode: also the probability-flow ODE bound of a model whose diffusion chain is over the
            data (:func:`hlvm.diffusion.ode.pf_ode_bound`), ``pfode_samples`` draws of
            z_0 ∼ q(z_0 | x) per example, ``pfode_batch`` examples per solve, ``ode_options`` for
            :func:`~hlvm.diffusion.ode.ode_log_density` (``exact``, ``probes``, ``rtol``, ``atol``).
        per_example: also return each example's value of every bound computed (see below); needs
            an estimator whose loss is one draw (Trace_ELBO, TraceMeanField_ELBO, DiffusionELBO
            with ``num_particles=1``: the default rule's), else ValueError before any work.
        progress: called as ``progress(stage, done, total)`` after each batch, ``stage`` one of
            ``"elbo"``, ``"iwae"``, ``"pfode"`` and ``done`` of ``total`` examples finished.

    Returns (means over examples; ``nats`` and ``bpd`` are losses: lower is better):

    * ``n_examples``, ``dim`` (D), ``estimator`` (class name);
    * ``elbo`` (nats, ≤ log p(x)), ``nats`` = −elbo, ``bpd`` = nats / (D ln 2), and with
      ``breakdown`` ``nats_se``: the standard error of ``nats`` over the examples (the spread of
      the per-example estimates / √n; from the draws of ``nats`` for the one-draw estimators,
      an independent draw's figure for others);
    * with chains collapsed by DiffusionELBO: ``reconstruction``, ``prior``, ``diffusion`` (summed
      over chains), ``chains`` {name: {those and ``loss``}} and ``rest`` = nats − Σ chain losses
      (the part of −ELBO outside chains; 0 for a VDM), from the same draws as ``nats``; with an
      exact DiffusionELBO also ``diffusion_mc_se``, the Monte Carlo standard error of the mean
      diffusion term (what differs between seeds; ``nats_se`` also holds the spread of the data);
    * otherwise: ``reconstruction`` (−E log p(x | ·)), ``kl`` {site: E_q[log q − log p]},
      ``kl_total``, ``factor`` — from the draws of ``nats`` for Trace_ELBO and TraceMeanField_ELBO
      (its KLs in closed form where torch has one, as it computes them), an independent
      one-sample estimate of the same −ELBO for other estimators
      (``reconstruction + kl_total + factor`` ≈ ``nats``);
    * ``active_units`` {site: count} and ``active_units_total`` (guide sites with Normal fns);
    * when K > 0: ``K``, ``iwae`` (mean bound), ``iwae_nats`` = −iwae, ``iwae_se``, ``iwae_bpd``; and when
      K ≥ 30 the k̂ statistics ``khat_max``, ``khat_mean`` (over examples with a finite k̂),
      ``khat_frac_gt_0.7``, ``khat_frac_degenerate`` (exact weights, k̂ = −inf),
      ``khat_frac_nan``. Emits :class:`~hlvm.ParetoKWarning` when ``khat_max`` > 0.7.
      (k̂ is −inf when every example's weights are constant; Python's ``json`` writes it as
      ``-Infinity``.)
    * with ``pfode``: ``pfode`` (the mean bound on log p(x), nats), ``pfode_nats``, ``pfode_bpd``,
      ``pfode_se`` (over examples), ``pfode_mc_se`` (of the Monte Carlo average over draws and
      probes; NaN with ``pfode_samples=1``), ``pfode_nfe`` (mean drift evaluations per solve), ``pfode_seconds`` and
      ``pfode_samples``.
    * with ``per_example``: ``per_example`` {``elbo``, ``iwae``, ``pfode``: a CPU float64 tensor
      (n,)} — for each bound computed, its value on each example in the input order (the ELBO
      from the very draws of ``elbo``, the IWAE bound log (1/K) Σ_k w_k of Burda et al. 2016,
      eq. 8, the PF-ODE bound averaged over its draws), whose mean *is* the reported mean.
      (Not JSON: the one key that holds tensors.)

    Runs under :func:`torch.no_grad` with ``model.eval()`` (training mode restored).
    """
    x = _as_tensor_on(model, data, max_examples)
    if K:
        check_memory(iwae_memory, x.device)  # before any work
    if elbo is None:
        elbo = default_estimator(model, x)  # the estimator training uses: one rule (hlvm.estimators)
    if per_example and not _reads_from_trace(elbo):
        raise ValueError(f"per-example values need a one-draw ELBO estimator ({', '.join(c.__name__ for c in _ONE_TRACE)} "
                         f"with num_particles=1), got {type(elbo).__name__}")
    report = progress or _silent
    plate = plate or data_roles(model, x).plate
    with _seeded(seed, x.device), _eval_mode(model), torch.no_grad():
        out = _bound_loop(model, x, elbo, batch_size, plate, breakdown, report)
        if breakdown:
            out["active_units"] = out.pop("_active").counts(au_threshold)
            out["active_units_total"] = int(sum(out["active_units"].values()))
        if K:
            out.update(_iwae_loop(model, x, K, iwae_batch, steps, plate, iwae_memory, report))
        if pfode:
            out.update(_pfode_loop(model, x, pfode_samples, pfode_batch, ode_options or {}, report))
    values = {k: out.pop(f"_{k}") for k in _PER_EXAMPLE if f"_{k}" in out}
    out = _with_units(out, x, elbo)
    check_possible(out, model, x)
    if K:
        _warn_heavy_tails(out, K)
    if per_example:
        out["per_example"] = values
    return out


def _silent(stage: str, done: int, total: int) -> None:
    """The progress callback that reports nothing."""


#: the bounds whose per-example values :func:`evaluate` returns (key ``_<name>`` inside the loops)
_PER_EXAMPLE = ("elbo", "iwae", "pfode")


@contextmanager
def _seeded(seed, device):
    """All randomness inside drawn from ``seed`` (None: the global stream, untouched), the global
    RNG state restored afterwards."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


@contextmanager
def _eval_mode(model):
    """``model.eval()`` inside, its training mode restored afterwards (a plain callable: nothing)."""
    was_training = model.training if isinstance(model, nn.Module) else None
    if was_training is not None:
        model.eval()
    try:
        yield
    finally:
        if was_training is not None:
            model.train(was_training)


def _with_units(out, x, elbo) -> dict:
    """``out`` with the example count, D, the estimator's name, the ELBO and every bound in bits/dim."""
    D = math.prod(x.shape[1:])
    out = {"n_examples": x.shape[0], "dim": D, "estimator": type(elbo).__name__, **out}
    out["elbo"] = -out["nats"]
    out["bpd"] = out["nats"] / (D * math.log(2))
    for bound in ("pfode", "iwae"):
        if f"{bound}_nats" in out:
            out[f"{bound}_bpd"] = out[f"{bound}_nats"] / (D * math.log(2))
    return out


def _warn_heavy_tails(out, K) -> None:
    """:class:`ParetoKWarning` when the largest k̂ is above :data:`~hlvm.eval.psis.KHAT_THRESHOLD`."""
    if out.get("khat_max", float("nan")) > KHAT_THRESHOLD:
        warnings.warn(
            f"max Pareto k̂ = {out['khat_max']:.2f} > {KHAT_THRESHOLD} "
            f"({100 * out['khat_frac_gt_0.7']:.1f}% of examples): the importance weights are heavy-tailed "
            f"and the IWAE bound with K={K} is unreliable (Vehtari et al. 2024)", ParetoKWarning, stacklevel=3)


def _bound_loop(model, x, elbo, batch_size, plate, breakdown, report) -> dict:
    """Σ over batches of −ELBO and, with ``breakdown``, of its terms; means over examples.

    When the estimator's loss is the −ELBO of one guide trace (:func:`_reads_from_trace`), the
    loss and the breakdown come from the same draws; otherwise the estimator gives the loss and
    an independent one-draw trace the breakdown.
    """
    from_trace = _reads_from_trace(elbo)
    context = elbo if isinstance(elbo, DiffusionELBO) else None
    analytic = type(elbo) is TraceMeanField_ELBO
    total, losses, sums = 0.0, [], _TermSums(plate)
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size]
        if not from_trace:
            total += float(elbo.loss(model.model, model.guide, xb))
        if breakdown or from_trace:
            terms = per_site_terms(model, None, xb, plate=plate, context=context, analytic_kl=analytic)
            if from_trace:
                losses.append(terms["total"].detach().double().cpu())
            if breakdown:
                sums.add(terms, xb.shape[0])
        report("elbo", i + xb.shape[0], x.shape[0])
    if from_trace:  # the mean of the per-example values: the same number with per_example or without
        losses = torch.cat(losses)
        out: dict = {"nats": float(losses.mean()), "_elbo": -losses}
    else:
        out = {"nats": total / x.shape[0]}
    if breakdown:
        out.update(sums.means(x.shape[0], out["nats"]))
    return out


class _TermSums:
    """Sums over batches of the terms of −ELBO (:func:`~hlvm.eval.weights.per_site_terms`): per
    chain (DiffusionELBO's reconstruction / prior / diffusion / loss) or per site (KLs,
    reconstruction, factors), the per-example totals and the active-unit statistics."""

    def __init__(self, plate):
        self.per_example, self.chains, self.kl = [], {}, {}
        self.recon = self.factor = 0.0
        self.active = ActiveUnits(plate)

    def add(self, terms, batch) -> None:
        self.per_example.append(terms["total"].detach().double().cpu())
        for name, t in bound_terms(terms["model_trace"]).items():
            acc = self.chains.setdefault(name, dict.fromkeys(_CHAIN_KEYS, 0.0))
            for k in _CHAIN_KEYS:
                acc[k] += float(getattr(t, k).sum())
            if t.diffusion_var is not None:
                acc["diffusion_mc_var"] = acc.get("diffusion_mc_var", 0.0) + float(t.diffusion_var.sum())
        self.recon += float(terms["reconstruction"].sum())
        self.factor += float(terms["factor"].sum())
        for name, v in terms["kl"].items():
            self.kl[name] = self.kl.get(name, 0.0) + float(v.sum())
        self.active.add(terms["guide_trace"], batch)

    def means(self, n, nats) -> dict:
        """``nats_se``, the chain or site breakdown (means over the ``n`` examples) and ``_active``."""
        out = {"nats_se": _se(torch.cat(self.per_example))}
        out.update(self._chain_means(n, nats) if self.chains else self._site_means(n))
        out["_active"] = self.active
        return out

    def _chain_means(self, n, nats) -> dict:
        out = {"chains": {name: {k: v / n for k, v in acc.items() if k in _CHAIN_KEYS}
                          for name, acc in self.chains.items()}}
        mc_var = [acc["diffusion_mc_var"] for acc in self.chains.values() if "diffusion_mc_var" in acc]
        if mc_var:  # exact evaluation: the quadrature's own Monte Carlo error of the mean over examples
            out["diffusion_mc_se"] = math.sqrt(sum(mc_var)) / n
        for k in ("reconstruction", "prior", "diffusion"):
            out[k] = sum(c[k] for c in out["chains"].values())
        out["rest"] = nats - sum(c["loss"] for c in out["chains"].values())
        return out

    def _site_means(self, n) -> dict:
        kl = {k: v / n for k, v in self.kl.items()}
        return {"reconstruction": self.recon / n, "kl": kl, "kl_total": sum(kl.values()), "factor": self.factor / n}


def _iwae_loop(model, x, K, iwae_batch, steps, plate, memory, report) -> dict:
    bounds, khats = [], []
    for i in range(0, x.shape[0], iwae_batch):
        lw = per_example_log_weights(model, None, x[i:i + iwae_batch], K, steps=steps, plate=plate, memory=memory)  # (K, b)
        bounds.append(torch.logsumexp(lw, 0) - math.log(K))
        if K >= MIN_KHAT_SAMPLES:
            khats.append(pareto_khat(lw))
        report("iwae", i + lw.shape[1], x.shape[0])
    bounds = torch.cat(bounds).double().cpu()
    iwae = float(bounds.mean())
    out = {"K": int(K), "iwae": iwae, "iwae_nats": -iwae, "iwae_se": _se(bounds), "_iwae": bounds}
    if khats:
        out.update(khat_summary(torch.cat(khats)))
    return out


def _se(values: torch.Tensor) -> float:
    """Standard error of the mean of per-example values."""
    return float(values.std() / math.sqrt(values.numel())) if values.numel() > 1 else float("nan")


def data_chain(model):
    """The DiffusionChain over the data of ``model`` (one chain whose variable has the data's shape)."""
    chains = chains_of(model)
    shape = tuple(getattr(model, "data_shape", ()) or ())
    over_data = [c for c in chains if tuple(c.event_shape) == shape]
    if len(chains) != 1 or len(over_data) != 1:
        raise ValueError(f"the PF-ODE bound needs a model with one diffusion chain over the data; "
                         f"{type(model).__name__} has {len(chains)} chain(s), {len(over_data)} over data of shape {shape}")
    return over_data[0]


def has_data_chain(model) -> bool:
    """Whether :func:`data_chain` finds the model's diffusion chain over the data."""
    try:
        data_chain(model)
        return True
    except ValueError:
        return False


def _pfode_loop(model, x, samples, batch, ode_options, report) -> dict:
    chain = data_chain(model)
    bounds, mc_var, nfe, seconds, solves = [], 0.0, 0.0, 0.0, 0
    for i in range(0, x.shape[0], batch):
        r = pf_ode_bound(chain.denoiser, chain.schedule, chain.likelihood, x[i:i + batch], samples, **ode_options)
        bounds.append(r["bound"].detach().double().cpu())
        mc_var += float(r["se"].double().pow(2).sum())
        nfe, seconds, solves = nfe + r["nfe"], seconds + r["seconds"], solves + 1
        report("pfode", i + bounds[-1].numel(), x.shape[0])
    bounds = torch.cat(bounds)
    mean = float(bounds.mean())
    return {"pfode": mean, "pfode_nats": -mean, "pfode_se": _se(bounds), "pfode_mc_se": math.sqrt(mc_var) / bounds.numel(),
            "pfode_nfe": nfe / solves, "pfode_seconds": seconds, "pfode_samples": int(samples), "_pfode": bounds}
