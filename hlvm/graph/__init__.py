"""A Pyro program as a graph: extraction (trace → networkx), checks on the DAG, drawing."""

from .checks import MeanFieldCheck, check_mean_field, guide_direction
from .compact import COMPACT_MIN_STEPS, compact_graph
from .draw import FORMATS, GraphvizNotFoundError, render, render_module, to_graphviz, write
from .extract import (example_input, module_relations, network_modules, pair_graphs, plate_membership, program_graph,
                      relations, topological_order)

__all__ = [
    "render", "render_module", "to_graphviz", "example_input", "write", "GraphvizNotFoundError", "FORMATS",
    "program_graph", "pair_graphs", "compact_graph", "network_modules", "relations", "plate_membership",
    "module_relations", "check_mean_field", "MeanFieldCheck", "guide_direction", "topological_order",
    "COMPACT_MIN_STEPS",
]
