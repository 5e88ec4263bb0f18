"""Plate diagrams of model/guide pairs, and the graph checks built on them.

One figure sets the generative model p and the inference model q side by side, as
De Sousa Ribeiro & Glocker, *Demystifying Variational Diffusion Models* (Figures 2 and 5) do:
sample sites are nodes (observed ones shaded, guide-only deterministic ones such as the
bottom-up d_l of a ladder VAE dashed), plates are boxes, and every network module is ONE
parameter node with an edge to each site whose distribution it parameterizes.  A weight-shared
module — the diffusion denoiser x̂θ above all — is drawn in blue with an edge to every step it
serves (Fig. 5's blue lines).  A :class:`~hlvm.diffusion.DiffusionChain` of any length T is drawn
compactly as ``z_1 → … → z_t → z_s → … → z_0``, so a T = 1000 chain costs six nodes.

Underneath, each program is a :class:`networkx.DiGraph` of its sites (:func:`program_graph`),
found by tracing it once with provenance-tracking tensors (as :func:`pyro.render_model` does,
plus the program's tensor inputs and its network modules).  On those graphs:

* :func:`check_mean_field` — ``TraceMeanField_ELBO`` is exact only if, for every latent z, z's
  parents in the model include none of z's descendants in the guide (true of top-down guides,
  false of bottom-up ones); the check names the sites that break it;
* :func:`guide_direction` — ``"top-down"`` (the guide samples latents in the model's order),
  ``"bottom-up"`` (the reverse) or ``"mixed"``;
* :func:`topological_order` — a deterministic topological order of a program's sites.

The module is callable: ``hlvm.render(model, guide, *args)`` is :func:`render`, while
``hlvm.render.check_mean_field`` etc. stay reachable as attributes.

Rendering to SVG/PNG/PDF needs Graphviz's ``dot`` (Debian: ``apt-get install graphviz``); without
it the dot source is still written and :class:`GraphvizNotFoundError` says how to install it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import inspect
import re
import shutil
import subprocess
from collections import OrderedDict
from pathlib import Path

import graphviz
import networkx as nx
import pyro
import torch
from pyro.ops.provenance import ProvenanceTensor, detach_provenance, get_provenance, track_provenance
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import nn

from ..programs.chain import DiffusionChain

__all__ = [
    "render", "render_module", "to_graphviz", "example_input",
    "program_graph", "pair_graphs", "compact_graph", "network_modules",
    "relations", "plate_membership", "module_relations",
    "check_mean_field", "MeanFieldCheck", "guide_direction", "topological_order",
    "write", "GraphvizNotFoundError", "FORMATS", "COMPACT_MIN_STEPS",
]

#: output formats of :func:`render` (``dot`` writes the Graphviz source only)
FORMATS = ("svg", "png", "pdf", "dot")
#: diffusion chains with at least this many steps are drawn as z_1 → … → z_t → z_s → … → z_0
COMPACT_MIN_STEPS = 4
#: the number of steps a compacted DiffusionChain is traced with (any T draws the same figure)
_TRACE_STEPS = 5
#: user-written chains ``p_a … p_b`` (not DiffusionChains) are compacted from this many sites on
_GENERIC_MIN_SITES = 10

_BLUE, _GREY = "#1f62b4", "#8c8c8c"


class GraphvizNotFoundError(ValueError):
    """Graphviz's ``dot`` is needed to render an image and is not on the PATH."""


# ---------------------------------------------------------------------------- network modules
def network_modules(*roots) -> "OrderedDict[str, nn.Module]":
    """The networks of ``roots`` that get one parameter node each, by display name.

    The named children of each root that hold parameters; a ``ModuleList``/``ModuleDict`` gives
    one node per element (``priors[0]``, ``priors[1]``, …) and a :class:`DiffusionChain` one per
    part (its ``denoiser``, a learned ``schedule``).  A module reachable under two names (the
    VDM's ``denoiser`` is also ``chain.denoiser``) keeps the first.
    """
    out: OrderedDict[str, nn.Module] = OrderedDict()
    seen: set[int] = set()

    def add(name, module):
        if id(module) in seen or not _has_params(module):
            return
        seen.add(id(module))
        while name in out:
            name += "'"
        out[name] = module

    for root in roots:
        if not isinstance(root, nn.Module):
            continue
        for name, child in root.named_children():
            if isinstance(child, (nn.ModuleList, nn.ModuleDict)):
                for key, element in child.named_children():
                    add(f"{name}[{key}]", element)
            elif isinstance(child, DiffusionChain):
                for key, part in child.named_children():
                    add(key if key not in out else f"{name}.{key}", part)
            else:
                add(name, child)
    return out


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


