"""Drawing with Graphviz: the plate diagram of a model/guide pair, the two programs side by side.

As De Sousa Ribeiro & Glocker, *Demystifying Variational Diffusion Models* (Figures 2 and 5):
sample sites are nodes (observed ones shaded, guide-only deterministic ones such as the
bottom-up d_l of a ladder VAE dashed), plates are boxes, and every network module is ONE
parameter node with an edge to each site whose distribution it parameterizes.  A weight-shared
module — the diffusion denoiser x̂θ above all — is drawn in blue with an edge to every step it
serves (Fig. 5's blue lines); long chains are drawn compactly (:mod:`hlvm.graph.compact`).

Rendering to SVG/PNG/PDF needs Graphviz's ``dot`` (Debian: ``apt-get install graphviz``); without
it the dot source is still written and :class:`GraphvizNotFoundError` says how to install it.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import graphviz
import networkx as nx
from torch import nn

from .compact import COMPACT_MIN_STEPS, compact_graph
from ..programs.chain import chains_of
from .extract import _TRACE_STEPS, _pair_graphs, example_input

__all__ = ["render", "render_module", "to_graphviz", "write", "GraphvizNotFoundError", "FORMATS", "FULL_MAX_STEPS"]

#: output formats of :func:`render` (``dot`` writes the Graphviz source only)
FORMATS = ("svg", "png", "pdf", "dot")

#: the most steps a chain may have to be drawn in full (``compact=False``, ``hlvm render --full``):
#: Graphviz lays out 100 steps in seconds, 500 in minutes
FULL_MAX_STEPS = 100

_BLUE, _GREY = "#1f62b4", "#8c8c8c"


class GraphvizNotFoundError(ValueError):
    """Graphviz's ``dot`` is needed to render an image and is not on the PATH."""


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
    if not compact:
        _check_full_size([getattr(f, "__self__", None) for f in (model, guide)] + list(modules or ()))
    policy = (lambda s: _TRACE_STEPS if s >= COMPACT_MIN_STEPS else s) if compact else (lambda s: s)
    G_model, G_guide = _pair_graphs(model, guide, args, kwargs, modules, policy)
    if compact:
        G_model, G_guide = compact_graph(G_model), compact_graph(G_guide)
    g = to_graphviz(G_model, G_guide, distributions=distributions, title=title)
    if filename is not None:
        write(g, filename, format, keep_source=keep_source)
    return g


def _check_full_size(roots) -> None:
    """Refuse to draw every step of a chain longer than :data:`FULL_MAX_STEPS` (before any tracing)."""
    for chain in chains_of(*roots):
        if chain.steps > FULL_MAX_STEPS:
            raise ValueError(f"drawing every step (--full, compact=False) is limited to chains of at most "
                             f"{FULL_MAX_STEPS} steps (--T <= {FULL_MAX_STEPS}); chain {chain.name!r} has "
                             f"{chain.steps}: lower --T or drop --full for the compact figure")


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
    for chain in chains_of(module):
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
