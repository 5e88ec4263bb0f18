"""Rendering, checked through relation dicts rather than images (as Pyro tests ``render_model``).

For every zoo model and the README's user-defined hierarchy the model's and the guide's edges,
plates and parameter nodes equal literals; ``TraceMeanField_ELBO``'s exactness condition
(De Sousa Ribeiro & Glocker, Fig. 2: top-down guides qualify, bottom-up ones do not) is checked
on them; a T = 1000 diffusion draws a bounded figure (Fig. 5); and a missing ``dot`` fails with
an installation hint while the source is still written.
"""

import importlib
import re
import shutil
import subprocess
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import hlvm
from hlvm.cli import main
from models import VAE, VDM, BottomUpHVAE, TopDownHVAE

from conftest import ROOT, user_hierarchy_class

R = importlib.import_module("hlvm.graph.render")
LatentDiffusionVAE = user_hierarchy_class()

D = 4  # data dimension of the small test models
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` not installed")


def small(name):
    """Small instances of the zoo and of the README's user-defined hierarchy."""
    return {
        "vae": lambda: VAE((D,), latent_dim=3, hidden=8),
        "hvae-bu": lambda: BottomUpHVAE((D,), latent_dims=(8, 4), hidden=8),
        "hvae-td": lambda: TopDownHVAE((D,), layers=3, latent_dim=4, hidden=8),
        "hvae-td-diffusion": lambda: TopDownHVAE((D,), layers=3, posterior="diffusion", hidden=8),
        "hvae-td-denoiser": lambda: TopDownHVAE((D,), layers=3, posterior="diffusion", transition="denoiser",
                                                shared=True, hidden=8),
        "vdm": lambda: VDM((D,), likelihood="binary", T=3, backbone="mlp", width=8, depth=1),
        "user": lambda: LatentDiffusionVAE((D,), latent_dim=3, T=2, hidden=8),
    }[name]()


def graphs(name):
    m = small(name)
    return R.pair_graphs(m.model, m.guide, R.example_input(m))


def z_chain(prefix, top, bottom=0):
    """{prefix_i: {prefix_{i+1}}} for a Markov chain from ``top`` down to ``bottom``."""
    return {f"{prefix}_{i}": {f"{prefix}_{i + 1}"} if i < top else set() for i in range(top, bottom - 1, -1)}


DATA = ("data",)

# (model parents, guide parents, model modules, guide modules, guide-only deterministic sites)
EXPECTED = {
    "vae": (
        {"z": set(), "x": {"z"}},
        {"x": set(), "z": {"x"}},
        {"decoder": {"x"}},
        {"encoder": {"z"}},
        set(),
    ),
    "hvae-bu": (
        {"z_2": set(), "z_1": {"z_2"}, "x": {"z_1"}},
        {"x": set(), "z_1": {"x"}, "z_2": {"z_1"}},
        {"priors[0]": {"z_1"}, "decoder": {"x"}},
        {"encoders[0]": {"z_1"}, "encoders[1]": {"z_2"}},
        set(),
    ),
    "hvae-td": (
        {"z_3": set(), "z_2": {"z_3"}, "z_1": {"z_2"}, "x": {"z_1"}},
        {"x": set(), "d_1": {"x"}, "d_2": {"d_1"}, "d_3": {"d_2"},
         "z_3": {"d_3"}, "z_2": {"z_3", "d_2"}, "z_1": {"z_2", "d_1"}},
        {"transitions[1]": {"z_2"}, "transitions[0]": {"z_1"}, "decoder": {"x"}},
        {"up[0]": {"d_1"}, "up[1]": {"d_2"}, "up[2]": {"d_3"}, "q_top": {"z_3"},
         "transitions[1]": {"z_2"}, "messages[1]": {"z_2"}, "transitions[0]": {"z_1"}, "messages[0]": {"z_1"}},
        {"d_1", "d_2", "d_3"},
    ),
    "hvae-td-diffusion": (
        {"z_3": set(), "z_2": {"z_3"}, "z_1": {"z_2"}, "x": {"z_1"}},
        {"x": set(), "z_3": {"x"}, "z_2": {"z_3", "x"}, "z_1": {"z_2", "x"}},
        {"transitions[1]": {"z_2"}, "transitions[0]": {"z_1"}, "decoder": {"x"}},
        {},  # the fixed forward posterior has no parameters
        set(),
    ),
    "hvae-td-denoiser": (
        {"z_3": set(), "z_2": {"z_3"}, "z_1": {"z_2"}, "x": {"z_1"}},
        {"x": set(), "z_3": {"x"}, "z_2": {"z_3", "x"}, "z_1": {"z_2", "x"}},
        {"denoisers[0]": {"z_2", "z_1"}, "decoder": {"x"}},  # one shared denoiser for both steps
        {},
        set(),
    ),
    "vdm": (
        {**z_chain("z", 3), "x": {"z_0"}},
        {"x": set(), "z_3": {"x"}, "z_2": {"z_3", "x"}, "z_1": {"z_2", "x"}, "z_0": {"z_1", "x"}},
        {"denoiser": {"z_2", "z_1", "z_0"}},  # VDM's decoder p(x|z_0) has no weights of its own
        {},
        set(),
    ),
    "user": (
        {**z_chain("u", 2), "z": {"u_0"}, "x": {"z"}},
        {"x": set(), "z": {"x"}, "u_2": {"z"}, "u_1": {"u_2", "z"}, "u_0": {"u_1", "z"}},
        {"denoiser": {"u_1", "u_0"}, "decoder": {"x"}},
        {"encoder": {"z"}},
        set(),
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_edges_plates_and_modules_equal_literals(name):
    G_model, G_guide = graphs(name)
    model_edges, guide_edges, model_modules, guide_modules, deterministic = EXPECTED[name]
    assert R.relations(G_model) == model_edges
    assert R.relations(G_guide) == guide_edges
    assert R.module_relations(G_model) == model_modules
    assert R.module_relations(G_guide) == guide_modules
    # every site (and the guide's input x) sits in the one data plate
    assert R.plate_membership(G_model) == {n: DATA for n in model_edges}
    assert R.plate_membership(G_guide) == {n: DATA for n in guide_edges}
    # observed / deterministic flags: x is observed in the model and the guide's input
    assert {n for n, o in G_model.nodes(data="observed") if o} == {"x"}
    assert {n for n, o in G_guide.nodes(data="observed") if o} == {"x"}
    assert G_guide.nodes["x"]["kind"] == "input"
    assert {n for n, d in G_guide.nodes(data="deterministic") if d} == deterministic
    assert not any(d for _, d in G_model.nodes(data="deterministic"))


def test_distribution_attributes():
    G_model, G_guide = graphs("hvae-td")
    assert G_model.nodes["z_3"]["distribution"] == "Normal"
    assert G_model.nodes["x"]["distribution"] == "Bernoulli"
    assert G_guide.nodes["d_1"]["distribution"] == "Delta"
    assert G_guide.nodes["d_1"]["auxiliary"] and not G_guide.nodes["z_1"]["auxiliary"]


@pytest.mark.parametrize("name", ["vae", "hvae-td", "hvae-td-diffusion", "hvae-td-denoiser", "vdm"])
def test_mean_field_condition_accepts_top_down_pairs(name):
    check = R.check_mean_field(*graphs(name))
    assert check.ok and check and check.site is None and check.violations == {}
    assert "is exact" in check.message


def test_mean_field_condition_rejects_bottom_up_hvae():
    check = R.check_mean_field(*graphs("hvae-bu"))
    assert not check.ok and not check
    assert check.site == "z_1" and check.violations == {"z_1": ("z_2",)}
    assert "'z_1'" in check.message and "'z_2'" in check.message


def test_mean_field_condition_rejects_user_hierarchy_naming_z():
    # the guide samples z before the u-chain, and z's model parent u_0 is a guide descendant of z
    check = R.check_mean_field(*graphs("user"))
    assert not check.ok and check.site == "z" and check.violations == {"z": ("u_0",)}


def test_mean_field_accepts_a_module_or_programs():
    m = small("hvae-bu")
    assert R.check_mean_field(m).site == "z_1"
    assert R.check_mean_field(m.model, m.guide, R.example_input(m)).site == "z_1"
    assert hlvm.check_mean_field(small("vdm")).ok


@pytest.mark.parametrize("name, direction", [("vae", "top-down"), ("hvae-td", "top-down"), ("vdm", "top-down"),
                                             ("hvae-td-diffusion", "top-down"), ("hvae-bu", "bottom-up"),
                                             ("user", "mixed")])
def test_guide_direction(name, direction):
    assert R.guide_direction(*graphs(name)) == direction


def test_topological_orders():
    G_model, G_guide = graphs("hvae-td")
    assert R.topological_order(G_model) == ["z_3", "z_2", "z_1", "x"]
    assert R.topological_order(G_guide) == ["d_1", "d_2", "d_3", "z_3", "z_2", "z_1"]
    assert R.topological_order(G_guide, include_inputs=True)[0] == "x"
    G_model, G_guide = graphs("hvae-bu")
    assert R.topological_order(G_model) == ["z_2", "z_1", "x"]
    assert R.topological_order(G_guide) == ["z_1", "z_2"]


def test_program_graph_of_plain_functions_with_a_long_chain():
    """Any Pyro program renders: plain functions, pyro.param, a user-written 12-site chain."""
    def model(x):
        loc = pyro.param("loc", torch.zeros(D))
        with pyro.plate("N", x.shape[0]):
            h = pyro.sample("h_11", dist.Normal(loc, 1.0).to_event(1))
            for i in range(10, -1, -1):
                h = pyro.sample(f"h_{i}", dist.Normal(h, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(h, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("N", x.shape[0]):
            pyro.sample("h_11", dist.Normal(x, 1.0).to_event(1))
            for i in range(10, -1, -1):
                pyro.sample(f"h_{i}", dist.Normal(x, 1.0).to_event(1))

    x = torch.zeros(2, D)
    G_model, G_guide = R.pair_graphs(model, guide, x)
    assert R.relations(G_model) == {**z_chain("h", 11), "x": {"h_0"}}
    assert R.relations(G_guide) == {"x": set(), **{f"h_{i}": {"x"} for i in range(12)}}
    assert R.plate_membership(G_guide)["x"] == ("N",)
    assert R.module_relations(G_model) == {"loc": {"h_11"}} and R.module_relations(G_guide) == {}
    assert R.check_mean_field(G_model, G_guide).ok
    compact = R.compact_graph(G_model)  # 12 sites → h_11 → … → h_i+1 → h_i → … → h_0
    assert len(R.relations(compact)) == 7 and compact.has_edge("h_T", "h_…T") and compact.has_edge("h_0", "x")
    source = R.render(model, guide, x).source
    assert "⋯" in source and "h<SUB>11</SUB>" in source
    assert len(R.render(model, guide, x, compact=False).source.split("label=")) > 20


# ---------------------------------------------------------------------------- drawing
def nodes(source):
    """The node statements of a dot source (not edges, not graph attributes)."""
    return re.findall(r"^\s*((?:model|guide)\d+) \[", source, flags=re.M)


def test_vdm_with_1000_steps_renders_a_bounded_figure():
    sources = {T: hlvm.render(VDM((D,), T=T, width=8, depth=1)).source for T in (4, 1000)}
    assert len(nodes(sources[1000])) == len(nodes(sources[4])) == 15  # 6 chain + x + denoiser | 6 chain + x
    source = sources[1000]
    assert "VDM  (z: T = 1000)" in source
    assert source.count("⋯") == 4  # two ellipses in each panel
    for label in ("z<SUB>1</SUB>", "z<SUB>t</SUB>", "z<SUB>s</SUB>", "z<SUB>0</SUB>"):
        assert source.count(label) == 2
    # the shared denoiser: one node, with a blue edge to every step it serves (…, z_t, z_s, …, z_0)
    assert source.count(">denoiser<") + source.count("label=denoiser") == 1
    assert source.count(f'color="{R._BLUE}" penwidth') == 5


def test_compact_graph_keeps_every_edge_between_role_nodes():
    m = VDM((D,), T=1000, width=8, depth=1)
    G_model, G_guide = R._pair_graphs(m.model, m.guide, (R.example_input(m),), {}, None, lambda s: 5)
    H = R.compact_graph(G_model)
    assert R.relations(H) == {"z_T": set(), "z_…T": {"z_T"}, "z_t": {"z_…T"}, "z_s": {"z_t"},
                              "z_…0": {"z_s"}, "z_0": {"z_…0"}, "x": {"z_0"}}
    assert R.module_relations(H) == {"denoiser": {"z_…T", "z_t", "z_s", "z_…0", "z_0"}}
    assert H.nodes["z_…T"]["kind"] == "ellipsis" and H.nodes["z_0"]["sites"] == ["z_0"]
    assert R.relations(R.compact_graph(G_guide))["z_s"] == {"z_t", "x"}


def test_short_or_full_chains_draw_every_site():
    g = hlvm.render(small("vdm"))  # T = 3 < COMPACT_MIN_STEPS
    assert "⋯" not in g.source and g.source.count("z<SUB>3</SUB>") == 2
    m = VDM((D,), T=6, width=8, depth=1)
    full = R.render_module(m, compact=False).source
    assert "⋯" not in full and len(nodes(full)) == 2 * 7 + 2 + 1  # z_6..z_0 and x twice, the denoiser


def test_drawing_styles():
    source = hlvm.render(small("hvae-td"), distributions=True).source
    assert "subgraph cluster_model" in source and "subgraph cluster_guide" in source
    assert source.count("label=data") == 2  # the plate, as a box in each panel
    assert source.count("style=dashed") == 3  # d_1, d_2, d_3
    assert source.count('fillcolor="#c8c8c8"') == 2  # x, observed in both panels
    assert "Bernoulli" in source and "Normal" in source
    for module in ("up[0]", "up[1]", "up[2]", "q_top", "messages[0]", "decoder"):
        assert source.count(f"label=\"{module}\"") + source.count(f"label={module} ") == 1, module
    assert source.count('label="transitions[0]"') == 2  # used by the model and by the guide


class _WithOwnParams(pyro.nn.PyroModule):
    """A user hierarchy with a PyroParam and an nn.Parameter of its own, next to a network."""

    def __init__(self):
        super().__init__()
        self.data_shape = (D,)
        self.scale = pyro.nn.PyroParam(torch.ones(D), constraint=dist.constraints.positive)
        self.shift = nn.Parameter(torch.zeros(D))
        self.encoder = nn.Linear(D, D)

    @pyro.nn.pyro_method
    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(self.shift, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, self.scale).to_event(1), obs=x)

    @pyro.nn.pyro_method
    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.encoder(x), 1.0).to_event(1))


def test_own_parameters_of_a_pyro_module_are_nodes():
    m = _WithOwnParams()
    G_model, G_guide = R.pair_graphs(m.model, m.guide, R.example_input(m))
    assert R.module_relations(G_model) == {"shift": {"z"}, "scale": {"x"}}
    assert R.module_relations(G_guide) == {"encoder": {"z"}}
    assert isinstance(m.shift, nn.Parameter) and isinstance(m.scale_unconstrained, nn.Parameter)


def test_one_parameter_node_per_network_not_per_tensor():
    m = VDM((D,), T=5, width=8, depth=2)
    assert sum(1 for _ in m.denoiser.parameters()) > 10
    G_model, _ = R.pair_graphs(m.model, m.guide, R.example_input(m))
    assert [n for n, k in G_model.nodes(data="kind") if k == "module"] == ["module:denoiser"]


def test_rendering_leaves_the_module_and_param_store_untouched():
    m = small("hvae-td")
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    pyro.param("user_param", torch.ones(2))
    hlvm.render(m)
    assert all(isinstance(p, nn.Parameter) for p in m.parameters())
    assert all(mod.training for mod in m.modules())
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert list(pyro.get_param_store().keys()) == ["user_param"]


# ---------------------------------------------------------------------------- files and Graphviz
def test_dot_source_is_written(tmp_path):
    m = small("vae")
    g = hlvm.render(m.model, m.guide, R.example_input(m), filename=tmp_path / "vae.dot")  # hlvm.render(model, guide, *args)
    assert (tmp_path / "vae.dot").read_text() == g.source and g.source.startswith("digraph")
    R.render_module(m, filename=tmp_path / "vae.txt", format="dot")
    assert (tmp_path / "vae.txt").read_text().startswith("digraph")


@needs_dot
@pytest.mark.parametrize("fmt, magic", [("svg", b"<?xml"), ("png", b"\x89PNG"), ("pdf", b"%PDF")])
def test_images_are_rendered_with_dot(tmp_path, fmt, magic):
    R.render_module(small("vdm"), filename=tmp_path / f"vdm.{fmt}")
    assert (tmp_path / f"vdm.{fmt}").read_bytes().startswith(magic)
    assert not list(tmp_path.glob("*.gv"))  # the intermediate source is cleaned up


def test_without_dot_an_image_fails_clearly_and_the_source_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert shutil.which("dot") is None
    with pytest.raises(R.GraphvizNotFoundError, match="apt-get install graphviz") as info:
        R.render_module(small("vae"), filename=tmp_path / "vae.png")
    assert isinstance(info.value, ValueError) and "Graphviz" in str(info.value)
    assert (tmp_path / "vae.png.gv").read_text().startswith("digraph")
    assert not (tmp_path / "vae.png").exists()


def test_cli_without_dot_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["render", "vae", "--out", str(tmp_path), "--format", "png"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "apt-get install graphviz" in err
    assert (tmp_path / "vae.png.gv").exists()


def test_unknown_format_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown format"):
        R.render_module(small("vae"), filename=tmp_path / "vae.jpg")


# ---------------------------------------------------------------------------- CLI
def test_cli_renders_all_four_zoo_models(tmp_path, capsys):
    assert main(["render", "all", "--out", str(tmp_path / "docs"), "--format", "dot", "--T", "1000"]) == 0
    written = sorted(p.name for p in (tmp_path / "docs").iterdir())
    assert written == ["hvae-bu.dot", "hvae-td.dot", "vae.dot", "vdm.dot"]
    assert capsys.readouterr().out.count(".dot") == 4
    vdm = (tmp_path / "docs" / "vdm.dot").read_text()
    assert "T = 1000" in vdm and len(nodes(vdm)) == 15


def test_cli_renders_a_user_file_and_the_layers_flag(tmp_path):
    target = f"{ROOT / 'examples' / 'user_hierarchy.py'}:LatentDiffusionVAE"
    assert main(["render", target, "--T", "inf", "--out", str(tmp_path), "--format", "dot", "--distributions"]) == 0
    source = (tmp_path / "LatentDiffusionVAE.dot").read_text()
    assert "continuous time" in source and "u<SUB>t</SUB>" in source and "Bernoulli" in source
    assert main(["render", "hvae-bu", "--layers", "4", "--out", str(tmp_path), "--format", "dot"]) == 0
    assert "z<SUB>4</SUB>" in (tmp_path / "hvae-bu.dot").read_text()


@pytest.mark.parametrize("argv, message", [
    (["render", "nope"], "unknown model"),
    (["render", "vdm", "--T", "0"], "--T must be"),
    (["render", "missing.py:Model"], "no such file"),
    (["render", f"{ROOT / 'examples' / 'user_hierarchy.py'}:Nope"], "defines no"),
])
def test_cli_bad_input_exits_2(argv, message, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path), "--format", "dot"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_cli_subprocess_smoke(tmp_path):
    done = subprocess.run([sys.executable, "-m", "hlvm.cli", "render", "vae", "--out", str(tmp_path), "--format", "dot"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "vae.dot").exists()