@contextlib.contextmanager
def _tagged_parameters(modules, roots=()):
    """Temporarily swap every parameter of ``modules`` for a provenance-tracking alias.

    Whatever a site's distribution computes from a module's weights then carries that
    module's name, so module → site edges come out of one trace; the roots' own parameters
    are tagged with their names.  Modules are put in eval
    mode meanwhile; parameters and training flags are restored on exit.
    """
    swapped, modes = [], []
    done: set[int] = set()
    try:
        for root in [*roots, *modules.values()]:
            for sub in root.modules():
                modes.append((sub, sub.training))
                sub.training = False  # pyro.module warns about a training module with frozen weights
        owned = [(group, sub, pname) for group, module in modules.items() for sub in module.modules()
                 for pname in sub._parameters]
        owned += [(pname.removesuffix("_unconstrained"), root, pname) for root in roots for pname in root._parameters]
        for group, sub, pname in owned:  # a root's own parameters (e.g. a PyroParam) are nodes too
            p = sub._parameters[pname]
            if p is None or id(p) in done or isinstance(p, ProvenanceTensor):
                continue
            done.add(id(p))
            swapped.append((sub, pname, p))
            sub._parameters[pname] = ProvenanceTensor(p.detach(), frozenset({("module", group)}))
        yield
    finally:
        for sub, pname, p in swapped:
            sub._parameters[pname] = p
        for sub, mode in reversed(modes):
            sub.training = mode


def _owners(*fns):
    """The nn.Modules whose bound methods ``fns`` are (deduplicated, in order)."""
    out = []
    for fn in fns:
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, nn.Module) and all(owner is not o for o in out):
            out.append(owner)
    return out


def _chains(roots):
    out = []
    for root in roots:
        if isinstance(root, nn.Module):
            out += [m for m in root.modules() if isinstance(m, DiffusionChain) and all(m is not c for c in out)]
    return out


@contextlib.contextmanager
def _chain_steps(chains, policy):
    """Trace each DiffusionChain with ``policy(true_steps)`` steps; yields {prefix: info}."""
    saved, info = [], {}
    try:
        for chain in chains:
            true_steps = chain.steps
            steps = policy(true_steps)
            info[chain.name] = {"T": chain.T, "steps": true_steps, "traced_steps": steps}
            saved.append((chain, chain.T, chain.trace_steps))
            if chain.T is None:
                chain.trace_steps = steps
            else:
                chain.T = steps
        yield info
    finally:
        for chain, T, trace_steps in saved:
            chain.T, chain.trace_steps = T, trace_steps


# ---------------------------------------------------------------------------- tracing
class _SiteTracker(Messenger):
    """Records each sample site and the provenance of its distribution (its direct parents)."""

    def __init__(self):
        super().__init__()
        self.sites: OrderedDict[str, dict] = OrderedDict()

    def _pyro_post_sample(self, msg):
        if site_is_subsample(msg) or not isinstance(msg["value"], torch.Tensor):
            return
        name, value = msg["name"], detach_provenance(msg["value"])
        self.sites[name] = {
            "parents": _dist_provenance(msg["fn"], value) - {("sample", name)},
            "distribution": _dist_name(msg["fn"]),
            "observed": bool(msg["is_observed"]) and not msg["infer"].get("_deterministic", False),
            "deterministic": _is_deterministic(msg),
            "auxiliary": bool(msg["infer"].get("is_auxiliary", False)),
            "plates": tuple(f.name for f in msg["cond_indep_stack"]),
            "plate_sizes": {f.name: f.size for f in msg["cond_indep_stack"]},
        }
        msg["value"] = ProvenanceTensor(value, frozenset({("sample", name)}))

    def _pyro_post_param(self, msg):
        """A ``pyro.param`` used directly (not through a tagged module) is its own parameter node."""
        value = msg["value"]
        if isinstance(value, torch.Tensor) and not any(k == "module" for k, _ in get_provenance(value)):
            msg["value"] = track_provenance(value, frozenset({("module", msg["name"].split("$$$")[0])}))


