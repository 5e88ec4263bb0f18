"""Score a trained model with the bounds that belong to it — the one place where ``hlvm compare``
(:mod:`hlvm.reports.compare`) and ``make results`` (:mod:`hlvm.reports.results`) evaluate a
trained model.

Every bound is a lower bound on log p(x) of the *same* model (De Sousa Ribeiro & Glocker 2024, §2):

* the **ELBO** with its breakdown and active units, on every model;
* the **importance-weighted bound** IWAE_K (Burda, Grosse & Salakhutdinov 2016, eq. 8) with its
  Pareto k̂ (Vehtari et al. 2024), when the model's program has one: no continuous-time diffusion
  chain (a discretized chain would be another model);
* the **probability-flow ODE bound** (Song et al. 2021, eq. 13, through the decoder:
  :func:`hlvm.diffusion.ode.pf_ode_bound`), which takes the IWAE's place for a continuous-time
  diffusion chain over the data.

Each is one call of :func:`~hlvm.eval.evaluate` from the same seed, so a number depends on the
model, the examples and the seed only.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import torch

from ..estimators import default_estimator
from ..programs.chain import chains_of
from ..programs.elbo import DiffusionELBO
from .evaluate import evaluate, has_data_chain
from .psis import ParetoKWarning

__all__ = ["Scores", "own_bounds", "score", "scoring_elbo", "ELBO_NODES"]

#: stratified nodes per example of a continuous-time chain's diffusion term in the ELBO column
ELBO_NODES = 32


def own_bounds(model) -> dict:
    """Which bounds beyond the ELBO belong to ``model`` itself (one model per column):

    * ``iwae`` — its program is the model: no continuous-time chain (a discretized chain would be
      another model);
    * ``pfode`` — a continuous-time diffusion chain over the data, whose probability-flow ODE bound
      takes the IWAE's place (a discrete-T model's own bound is its IWAE).
    """
    continuous = any(c.T is None for c in chains_of(model))
    return {"iwae": not continuous, "pfode": continuous and has_data_chain(model)}


def scoring_elbo(model, elbo):
    """The estimator of the ELBO column: ``elbo`` itself, except a one-draw :class:`DiffusionELBO`
    on a model with a continuous-time chain, which is scored as the same ELBO with
    :data:`ELBO_NODES` stratified nodes in γ per example (VDM eq. 17 integrated over γ; random
    per-example offsets keep it unbiased).  One (t, ε) draw per image leaves Monte Carlo noise far
    above the spread between images — measured on ``hlvm demo``'s VDM (1,000 images): SE 6.70
    nats with one draw, 0.98 with 32 nodes, 6 s of one core.  A one-draw :class:`DiffusionELBO` on
    discrete-time chains is scored exactly (all T terms, eq. 13) where T ≤ :data:`ELBO_NODES`, else
    with :data:`ELBO_NODES` systematic draws per example (antithetic times over ``num_t × B`` draws
    give each example one time in each of ``num_t`` equal strata): the ``make results`` T = 1000 row's
    SE was 1.33 nats with one draw.  Any other :class:`DiffusionELBO` is scored
    :meth:`~hlvm.programs.elbo.DiffusionELBO.for_evaluation` (no importance-sampled times)."""
    if not isinstance(elbo, DiffusionELBO):
        return elbo
    Ts = [c.T for c in chains_of(model)]
    if not Ts or elbo.exact or not elbo.is_elbo:
        return elbo.for_evaluation()
    if None in Ts:  # continuous time
        return DiffusionELBO(exact=True, eval_nodes=ELBO_NODES, max_batch=elbo.max_batch)
    if elbo.num_t > 1:  # the caller chose several draws per example: scored as given
        return elbo.for_evaluation()
    if max(Ts) <= ELBO_NODES:
        return DiffusionELBO(exact=True, max_batch=elbo.max_batch)
    return DiffusionELBO(sampler="antithetic", num_t=ELBO_NODES, max_batch=elbo.max_batch)


@dataclass
class Scores:
    """What :func:`score` found: each field the dict :func:`~hlvm.eval.evaluate` returned (empty
    when that bound was not computed), the k̂ warnings of the IWAE evaluation, the wall time and,
    when asked for, ``per_example`` {bound: CPU float64 tensor of each example's value} for the
    bounds computed (``elbo``, ``iwae``, ``pfode``; each aligned with the examples it covers and
    averaging to its field's mean)."""

    evaluation: dict
    iwae: dict = field(default_factory=dict)
    pfode: dict = field(default_factory=dict)
    khat_warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    per_example: dict = field(default_factory=dict)


def score(model, test: torch.Tensor, elbo=None, *, seed: int = 0, eval_examples: int | None = None, K: int = 0,
          iwae_examples: int | None = None, iwae_batch: int = 100, pfode_examples: int | None = None,
          pfode_samples: int = 1, per_example: bool = False, progress=None) -> Scores:
    """The ELBO, and the IWAE and PF-ODE bounds that belong to ``model`` (:func:`own_bounds`), on the
    first examples of ``test``.

    :param elbo: the ELBO estimator (a trained model's: the one it trained with; default
        :func:`hlvm.estimators.default_estimator`); the ELBO column uses :func:`scoring_elbo` of it.
    :param seed: every evaluation draws its randomness from this seed.
    :param eval_examples: examples for the ELBO and its breakdown (None: all).
    :param K: importance samples of the IWAE bound (0: none).
    :param iwae_examples: examples for the IWAE bound (None: all; 0: none); ``iwae_batch`` of them
        per call.
    :param pfode_examples: examples for the PF-ODE bound (None: all; 0: none), ``pfode_samples``
        draws of z_0 each.
    :param per_example: also each example's value of each bound (``Scores.per_example``; see
        :func:`~hlvm.eval.evaluate`'s ``per_example``).
    :param progress: ``progress(stage, done, total)`` after each batch of each evaluation
        (:func:`~hlvm.eval.evaluate`'s ``progress``).

    :class:`~hlvm.ParetoKWarning` of the IWAE evaluation is not emitted but returned in
    ``khat_warnings``; other warnings pass.
    """
    own, start = own_bounds(model), time.perf_counter()
    elbo = default_estimator(model, test[:2]) if elbo is None else elbo
    common = dict(elbo=elbo, seed=seed, per_example=per_example, progress=progress)
    scores = Scores(evaluate(model, test[:eval_examples], **{**common, "elbo": scoring_elbo(model, elbo)}))
    if K and iwae_examples != 0 and own["iwae"]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ParetoKWarning)
            scores.iwae = evaluate(model, test[:iwae_examples], K=K, breakdown=False, iwae_batch=iwae_batch,
                                   **common)
        scores.khat_warnings = _pass_others(caught, ParetoKWarning)
    if pfode_examples != 0 and own["pfode"]:
        scores.pfode = evaluate(model, test[:pfode_examples], breakdown=False, pfode=True, pfode_samples=pfode_samples,
                                **common)
    if per_example:
        scores.per_example = _values(scores)
    scores.seconds = time.perf_counter() - start
    return scores


def _values(scores: Scores) -> dict:
    """Each bound's per-example values, taken out of the evaluations (which stay plain numbers):
    the ELBO of the ELBO evaluation, the IWAE and PF-ODE bounds of theirs."""
    parts = (("elbo", scores.evaluation), ("iwae", scores.iwae), ("pfode", scores.pfode))
    found = {name: ev.pop("per_example", {}) for name, ev in parts}
    return {name: found[name][name] for name in found if name in found[name]}


def _pass_others(caught, category) -> list[str]:
    """The messages of the recorded warnings of ``category``; every other one is emitted again."""
    kept = []
    for w in caught:
        if issubclass(w.category, category):
            kept.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return kept
