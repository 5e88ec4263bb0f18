"""Compaction of long chains: a chain of any length drawn as ``z_1 → … → z_t → z_s → … → z_0``.

As De Sousa Ribeiro & Glocker draw the diffusion chain (Figure 5), a
:class:`~hlvm.programs.chain.DiffusionChain` of ``COMPACT_MIN_STEPS`` or more steps (and any
user-written run of consecutively indexed sites) collapses to six role nodes, so a T = 1000 chain
costs six nodes.
"""

from __future__ import annotations

import re

import networkx as nx

from .extract import _TRACE_STEPS

__all__ = ["compact_graph", "COMPACT_MIN_STEPS"]

#: diffusion chains with at least this many steps are drawn as z_1 → … → z_t → z_s → … → z_0
COMPACT_MIN_STEPS = 4
#: user-written chains ``p_a … p_b`` (not DiffusionChains) are compacted from this many sites on
_GENERIC_MIN_SITES = 10

#: a user-written indexed site ``p_i``; DiffusionChains' sites are known by name, never parsed
_INDEXED = re.compile(r"^(.+)_(\d+)$")


def _diffusion_chain_sites(G, info) -> dict:
    """{index: site} of a DiffusionChain's latents present in G, from the chain's own record
    (``info["sites"]``, :meth:`~hlvm.programs.chain.DiffusionChain.site_index`)."""
    return {i: n for n, i in info["sites"].items() if n in G and G.nodes[n]["kind"] == "sample"}


def _generic_chains(G, known) -> dict:
    """Long runs ``p_a … p_b`` of consecutively indexed sites that no DiffusionChain made: a user's
    own names are all there is to go by, so these are found by their ``{p}_{i}`` pattern."""
    claimed = {n for info in known.values() for n in info.get("sites", ())}
    runs: dict = {}
    for n, d in G.nodes(data=True):
        m = _INDEXED.match(str(n)) if d["kind"] == "sample" and n not in claimed else None
        if m:
            runs.setdefault(m.group(1), {})[int(m.group(2))] = n
    out = {}
    for p, sites in sorted(runs.items()):
        idx = sorted(sites)
        if len(idx) >= _GENERIC_MIN_SITES and idx == list(range(idx[0], idx[-1] + 1)):
            out[p] = {"T": None, "steps": len(idx) - 1, "generic": True, "found": sites}
    return out


def _roles(indices, prefix, info) -> tuple[dict, dict]:
    """Map each chain index to a role node; returns ({index: node id}, {node id: label})."""
    lo, hi = min(indices), max(indices)
    m = lo + (hi - lo + 1) // 2  # z_t's index: at least one site on each side of z_t → z_s
    ids = {"top": f"{prefix}_T", "up": f"{prefix}_…T", "t": f"{prefix}_t", "s": f"{prefix}_s",
           "down": f"{prefix}_…0", "bottom": f"{prefix}_0"}
    if info.get("generic"):
        labels = {"top": f"{prefix}_{hi}", "t": f"{prefix}_i+1", "s": f"{prefix}_i", "bottom": f"{prefix}_{lo}"}
    else:  # the paper's continuous-time notation: z_1 (pure noise) … z_t → z_s … z_0
        labels = {"top": f"{prefix}_1", "t": f"{prefix}_t", "s": f"{prefix}_s", "bottom": f"{prefix}_0"}
    labels.update(up="…", down="…")

    def role(i):
        if i == hi:
            return "top"
        if i == lo:
            return "bottom"
        return "up" if i > m else "t" if i == m else "s" if i == m - 1 else "down"

    return {i: ids[role(i)] for i in indices}, {ids[r]: labels[r] for r in ids}


def compact_graph(G: nx.DiGraph, min_steps: int = COMPACT_MIN_STEPS) -> nx.DiGraph:
    """``G`` with each long chain drawn as ``z_1 → … → z_t → z_s → … → z_0``.

    The chains are the DiffusionChains recorded in ``G.graph["chains"]`` with at least
    ``min_steps`` steps (traced with five, whatever T is) and any user-written run of ten or more
    consecutively indexed sites.  Every edge of G is kept between the nodes its ends map to, so
    a shared denoiser keeps one edge to each role node; the node count does not grow with T.
    Role nodes have ``kind`` ``"sample"`` or ``"ellipsis"`` and ``sites`` (what they stand for).
    """
    known = G.graph.get("chains", {})
    chains = {p: dict(i, found=_diffusion_chain_sites(G, i)) for p, i in known.items() if i["steps"] >= min_steps}
    chains.update(_generic_chains(G, known))
    mapping, labels = {}, {}
    for prefix, info in chains.items():
        sites = info["found"]
        if len(sites) < _TRACE_STEPS + 1:
            continue
        by_index, lab = _roles(sorted(sites), prefix, info)
        mapping.update({sites[i]: node for i, node in by_index.items()})
        labels.update(lab)
    H = nx.DiGraph(**{k: v for k, v in G.graph.items()})
    for n, d in G.nodes(data=True):
        target = mapping.get(n, n)
        if target not in H:
            attrs = dict(d, sites=[])
            if target != n:
                attrs.update(label=labels[target], kind="ellipsis" if labels[target] == "…" else "sample")
            H.add_node(target, **attrs)
        H.nodes[target]["sites"].append(n)
    for u, v, d in G.edges(data=True):
        a, b = mapping.get(u, u), mapping.get(v, v)
        if a != b:
            H.add_edge(a, b, **d)
    return H
