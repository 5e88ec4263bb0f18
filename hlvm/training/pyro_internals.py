"""The one place where hlvm reaches into Pyro's (and torch's) private state: what the recorded step
(:mod:`hlvm.training.compile`) needs to capture an SVI step as one tensor program.

Everything here relies on internals that Pyro does not promise to keep; ``tests/test_pyro_internals.py``
fails when one of them changes.  The internals, exactly:

* :data:`READOUT_MODULES` × :data:`READOUTS`: the module globals ``torch_item`` and ``warn_if_nan``
  of ``pyro.infer.trace_elbo`` and ``pyro.infer.trace_mean_field_elbo``, the scalar read-outs (a
  ``.item()``, a NaN warning) by which the ELBOs report their loss.  A read-out ends a
  :func:`~torch.fx.experimental.proxy_tensor.make_fx` recording, so :func:`without_readouts`
  replaces them by the identity while recording; they feed no gradient.
* :data:`STORE_DICTS`: the dicts of :class:`pyro.params.param_store.ParamStoreDict` —
  ``_params`` (name → unconstrained tensor), ``_param_to_name`` (tensor → name) and
  ``_constraints`` (name → constraint).  :class:`ParamSlots` puts stand-in tensors into
  ``_params`` (and ``torch.nn.Module._parameters``, name → parameter) while recording, and afterwards
  restores all three dicts, which ``pyro.module`` rewrites when it meets the stand-ins.

If Pyro renames a read-out, the recording meets the ``.item()`` and fails: the recorded step then
falls back to Pyro's own step with a one-line notice (slower, never wrong).
"""

from __future__ import annotations

import contextlib

import pyro
import pyro.infer.trace_elbo as _trace_elbo
import pyro.infer.trace_mean_field_elbo as _mean_field
import torch

__all__ = ["READOUTS", "READOUT_MODULES", "STORE_DICTS", "without_readouts", "ParamSlots"]

#: Pyro's scalar read-outs for reporting: not part of the gradient
READOUTS = ("torch_item", "warn_if_nan")
#: the modules whose globals :data:`READOUTS` are replaced while recording
READOUT_MODULES = (_trace_elbo, _mean_field)
#: the param store's private dicts that :class:`ParamSlots` restores
STORE_DICTS = ("_params", "_param_to_name", "_constraints")


@contextlib.contextmanager
def without_readouts():
    """Inside the block, :data:`READOUTS` of :data:`READOUT_MODULES` are the identity (they would end
    a recording); afterwards they are Pyro's again."""
    saved = []
    for module in READOUT_MODULES:
        for name in READOUTS:
            if hasattr(module, name):
                saved.append((module, name, getattr(module, name)))
                setattr(module, name, (lambda v, *a, **k: v))
    try:
        yield
    finally:
        for module, name, fn in saved:
            setattr(module, name, fn)


class ParamSlots:
    """Every place a parameter tensor is read from — ``module._parameters`` entries and the Pyro
    param store's ``_params`` — swapped to stand-ins for the length of a ``with`` block.

    :param params: the parameters (unconstrained tensors) to stand in for.
    :param modules: the ``torch.nn.Module`` s whose ``_parameters`` may hold them.
    """

    def __init__(self, params: list[torch.Tensor], modules):
        ids = {id(p): k for k, p in enumerate(params)}
        self.places = []  # (dict, key, index into params)
        for m in modules:
            for name, p in m._parameters.items():
                if p is not None and id(p) in ids:
                    self.places.append((m._parameters, name, ids[id(p)]))
        store = pyro.get_param_store()._params
        for name, p in store.items():
            if id(p) in ids:
                self.places.append((store, name, ids[id(p)]))
        #: indices of the parameters found in some place (the others cannot be stood in for)
        self.reached = {k for _, _, k in self.places}

    @contextlib.contextmanager
    def swapped(self, values):
        """Stand-ins ``values`` (one per parameter) in every place; afterwards every place, and the
        param store's :data:`STORE_DICTS`, exactly as before."""
        store = pyro.get_param_store()
        books = [(d, dict(d)) for d in (getattr(store, name) for name in STORE_DICTS)]
        saved = [(d, key, d[key]) for d, key, _ in self.places]
        try:
            for d, key, k in self.places:
                d[key] = values[k]
            yield
        finally:
            for d, key, v in saved:
                d[key] = v
            for d, before in books:
                d.clear()
                d.update(before)
