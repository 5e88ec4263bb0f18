"""Checks on the DAGs of a model/guide pair (graphs from :mod:`hlvm.graph.extract`).

* :func:`check_mean_field` — Pyro's condition for ``TraceMeanField_ELBO``: it is exact only if,
  for every latent z, z's parents in the model include none of z's descendants in the guide
  (true of top-down guides, false of bottom-up ones: De Sousa Ribeiro & Glocker, Fig. 2); the
  check names the sites that break it;
* :func:`guide_direction` — ``"top-down"`` (the guide samples latents in the model's order),
  ``"bottom-up"`` (the reverse) or ``"mixed"``.
"""

from __future__ import annotations

import dataclasses

import networkx as nx

from .extract import _TRACE_STEPS, example_input, pair_graphs, topological_order

__all__ = ["check_mean_field", "MeanFieldCheck", "guide_direction"]


def _latents(G_model, G_guide) -> list:
    """Non-observed, non-deterministic model sites that the guide also samples."""
    return [n for n in topological_order(G_model)
            if not G_model.nodes[n]["observed"] and not G_model.nodes[n]["deterministic"]
            and n in G_guide and G_guide.nodes[n]["kind"] == "sample"]


@dataclasses.dataclass(frozen=True)
class MeanFieldCheck:
    """Result of :func:`check_mean_field`; truthy when ``TraceMeanField_ELBO`` is exact.

    Attributes:
        ok: whether the condition holds for every latent.
        violations: {latent z: model parents of z that are guide descendants of z}.
        message: one sentence saying so, naming the first offending site.
    """

    ok: bool
    violations: dict
    message: str

    def __bool__(self) -> bool:
        return self.ok

    @property
    def site(self) -> str | None:
        """The first latent (in model order) that breaks the condition, or None."""
        return next(iter(self.violations), None)


def _graphs(model, guide, args, kwargs):
    if isinstance(model, nx.DiGraph) and isinstance(guide, nx.DiGraph):
        return model, guide
    if guide is None and hasattr(model, "model") and hasattr(model, "guide"):
        x = args[0] if args else example_input(model)
        return pair_graphs(model.model, model.guide, x, max_chain_steps=_TRACE_STEPS, **kwargs)
    return pair_graphs(model, guide, *args, max_chain_steps=_TRACE_STEPS, **kwargs)


def check_mean_field(model, guide=None, *args, **kwargs) -> MeanFieldCheck:
    """Is ``TraceMeanField_ELBO`` exact for this pair?

    Its analytic KL per site is exact only when, for every latent z, z's parents in the model
    include none of z's descendants in the guide (Pyro's docs; De Sousa Ribeiro & Glocker,
    Fig. 2: top-down guides qualify, bottom-up ones do not).

    Accepts two DiGraphs from :func:`pair_graphs`, a ``(model, guide, *args)`` triple, or a
    module with ``model``/``guide`` methods and a ``data_shape`` (then traced on zeros).
    """
    G_model, G_guide = _graphs(model, guide, args, kwargs)
    violations = {}
    for z in _latents(G_model, G_guide):
        bad = set(G_model.predecessors(z)) & nx.descendants(G_guide, z)
        if bad:
            violations[z] = tuple(n for n in topological_order(G_model, include_inputs=True) if n in bad)
    if not violations:
        msg = "TraceMeanField_ELBO is exact: no latent's model parents are among its guide descendants"
    else:
        z, bad = next(iter(violations.items()))
        msg = (f"TraceMeanField_ELBO is not exact: latent {z!r} has model parent(s) {', '.join(map(repr, bad))} "
               f"that the guide samples after {z!r} (use Trace_ELBO)")
    return MeanFieldCheck(ok=not violations, violations=violations, message=msg)


def guide_direction(model, guide=None, *args, **kwargs) -> str:
    """``"top-down"``, ``"bottom-up"`` or ``"mixed"``: the guide's order of the shared latents.

    Over pairs of latents related by ancestry in both programs: top-down when every such pair is
    ordered as in the model (a single latent, as in a VAE, counts as top-down), bottom-up when
    every pair is reversed, mixed otherwise.  Arguments as for :func:`check_mean_field`.
    """
    G_model, G_guide = _graphs(model, guide, args, kwargs)
    latents = _latents(G_model, G_guide)
    same = reversed_ = 0
    for a in latents:
        below_model, below_guide, above_guide = nx.descendants(G_model, a), nx.descendants(G_guide, a), nx.ancestors(G_guide, a)
        for b in latents:
            if b in below_model:
                same += b in below_guide
                reversed_ += b in above_guide
    if reversed_ == 0:
        return "top-down"
    return "bottom-up" if same == 0 else "mixed"