def _dist_provenance(fn, value) -> frozenset:
    """Names the distribution ``fn`` was computed from (via its log-density at ``value``)."""
    try:
        return get_provenance(fn.log_prob(value))
    except Exception:  # a distribution whose log_prob refuses the value: read its tensors
        return _attr_provenance(fn, depth=0)


def _attr_provenance(obj, depth) -> frozenset:
    found = frozenset()
    for v in vars(obj).values() if depth < 4 and hasattr(obj, "__dict__") else ():
        if isinstance(v, torch.Tensor):
            found |= get_provenance(v)
        elif isinstance(v, torch.distributions.Distribution):
            found |= _attr_provenance(v, depth + 1)
    return found


def _dist_name(fn) -> str:
    wrappers = (pyro.distributions.Independent, pyro.distributions.MaskedDistribution,
                pyro.distributions.ExpandedDistribution, torch.distributions.Independent)
    while isinstance(fn, wrappers):
        fn = fn.base_dist
    return type(fn).__name__


def _is_deterministic(msg) -> bool:
    return bool(msg["infer"].get("_deterministic", False)) or _dist_name(msg["fn"]) == "Delta"


def _tag_inputs(fn, args, kwargs):
    """Bind ``args``/``kwargs`` to ``fn``'s parameter names and tag every tensor with its name."""
    try:
        bound = inspect.signature(fn).bind_partial(*args, **kwargs)
        named = list(bound.arguments.items())
        kinds = {n: p.kind for n, p in bound.signature.parameters.items()}
    except (TypeError, ValueError):
        named, kinds = [(f"arg{i}", a) for i, a in enumerate(args)] + list(kwargs.items()), {}
    new_args, new_kwargs = [], {}
    for name, value in named:
        kind = kinds.get(name, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        if kind is inspect.Parameter.VAR_POSITIONAL:
            new_args += [_tag(v, f"{name}[{i}]") for i, v in enumerate(value)]
        elif kind is inspect.Parameter.VAR_KEYWORD:
            new_kwargs.update({k: _tag(v, k) for k, v in value.items()})
        elif name in kwargs:
            new_kwargs[name] = _tag(value, name)
        else:
            new_args.append(_tag(value, name))
    return tuple(new_args), new_kwargs


def _tag(value, name):
    if isinstance(value, torch.Tensor) or (isinstance(value, (tuple, list, dict)) and value):
        return track_provenance(detach_provenance(value), frozenset({("input", name)}))
    return value


def program_graph(fn, *args, modules=None, name: str | None = None, **kwargs) -> nx.DiGraph:
    """Trace the Pyro program ``fn(*args, **kwargs)`` once into a DAG of its sites.

    Nodes carry ``kind`` (``"sample"``, ``"input"`` for the program's tensor arguments such as a
    guide's x, or ``"module"`` for a network) and, for sites, ``distribution`` (e.g.
    ``"Normal"``), ``observed``, ``deterministic``, ``auxiliary``, ``plates`` (outermost first)
    and ``order`` (trace order).  An edge u → v says v's distribution is computed from u.

    Args:
        modules: the networks to draw as parameter nodes — an nn.Module (or several), or a dict
            name → module; by default the nn.Module that ``fn`` is a bound method of.
        name: the graph's name (``G.graph["name"]``).
    """
    groups, roots = _resolve_modules(modules, fn)
    tracker = _SiteTracker()
    tagged_args, tagged_kwargs = _tag_inputs(fn, args, kwargs)
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=[]))
        stack.enter_context(torch.no_grad())
        stack.enter_context(pyro.validation_enabled(False))
        stack.enter_context(pyro.get_param_store().scope())
        stack.enter_context(_tagged_parameters(groups, roots))
        stack.enter_context(tracker)
        fn(*tagged_args, **tagged_kwargs)
    return _build_graph(tracker.sites, name or getattr(fn, "__name__", "program"))


