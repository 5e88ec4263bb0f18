"""Graph extraction (:mod:`hlvm.graph.extract`), checked through relation dicts rather than images
(as Pyro tests ``render_model``).

For every zoo model and the README's user-defined hierarchy the model's and the guide's edges,
plates and parameter nodes equal literals; any Pyro program (plain functions, ``pyro.param``,
a PyroModule's own parameters) is traced, and tracing leaves the module and param store untouched.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import hlvm
from hlvm.graph.checks import check_mean_field
from hlvm.graph.compact import compact_graph
from hlvm.graph.draw import render
from hlvm.graph.extract import example_input, module_relations, pair_graphs, plate_membership, relations, topological_order
from hlvm.zoo import VDM

from graph_cases import D, graphs, small


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
        {"transitions[0]": {"z_1"}, "decoder": {"x"}},
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
        # VDM's decoder p(x|z_0) has no weights of its own; the default schedule is learned: γ enters every
        # step, the decoder (through α_0, σ_0) and every posterior factor, but not the fixed prior of z_T
        {"denoiser": {"z_2", "z_1", "z_0"}, "schedule": {"z_2", "z_1", "z_0", "x"}},
        {"schedule": {"z_3", "z_2", "z_1", "z_0"}},
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
    assert relations(G_model) == model_edges
    assert relations(G_guide) == guide_edges
    assert module_relations(G_model) == model_modules
    assert module_relations(G_guide) == guide_modules
    # every site (and the guide's input x) sits in the one data plate
    assert plate_membership(G_model) == {n: DATA for n in model_edges}
    assert plate_membership(G_guide) == {n: DATA for n in guide_edges}
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


def test_topological_orders():
    G_model, G_guide = graphs("hvae-td")
    assert topological_order(G_model) == ["z_3", "z_2", "z_1", "x"]
    assert topological_order(G_guide) == ["d_1", "d_2", "d_3", "z_3", "z_2", "z_1"]
    assert topological_order(G_guide, include_inputs=True)[0] == "x"
    G_model, G_guide = graphs("hvae-bu")
    assert topological_order(G_model) == ["z_2", "z_1", "x"]
    assert topological_order(G_guide) == ["z_1", "z_2"]


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
    G_model, G_guide = pair_graphs(model, guide, x)
    assert relations(G_model) == {**z_chain("h", 11), "x": {"h_0"}}
    assert relations(G_guide) == {"x": set(), **{f"h_{i}": {"x"} for i in range(12)}}
    assert plate_membership(G_guide)["x"] == ("N",)
    assert module_relations(G_model) == {"loc": {"h_11"}} and module_relations(G_guide) == {}
    assert check_mean_field(G_model, G_guide).ok
    compact = compact_graph(G_model)  # 12 sites → h_11 → … → h_i+1 → h_i → … → h_0
    assert len(relations(compact)) == 7 and compact.has_edge("h_T", "h_…T") and compact.has_edge("h_0", "x")
    source = render(model, guide, x).source
    assert "⋯" in source and "h<SUB>11</SUB>" in source
    assert len(render(model, guide, x, compact=False).source.split("label=")) > 20


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
    G_model, G_guide = pair_graphs(m.model, m.guide, example_input(m))
    assert module_relations(G_model) == {"shift": {"z"}, "scale": {"x"}}
    assert module_relations(G_guide) == {"encoder": {"z"}}
    assert isinstance(m.shift, nn.Parameter) and isinstance(m.scale_unconstrained, nn.Parameter)


def test_one_parameter_node_per_network_not_per_tensor():
    m = VDM((D,), T=5, width=8, depth=2)
    assert sum(1 for _ in m.denoiser.parameters()) > 10 and sum(1 for _ in m.schedule.parameters()) >= 1
    G_model, _ = pair_graphs(m.model, m.guide, example_input(m))
    assert sorted(n for n, k in G_model.nodes(data="kind") if k == "module") == ["module:denoiser", "module:schedule"]


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
