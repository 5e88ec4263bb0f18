"""The Hierarchy contract: what a user writes for every hlvm command to accept a model.

A hierarchy is any object (in practice a :class:`pyro.nn.PyroModule`) with

* ``model(x)`` — the generative program: it observes the data at one sample site inside a plate
  over the examples (any names: the zoo's ``pyro.sample("x", ..., obs=x)`` in ``pyro.plate("data", B)``,
  Pyro's tutorials' ``"obs"``; :mod:`hlvm.programs.roles` reads both from a trace);
* ``guide(x)`` — the inference program, over the same plate;
* parameters registered with Pyro while the programs run (``@pyro_method`` on ``model`` and
  ``guide`` of a :class:`~pyro.nn.PyroModule`, or ``pyro.module``), so that SVI can find them.

Everything else is optional: ``data_shape`` (the shape of one example, e.g. ``(1, 28, 28)``; commands
take it from the data they load), ``observed`` (the data site's name, where a model observes
several sites).  Training, evaluation (ELBO, IWAE, k̂, active units), ``hlvm
compare``, sampling (by running ``model`` forward with ``x`` unobserved, :func:`hlvm.sample`) and
plate diagrams use nothing more.  Optional extras a hierarchy may offer and commands will use:
``sample(n)`` (a faster sampler than running the program), ``reconstruct(x)``, and constructor
arguments ``data_shape``, ``likelihood``, ``T``, ``layers`` that ``hlvm train`` fills in.
"""

from __future__ import annotations

import inspect
import math
from typing import Protocol, runtime_checkable

import pyro
import torch
from pyro import poutine

from ..validate import check_shape, user_error
from .chain import StockChains, chains_of, override_steps
from .roles import PROBE_BATCH, data_roles, example_batch, probe_batch

__all__ = ["Hierarchy", "check_hierarchy", "example_batch"]


@runtime_checkable
class Hierarchy(Protocol):
    """A model/guide pair (module docstring)."""

    def model(self, x=None):
        """p(x, z): latents, then the data observed at one site (``pyro.sample(name, ..., obs=x)``), in a plate
        over the examples."""

    def guide(self, x=None):
        """q(z | x), in the same plate."""


def _source_file(hierarchy) -> str:
    """The file that defines ``hierarchy``'s class (where its errors are reported)."""
    try:
        return inspect.getsourcefile(type(hierarchy)) or ""
    except TypeError:  # a built-in or dynamically made class
        return ""


def check_hierarchy(hierarchy, name: str | None = None, x: torch.Tensor | None = None) -> None:
    """Raise ValueError naming the first piece of the contract that ``hierarchy`` lacks.

    Checks the methods, then runs ``model`` and ``guide`` once on a batch — the first examples of
    ``x``, else zeros of ``data_shape`` (diffusion chains traced with two steps) — and finds the data
    site and the plate over the examples (:func:`~hlvm.programs.roles.data_roles`).
    """
    name = name or type(hierarchy).__name__
    for method in ("model", "guide"):
        if not callable(getattr(hierarchy, method, None)):
            raise ValueError(f"{name} breaks the Hierarchy contract: it has no {method}(x) method")
    if x is None:
        shape = getattr(hierarchy, "data_shape", None)
        if shape is None:
            raise ValueError(f"{name} has no data_shape attribute (the shape of one example): pass example data "
                             "(x=... in Python, --data on the command line)")
        try:
            check_shape("data_shape", shape)
        except ValueError as e:
            raise ValueError(f"{name} breaks the Hierarchy contract: {e}") from None
    x = probe_batch(hierarchy, None if x is None else x[:PROBE_BATCH])
    with torch.no_grad(), pyro.validation_enabled(False), pyro.get_param_store().scope(), StockChains(), \
            override_steps(chains_of(hierarchy), lambda s: min(s, 2)):
        try:
            model_trace = poutine.trace(hierarchy.model).get_trace(x)
            guide_trace = poutine.trace(hierarchy.guide).get_trace(x)
        except Exception as e:
            raise user_error(e, _source_file(hierarchy), f"{name}: model(x)/guide(x) failed on a batch of shape "
                             f"{tuple(x.shape)}") from e
    try:
        roles = data_roles(hierarchy, x)
    except ValueError as e:
        raise ValueError(f"{name} breaks the Hierarchy contract: {e}") from None
    site = model_trace.nodes[roles.site]
    if math.prod(site["value"].shape[:1]) != x.shape[0]:
        raise ValueError(f"{name} breaks the Hierarchy contract: the data site {roles.site!r} must have the batch first")
    has_params = callable(getattr(hierarchy, "parameters", None)) and any(True for _ in hierarchy.parameters())
    seen = [n for tr in (model_trace, guide_trace) for n, s in tr.nodes.items() if s["type"] == "param"]
    if has_params and not seen:
        raise ValueError(f"{name} breaks the Hierarchy contract: it has parameters but model/guide register none "
                         "with Pyro (decorate them with @pyro.nn.pyro_method in a PyroModule, or call pyro.module)")