def _resolve_modules(modules, *fns):
    """({display name: network}, [root modules]) from ``modules`` or the owners of ``fns``."""
    if isinstance(modules, dict):
        return dict(modules), _owners(*fns) + list(modules.values())
    roots = _owners(*fns) if modules is None else list(modules) if isinstance(modules, (list, tuple)) else [modules]
    roots = [m for m in roots if isinstance(m, nn.Module)]
    return network_modules(*roots), roots


def _build_graph(sites, name) -> nx.DiGraph:
    G = nx.DiGraph(name=name, plates={}, chains={})
    for order, (site, info) in enumerate(sites.items()):
        G.add_node(site, kind="sample", order=order, **{k: v for k, v in info.items() if k not in ("parents", "plate_sizes")})
        G.graph["plates"].update(info["plate_sizes"])
    for site, info in sites.items():
        for kind, parent in sorted(info["parents"]):
            if kind == "sample" and parent in sites:
                G.add_edge(parent, site, kind="sample")
            elif kind == "input" and parent not in sites:  # an observed site's own data is no parent
                G.add_node(parent, kind="input", observed=True, deterministic=False, distribution=None)
                G.add_edge(parent, site, kind="input")
            elif kind == "module":
                G.add_node(_module_node(parent), kind="module", module=parent, plates=())
                G.add_edge(_module_node(parent), site, kind="module")
    _place_inputs(G)
    return G


def _module_node(name: str) -> str:
    return f"module:{name}"


def _place_inputs(G):
    """An input sits in the plates shared by all the sites it feeds (x in the data plate)."""
    for k, node in enumerate(n for n, d in list(G.nodes(data=True)) if d["kind"] == "input"):
        children = [G.nodes[c]["plates"] for c in G.successors(node)]
        common = [p for p in children[0] if all(p in c for c in children)] if children else []
        G.nodes[node].update(plates=tuple(common), order=-1 - k)


def pair_graphs(model, guide, *args, modules=None, max_chain_steps: int | None = None, **kwargs):
    """The DiGraphs of ``model(*args, **kwargs)`` and ``guide(*args, **kwargs)``.

    Args:
        modules: networks to draw as parameter nodes (default: the modules ``model`` and
            ``guide`` are bound methods of).
        max_chain_steps: trace every :class:`DiffusionChain` with at most this many steps
            (the program is a loop, so its structure does not depend on T).
    """
    policy = (lambda s: s) if max_chain_steps is None else (lambda s: min(s, max_chain_steps))
    return _pair_graphs(model, guide, args, kwargs, modules, policy)


def _pair_graphs(model, guide, args, kwargs, modules, policy):
    groups, roots = _resolve_modules(modules, model, guide)
    with _chain_steps(_chains(roots), policy) as info:
        graphs = tuple(program_graph(fn, *args, modules=groups, name=name, **kwargs)
                       for fn, name in ((model, "model"), (guide, "guide")))
    for G in graphs:
        G.graph["chains"] = dict(info)
    return graphs


# ---------------------------------------------------------------------------- relation dicts
def relations(G: nx.DiGraph) -> dict:
    """{site: set of parent sites and inputs} over the sample sites and inputs (no modules)."""
    keep = [n for n, k in G.nodes(data="kind") if k != "module"]
    return {n: {p for p in G.predecessors(n) if G.nodes[p]["kind"] != "module"} for n in keep}


def plate_membership(G: nx.DiGraph) -> dict:
    """{site or input: tuple of its plates, outermost first}."""
    return {n: tuple(d["plates"]) for n, d in G.nodes(data=True) if d["kind"] != "module"}


def module_relations(G: nx.DiGraph) -> dict:
    """{module name: set of the sites its parameters feed}."""
    return {d["module"]: set(G.successors(n)) for n, d in G.nodes(data=True) if d["kind"] == "module"}


def topological_order(G: nx.DiGraph, include_inputs: bool = False) -> list:
    """The sample sites (and inputs) of ``G`` in topological order, ties broken by trace order."""
    keep = [n for n, d in G.nodes(data=True) if d["kind"] == "sample" or (include_inputs and d["kind"] == "input")]
    sub = G.subgraph(keep)
    return list(nx.lexicographical_topological_sort(sub, key=lambda n: (G.nodes[n].get("order", 0), str(n))))


