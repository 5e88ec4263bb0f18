"""The Hierarchy contract: what a user writes for every hlvm command to accept a model.

A hierarchy is any object (in practice a :class:`pyro.nn.PyroModule`) with

* ``model(x)`` — the generative program: its per-example plate is ``pyro.plate("data", B)`` and
  the data are observed at the sample site ``"x"``;
* ``guide(x)`` — the inference program, over the same plate;
* ``data_shape`` — the shape of one example, e.g. ``(1, 28, 28)``;
* parameters registered with Pyro while the programs run (``@pyro_method`` on ``model`` and
  ``guide`` of a :class:`~pyro.nn.PyroModule`, or ``pyro.module``), so that SVI can find them.

Everything else is optional.  Training, evaluation (ELBO, IWAE, k̂, active units), ``hlvm
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

__all__ = ["Hierarchy", "check_hierarchy", "example_batch", "PLATE", "SITE"]

#: the per-example plate and the observed site every hierarchy uses
PLATE, SITE = "data", "x"


@runtime_checkable
class Hierarchy(Protocol):
    """A model/guide pair over data of shape ``data_shape`` (module docstring)."""

    data_shape: tuple

    def model(self, x=None):
        """p(x, z): latents, then ``pyro.sample("x", ..., obs=x)``, inside ``pyro.plate("data", B)``."""

    def guide(self, x=None):
        """q(z | x), inside ``pyro.plate("data", B)``."""


def example_batch(hierarchy, batch_size: int = 2) -> torch.Tensor:
    """A batch of zeros of ``hierarchy.data_shape`` in its parameters' dtype and device
    (valid binary, 8-bit and continuous data)."""
    params = hierarchy.parameters() if callable(getattr(hierarchy, "parameters", None)) else ()
    ref = next((p for p in params if torch.is_floating_point(p)), None)
    dtype = ref.dtype if ref is not None else torch.get_default_dtype()
    return torch.zeros((batch_size,) + tuple(hierarchy.data_shape), dtype=dtype,
                       device=ref.device if ref is not None else None)


def _source_file(hierarchy) -> str:
    """The file that defines ``hierarchy``'s class (where its errors are reported)."""
    try:
        return inspect.getsourcefile(type(hierarchy)) or ""
    except TypeError:  # a built-in or dynamically made class
        return ""


def check_hierarchy(hierarchy, name: str | None = None) -> None:
    """Raise ValueError naming the first piece of the contract that ``hierarchy`` lacks.

    Checks the attributes, then runs ``model`` and ``guide`` once on a batch of two zero examples
    (diffusion chains traced with two steps) and checks the ``"data"`` plate and the observed
    ``"x"`` site.
    """
    name = name or type(hierarchy).__name__
    for method in ("model", "guide"):
        if not callable(getattr(hierarchy, method, None)):
            raise ValueError(f"{name} breaks the Hierarchy contract: it has no {method}(x) method")
    shape = getattr(hierarchy, "data_shape", None)
    if shape is None:
        raise ValueError(f"{name} breaks the Hierarchy contract: it has no data_shape attribute (the shape of one example)")
    try:
        check_shape("data_shape", shape)
    except ValueError as e:
        raise ValueError(f"{name} breaks the Hierarchy contract: {e}") from None
    x = example_batch(hierarchy)
    with torch.no_grad(), pyro.validation_enabled(False), pyro.get_param_store().scope(), StockChains(), \
            override_steps(chains_of(hierarchy), lambda s: min(s, 2)):
        try:
            model_trace = poutine.trace(hierarchy.model).get_trace(x)
            guide_trace = poutine.trace(hierarchy.guide).get_trace(x)
        except Exception as e:
            raise user_error(e, _source_file(hierarchy), f"{name}: model(x)/guide(x) failed on a batch of shape "
                             f"{tuple(x.shape)}") from e
    site = model_trace.nodes.get(SITE)
    if site is None or site["type"] != "sample" or not site["is_observed"]:
        raise ValueError(f"{name} breaks the Hierarchy contract: model(x) must observe the data at the sample site "
                         f"{SITE!r} (pyro.sample({SITE!r}, ..., obs=x))")
    frames = {f.name: f.size for f in site["cond_indep_stack"]}
    if frames.get(PLATE) != x.shape[0]:
        raise ValueError(f"{name} breaks the Hierarchy contract: the site {SITE!r} must sit in "
                         f"pyro.plate({PLATE!r}, batch_size) (found plates {sorted(frames) or 'none'})")
    if math.prod(site["value"].shape[:1]) != x.shape[0]:
        raise ValueError(f"{name} breaks the Hierarchy contract: the site {SITE!r} must have the batch first")
    has_params = callable(getattr(hierarchy, "parameters", None)) and any(True for _ in hierarchy.parameters())
    seen = [n for tr in (model_trace, guide_trace) for n, s in tr.nodes.items() if s["type"] == "param"]
    if has_params and not seen:
        raise ValueError(f"{name} breaks the Hierarchy contract: it has parameters but model/guide register none "
                         "with Pyro (decorate them with @pyro.nn.pyro_method in a PyroModule, or call pyro.module)")
