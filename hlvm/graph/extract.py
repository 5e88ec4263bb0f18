"""Graph extraction: a Pyro program traced once into a :class:`networkx.DiGraph` of its sites.

Each program becomes a DiGraph of its sample sites (:func:`program_graph`), found by tracing it
once with provenance-tracking tensors (as :func:`pyro.render_model` does, plus the program's
tensor inputs and its network modules, each ONE parameter node with an edge to every site whose
distribution it parameterizes).  :func:`relations`, :func:`plate_membership`,
:func:`module_relations` and :func:`topological_order` read such a graph back as dicts and lists.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections import OrderedDict

import networkx as nx
import pyro
import torch
from pyro.ops.provenance import ProvenanceTensor, detach_provenance, get_provenance, track_provenance
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import nn

from ..programs.chain import DiffusionChain, chains_of, override_steps
from ..programs.contract import example_batch

__all__ = [
    "program_graph", "pair_graphs", "network_modules", "example_input",
    "relations", "plate_membership", "module_relations", "topological_order",
]

#: the number of steps a compacted DiffusionChain is traced with (any T draws the same figure)
_TRACE_STEPS = 5


# ---------------------------------------------------------------------------- network modules
def network_modules(*roots) -> "OrderedDict[str, nn.Module]":
    """The networks of ``roots`` that get one parameter node each, by display name.

    The named children of each root that hold parameters; a ``ModuleList``/``ModuleDict`` gives
    one node per element (``transitions[0]``, ``transitions[1]``, …) and a :class:`DiffusionChain` one per
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
        stack.enter_context(warnings.catch_warnings())  # a module made inside the program is in training mode
        warnings.filterwarnings("ignore", message=".*not registered in the param store because requires_grad=False")
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
    with override_steps(chains_of(*roots), policy) as info:
        graphs = tuple(program_graph(fn, *args, modules=groups, name=name, **kwargs)
                       for fn, name in ((model, "model"), (guide, "guide")))
    for G in graphs:
        G.graph["chains"] = dict(info)
    return graphs


# ---------------------------------------------------------------------------- example input
def example_input(module: nn.Module, batch_size: int = 2) -> torch.Tensor:
    """A batch of zeros of ``module.data_shape`` (valid binary, 8-bit and continuous data)."""
    if getattr(module, "data_shape", None) is None:
        raise ValueError(f"{type(module).__name__} has no data_shape attribute: pass the data to render() yourself")
    return example_batch(module, batch_size)


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