def _latents(G_model, G_guide) -> list:
    """Non-observed, non-deterministic model sites that the guide also samples."""
    return [n for n in topological_order(G_model)
            if not G_model.nodes[n]["observed"] and not G_model.nodes[n]["deterministic"]
            and n in G_guide and G_guide.nodes[n]["kind"] == "sample"]


# ---------------------------------------------------------------------------- checks
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


# ---------------------------------------------------------------------------- compact chains
_INDEXED = re.compile(r"^(.+)_(\d+)$")


def _chain_sites(G, prefix) -> dict:
    """{index: site} of the sample sites named ``{prefix}_{i}``."""
    out = {}
    for n, d in G.nodes(data=True):
        m = _INDEXED.match(str(n)) if d["kind"] == "sample" else None
        if m and m.group(1) == prefix:
            out[int(m.group(2))] = n
    return out


def _generic_chains(G, known) -> dict:
    """Long runs ``p_a … p_b`` of consecutively indexed sites that no DiffusionChain made."""
    prefixes = {m.group(1) for n in G.nodes if (m := _INDEXED.match(str(n)))} - set(known)
    out = {}
    for p in sorted(prefixes):
        idx = sorted(_chain_sites(G, p))
        if len(idx) >= _GENERIC_MIN_SITES and idx == list(range(idx[0], idx[-1] + 1)):
            out[p] = {"T": None, "steps": len(idx) - 1, "generic": True}
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
    chains = {p: i for p, i in G.graph.get("chains", {}).items() if i["steps"] >= min_steps}
    chains.update(_generic_chains(G, G.graph.get("chains", {})))
    mapping, labels = {}, {}
    for prefix, info in chains.items():
        sites = _chain_sites(G, prefix)
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


# ---------------------------------------------------------------------------- drawing
def _html_name(name: str) -> str:
    """``z_t`` → z<SUB>t</SUB> (HTML-like Graphviz label)."""
    base, sep, sub = str(name).rpartition("_")
    if sep and base and re.fullmatch(r"[\w…+\-]{1,8}", sub):
        return f"{html.escape(base)}<SUB>{html.escape(sub)}</SUB>"
    return html.escape(str(name))


def _heights(G_model, G_guide) -> dict:
    """A vertical level per node: the model's depth; guide-only nodes sit just below their
    highest child, so that both panels read top (noise) to bottom (data)."""
    skeleton = G_model.subgraph(n for n, k in G_model.nodes(data="kind") if k != "module")
    h = {}
    for n in nx.topological_sort(skeleton):
        h[n] = max((h[p] + 1 for p in skeleton.predecessors(n)), default=0)
    guide_only = [n for n in reversed(list(nx.topological_sort(G_guide))) if n not in h and G_guide.nodes[n]["kind"] != "module"]
    for n in guide_only:
        below = [h[c] for c in G_guide.successors(n) if c in h]
        h[n] = min(below) if below else max((h[p] + 1 for p in G_guide.predecessors(n) if p in h), default=0)
    return h


def _node_attrs(d: dict, label_name, distributions: bool, shared: bool) -> dict:
    kind = d["kind"]
    if kind == "module":
        return {"label": html.escape(d["module"]), "shape": "box", "style": "rounded,filled",
                "fillcolor": "#dfe9f7" if shared else "#f2f2f2", "color": _BLUE if shared else _GREY,
                "fontsize": "10", "height": "0.3", "margin": "0.08,0.04", "fontcolor": _BLUE if shared else "#444444"}
    if kind == "ellipsis":
        return {"label": "⋯", "shape": "plaintext", "fontsize": "20"}
    label = _html_name(label_name)
    if distributions and d.get("distribution") and not d.get("deterministic"):
        label += f'<BR/><FONT POINT-SIZE="9" COLOR="#555555">{html.escape(d["distribution"])}</FONT>'
    attrs = {"label": f"<{label}>", "shape": "ellipse", "style": "filled", "fillcolor": "white"}
    if d.get("observed"):
        attrs["fillcolor"] = "#c8c8c8"
    if d.get("deterministic"):
        attrs["style"] = "dashed"
    return attrs


