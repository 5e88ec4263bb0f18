"""A Pyro program as a graph: extraction (trace → networkx), checks on the DAG, drawing."""

from .render import (FORMATS, COMPACT_MIN_STEPS, GraphvizNotFoundError, MeanFieldCheck, check_mean_field,
                     compact_graph, example_input, guide_direction, module_relations, network_modules, pair_graphs,
                     plate_membership, program_graph, relations, render, render_module, to_graphviz,
                     topological_order, write)

__all__ = [
    "render", "render_module", "to_graphviz", "example_input", "write", "GraphvizNotFoundError", "FORMATS",
    "program_graph", "pair_graphs", "compact_graph", "network_modules", "relations", "plate_membership",
    "module_relations", "check_mean_field", "MeanFieldCheck", "guide_direction", "topological_order",
    "COMPACT_MIN_STEPS",
]
