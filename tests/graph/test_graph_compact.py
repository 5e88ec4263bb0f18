"""Compaction of long chains (:mod:`hlvm.graph.compact`): a T = 1000 diffusion keeps every edge
between its six role nodes z_1 → … → z_t → z_s → … → z_0 (De Sousa Ribeiro & Glocker, Fig. 5).
"""

from hlvm.graph.compact import compact_graph
from hlvm.graph.extract import _pair_graphs, example_input, module_relations, relations
from hlvm.zoo import VDM

from graph_cases import D


def test_compact_graph_keeps_every_edge_between_role_nodes():
    m = VDM((D,), T=1000, schedule="linear", width=8, depth=1)
    G_model, G_guide = _pair_graphs(m.model, m.guide, (example_input(m),), {}, None, lambda s: 5)
    H = compact_graph(G_model)
    assert relations(H) == {"z_T": set(), "z_…T": {"z_T"}, "z_t": {"z_…T"}, "z_s": {"z_t"},
                              "z_…0": {"z_s"}, "z_0": {"z_…0"}, "x": {"z_0"}}
    assert module_relations(H) == {"denoiser": {"z_…T", "z_t", "z_s", "z_…0", "z_0"}}
    assert H.nodes["z_…T"]["kind"] == "ellipsis" and H.nodes["z_0"]["sites"] == ["z_0"]
    assert relations(compact_graph(G_guide))["z_s"] == {"z_t", "x"}