def _emit_program(g, G, side, heights, distributions, title):
    """Add ``G`` as the cluster ``cluster_{side}`` of ``g``, plates as nested clusters."""
    ids = {n: f"{side}{k}" for k, n in enumerate(G.nodes)}
    served = {n: sum(G.nodes[c]["kind"] != "module" for c in G.successors(n)) for n in G.nodes}
    shared = {n for n in G.nodes if G.nodes[n]["kind"] == "module" and served[n] >= 2}
    with g.subgraph(name=f"cluster_{side}") as c:
        c.attr(label=title, labelloc="t", fontsize="15", style="rounded", color="#b0b0b0", margin="14")
        _emit_plates(c, G, ids, side, distributions, shared)
        for u, v, d in G.edges(data=True):
            attrs = {}
            if d.get("kind") == "module":
                attrs = {"color": _BLUE if u in shared else _GREY, "penwidth": "1.4" if u in shared else "1.0",
                         "arrowsize": "0.6"}
            hu, hv = heights.get(u), heights.get(v)
            if side == "guide" and hu is not None and hv is not None and hu > hv:  # an arrow pointing up
                c.edge(ids[v], ids[u], dir="back", **attrs)
            elif hu is not None and hu == hv:
                c.edge(ids[u], ids[v], constraint="false", **attrs)
            else:
                c.edge(ids[u], ids[v], **attrs)


def _emit_plates(c, G, ids, side, distributions, shared):
    tree: dict = {}
    for n, d in G.nodes(data=True):
        node = tree
        for p in d.get("plates", ()):
            node = node.setdefault(p, {})
        node.setdefault(None, []).append(n)
    counter = iter(range(10 ** 6))

    def emit(sub, branch):
        for n in sorted(branch.get(None, []), key=lambda n: G.nodes[n].get("order", 0)):
            d = G.nodes[n]
            sub.node(ids[n], **_node_attrs(d, d.get("label", n), distributions, n in shared))
        for plate, child in branch.items():
            if plate is None:
                continue
            with sub.subgraph(name=f"cluster_{side}_plate{next(counter)}") as s:
                s.attr(label=plate, labeljust="r", labelloc="b", style="", color="black", fontsize="11", margin="10")
                emit(s, child)

    emit(c, tree)


def to_graphviz(G_model: nx.DiGraph, G_guide: nx.DiGraph, distributions: bool = False,
                title: str | None = None) -> graphviz.Digraph:
    """One Digraph: the generative model (left) and the inference model (right), side by side."""
    g = graphviz.Digraph(name=title or "hlvm")
    g.attr(newrank="true", nodesep="0.3", ranksep="0.35", fontname="Helvetica", compound="true")
    g.attr("node", fontname="Helvetica")
    g.attr("edge", arrowsize="0.7")
    if title:
        g.attr(label=title, labelloc="t", fontsize="16")
    heights = _heights(G_model, G_guide)
    _emit_program(g, G_model, "model", heights, distributions, "generative model  p")
    _emit_program(g, G_guide, "guide", heights, distributions, "inference model  q")
    return g


# ---------------------------------------------------------------------------- render
def example_input(module: nn.Module, batch_size: int = 2) -> torch.Tensor:
    """A batch of zeros of ``module.data_shape`` (valid binary, 8-bit and continuous data)."""
    shape = getattr(module, "data_shape", None)
    if shape is None:
        raise ValueError(f"{type(module).__name__} has no data_shape attribute: pass the data to render() yourself")
    ref = next((p for p in module.parameters() if torch.is_floating_point(p)), None)
    dtype = ref.dtype if ref is not None else torch.get_default_dtype()
    return torch.zeros((batch_size,) + tuple(shape), dtype=dtype, device=ref.device if ref is not None else None)


