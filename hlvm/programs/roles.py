"""Which sample site holds the data, and which plate runs over the examples: read from a trace.

A Pyro program names its sites as its author likes — the zoo observes ``"x"`` in ``pyro.plate("data")``,
Pyro's tutorials observe ``"obs"``, others ``"y"`` in ``pyro.plate("batch")``.  Every hlvm command that
needs the data site (IWAE weights, per-site terms, k̂, sampling by unconditioning, the check that a
bound is possible) or the per-example plate (everything summed per example) asks :func:`data_roles`,
which runs the model once on a batch of data and reads both from the trace:

* the **data site** is the observed sample site whose value is the data (``pyro.factor`` sites do not
  count).  One observed site is taken as it is; among several, the one whose value equals the batch
  (up to a reshape, e.g. images flattened inside the model); where that does not single one out, a
  ValueError names the candidates and the way to choose — an ``observed = "name"`` attribute of the
  hierarchy, or ``observed=`` here;
* the **per-example plate** is the outermost plate of that site whose size is the batch size.

The answer depends on the program, not on the data, so it is cached per hierarchy.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine

from .chain import StockChains, chains_of, override_steps

__all__ = ["DataRoles", "data_roles", "example_batch", "probe_batch"]

#: examples in the batch a program is probed with: odd and unlike any channel count, so that a plate
#: over channels or pixels is not taken for the plate over examples
PROBE_BATCH = 5

_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class DataRoles:
    """``site``: the observed sample site that holds the data; ``plate``: the plate over the examples."""

    site: str
    plate: str


def example_batch(hierarchy, batch_size: int = 2, data_shape=None) -> torch.Tensor:
    """A batch of zeros of ``data_shape`` (default ``hierarchy.data_shape``) in the dtype and device of
    the hierarchy's parameters (valid binary, 8-bit and continuous data); ValueError without a shape."""
    shape = data_shape if data_shape is not None else getattr(hierarchy, "data_shape", None)
    if shape is None:
        raise ValueError(f"{type(hierarchy).__name__} has no data_shape attribute: pass a batch of data or the "
                         "shape of one example (commands take it from the data they load)")
    params = hierarchy.parameters() if callable(getattr(hierarchy, "parameters", None)) else ()
    ref = next((p for p in params if torch.is_floating_point(p)), None)
    return torch.zeros((batch_size,) + tuple(shape), dtype=ref.dtype if ref is not None else torch.get_default_dtype(),
                       device=ref.device if ref is not None else None)


def probe_batch(hierarchy, x: torch.Tensor | None = None, batch_size: int = PROBE_BATCH) -> torch.Tensor:
    """A batch to run a program on: the first examples of ``x`` (repeated to ``batch_size``), else
    random {0, 1} values (valid binary, 8-bit and continuous data) shaped as :func:`example_batch`."""
    if x is not None:
        reps = -(-batch_size // x.shape[0])
        return x.repeat((reps,) + (1,) * (x.dim() - 1))[:batch_size]  # (batch_size, ...)
    zeros = example_batch(hierarchy, batch_size)
    bits = torch.randint(0, 2, zeros.shape, generator=torch.Generator().manual_seed(0))
    return bits.to(dtype=zeros.dtype, device=zeros.device)


def _owner(program):
    """The object the roles belong to (and are cached on): a hierarchy, or a model callable."""
    if callable(getattr(program, "model", None)):
        return program
    return getattr(program, "__self__", None) or program


def data_roles(program, x: torch.Tensor | None = None, observed: str | None = None) -> DataRoles:
    """The :class:`DataRoles` of ``program`` (a hierarchy with ``.model``, or a model callable).

    Args:
        x: data to run the model on (default: :func:`probe_batch` of the hierarchy's ``data_shape``).
        observed: the data site's name where the model observes several (default: the hierarchy's
            ``observed`` attribute, if any).

    Raises:
        ValueError: no observed site, several with none chosen, a chosen name that is not observed,
            or a data site outside every plate over the batch.
    """
    owner = _owner(program)
    observed = observed if observed is not None else getattr(owner, "observed", None)
    try:
        hit = _CACHE.get(owner)
    except TypeError:  # not weak-referenceable
        hit = None
    if hit is not None and hit[0] == observed:
        return hit[1]
    roles = _read_roles(owner, probe_batch(owner, x), observed)
    try:
        _CACHE[owner] = (observed, roles)
    except TypeError:
        pass
    return roles


def _model_trace(owner, x):
    """One run of the stock model on x that leaves no trace: RNG, param store, outer handlers untouched."""
    model = owner.model if callable(getattr(owner, "model", None)) else owner
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad(), pyro.validation_enabled(False), \
            pyro.get_param_store().scope(), poutine.block(), StockChains(), \
            override_steps(chains_of(owner), lambda s: min(s, 2)):
        return poutine.trace(model).get_trace(x)


def _is_data(value: torch.Tensor, x: torch.Tensor) -> bool:
    return value.numel() == x.numel() and torch.equal(value.detach().reshape(-1).double(), x.reshape(-1).double())


def _read_roles(owner, x, observed) -> DataRoles:
    trace = _model_trace(owner, x)
    sites = {n: s for n, s in trace.nodes.items() if s["type"] == "sample" and s["is_observed"]
             and not isinstance(s["fn"], pyro.distributions.Unit)}  # pyro.factor sites are not data
    name = type(owner).__name__ if not callable(owner) or hasattr(owner, "model") else getattr(owner, "__name__", "model")
    if observed is not None:
        if observed not in sites:
            raise ValueError(f"{name}: observed={observed!r} is not an observed sample site of model(x) "
                             f"(its observed sites: {sorted(sites) or 'none'})")
        site = sites[observed]
    elif not sites:
        raise ValueError(f"{name}: model(x) observes no sample site; observe the data with "
                         "pyro.sample(name, distribution, obs=x) (any name)")
    else:
        matches = [n for n, s in sites.items() if _is_data(s["value"], x)] if len(sites) > 1 else list(sites)
        if len(matches) != 1:
            raise ValueError(f"{name}: model(x) observes {sorted(sites)}; cannot tell which holds the data — set "
                             f"the class attribute observed = {sorted(matches or sites)[0]!r} (or pass observed=...)")
        site = sites[matches[0]]
    return DataRoles(site["name"], _batch_plate(name, site, x.shape[0]))


def _batch_plate(name: str, site, batch: int) -> str:
    plates = [f for f in site["cond_indep_stack"] if f.vectorized and f.size == batch]
    if not plates:
        found = [f"{f.name} (size {f.size})" for f in site["cond_indep_stack"]]
        raise ValueError(f"{name}: the data site {site['name']!r} must sit in a plate over the examples, "
                         f"pyro.plate(name, batch_size) (found {found or 'no plate'})")
    return plates[0].name  # outermost first