def render(model, guide=None, *args, filename=None, format: str | None = None, distributions: bool = False,
           compact: bool = True, modules=None, title: str | None = None, keep_source: bool = False,
           **kwargs) -> graphviz.Digraph:
    """Draw ``model`` and ``guide`` (run on ``*args, **kwargs``) side by side.

    As Figures 2 and 5 of De Sousa Ribeiro & Glocker: sites as nodes (observed shaded,
    deterministic dashed), plates as boxes, one parameter node per network (blue with blue edges
    when shared between several sites, like the diffusion denoiser), diffusion chains of
    ``COMPACT_MIN_STEPS`` or more steps as ``z_1 → … → z_t → z_s → … → z_0``.

    Args:
        model, guide: Pyro programs; or a module with ``model``/``guide`` and ``data_shape``
            alone (traced on a batch of zeros, see :func:`render_module`).
        filename: where to write; the format is ``format`` or the suffix (``.svg``, ``.png``,
            ``.pdf``, ``.dot``/``.gv`` for source).  Images are rendered by Graphviz's ``dot``
            from a source file ``<filename>.gv`` written first (removed unless ``keep_source``).
        distributions: label each site with its distribution's name.
        compact: draw long chains compactly (False: every site).
        modules: the networks to draw (default: the modules ``model``/``guide`` belong to).
        title: a caption above both panels (:func:`render_module`: the class name and T).
        keep_source: keep the intermediate ``.gv`` file of an image.
    Returns:
        the :class:`graphviz.Digraph` (its ``.source`` is the dot text).
    Raises:
        GraphvizNotFoundError: an image was asked for and ``dot`` is not installed.
    """
    if guide is None and hasattr(model, "model") and hasattr(model, "guide"):
        options = {} if title is None else {"title": title}
        return render_module(model, filename=filename, format=format, distributions=distributions,
                             compact=compact, keep_source=keep_source, **options)
    policy = (lambda s: _TRACE_STEPS if s >= COMPACT_MIN_STEPS else s) if compact else (lambda s: s)
    G_model, G_guide = _pair_graphs(model, guide, args, kwargs, modules, policy)
    if compact:
        G_model, G_guide = compact_graph(G_model), compact_graph(G_guide)
    g = to_graphviz(G_model, G_guide, distributions=distributions, title=title)
    if filename is not None:
        write(g, filename, format, keep_source=keep_source)
    return g


def render_module(module: nn.Module, filename=None, *, batch_size: int = 2, x=None, **options) -> graphviz.Digraph:
    """:func:`render` of ``module.model`` and ``module.guide`` on ``x`` (default: zeros)."""
    for method in ("model", "guide"):
        if not callable(getattr(module, method, None)):
            raise ValueError(f"{type(module).__name__} has no {method}() method: not a model/guide pair")
    x = example_input(module, batch_size) if x is None else x
    options.setdefault("title", _title(module))
    return render(module.model, module.guide, x, filename=filename, **options)


def _title(module: nn.Module) -> str:
    """``VDM (T = 1000)``: the class name and the length of its diffusion chains."""
    steps = []
    for chain in _chains([module]):
        steps.append(f"{chain.name}: T = {chain.T}" if chain.T is not None else f"{chain.name}: continuous time")
    return type(module).__name__ + (f"  ({', '.join(steps)})" if steps else "")


def write(g: graphviz.Digraph, filename, format: str | None = None, keep_source: bool = False) -> Path:
    """Write ``g`` to ``filename`` as svg/png/pdf (via ``dot``) or as dot source; returns the path."""
    path = Path(filename)
    fmt = (format or path.suffix.lstrip(".") or "svg").lower()
    fmt = "dot" if fmt == "gv" else fmt
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {list(FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "dot":
        path.write_text(g.source, encoding="utf-8")
        return path
    source = path.with_name(path.name + ".gv")
    source.write_text(g.source, encoding="utf-8")
    dot = shutil.which("dot")
    if dot is None:
        raise GraphvizNotFoundError(
            f"rendering {fmt} needs Graphviz's `dot`, which is not on the PATH; the dot source was written "
            f"to {source}. Install Graphviz (Debian/Ubuntu: `apt-get install graphviz`, macOS: "
            f"`brew install graphviz`, conda: `conda install graphviz`) or use format 'dot'.")
    done = subprocess.run([dot, f"-T{fmt}", str(source), "-o", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise ValueError(f"dot failed on {source}: {done.stderr.strip().splitlines()[0] if done.stderr.strip() else done.returncode}")
    if not keep_source:
        source.unlink()
    return path
