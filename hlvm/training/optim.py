"""One torch optimizer over every parameter that SVI captures.

``pyro.optim.Adam`` wraps *one* ``torch.optim.Adam`` per parameter tensor and steps them one by one
(a Python-level ``Optimizer.step`` per tensor: 34 of them for VDM's default MLP denoiser), and
``pyro.infer.SVI`` then replaces every gradient by a fresh zero tensor that the next backward
accumulates into.  :class:`SingleOptim` keeps SVI's contract — it is called with the parameters
captured in the step, and parameters first seen later join as a new param group — but steps them all
in one call, as a plain ``torch.optim.Adam(model.parameters())`` would, and frees the gradients
afterwards (``zero_grad(set_to_none=True)``), so SVI's zeroing has nothing left to do.  The updates
are ``pyro.optim.Adam``'s to rounding (Adam is elementwise), computed by torch's fused kernel where
the parameters allow it (:meth:`SingleOptim._kernel_args`); ``benchmarks/step_overhead.py``
measures what this saves.

Example::

    svi = SVI(model.model, model.guide, hlvm.training.optim.Adam({"lr": 1e-3}), DiffusionELBO())

.. warning:: Per-parameter optimizer arguments (a callable ``optim_args``) and Pyro's per-parameter
    ``clip_args`` are not supported; ``clip_norm`` clips the global gradient norm instead.
"""

from __future__ import annotations

import pickle
from typing import Callable, NamedTuple

import pyro
import torch
from pyro.optim import PyroOptim

__all__ = ["SingleOptim", "Update", "Adam", "AdamW"]


class Update(NamedTuple):
    """What one optimizer call did: the global gradient norm before clipping (None when neither
    clipping nor skipping asked for it) and whether the update was skipped."""

    grad_norm: float | None
    skipped: bool


class SingleOptim(PyroOptim):
    """A :class:`~pyro.optim.PyroOptim` with a single ``torch.optim`` optimizer for all parameters.

    :param optim_constructor: a ``torch.optim.Optimizer`` class.
    :param dict optim_args: its keyword arguments (``lr``, ``betas``, ...).
    :param float clip_norm: clip the global gradient norm before each step (optional).
    :param float skip_norm: skip the update (VDVAE's "update skipping", Child 2021) when the global
        gradient norm, before clipping, exceeds this or is not finite (optional); ``skipped`` counts them.

    Each call returns an :class:`Update`: the global gradient norm when clipping or skipping
    computed it, and whether the update was skipped.

    .. warning:: A fixed ``skip_norm`` must lie above the gradient norms of the first steps, which
        are larger than later ones; set too low, every update is skipped and nothing trains.

    Its state (:meth:`get_state`) names the parameters of each param group by their param-store
    names, so a checkpoint restores onto a fresh model whatever order SVI captures them in.
    """

    def __init__(self, optim_constructor: Callable, optim_args: dict | None = None, clip_norm: float | None = None,
                 skip_norm: float | None = None):
        optim_args = {} if optim_args is None else optim_args
        if not isinstance(optim_args, dict):
            raise ValueError(f"optim_args must be a dict of keyword arguments, got {type(optim_args).__name__}")
        if clip_norm is not None and not clip_norm > 0:
            raise ValueError(f"clip_norm must be positive, got {clip_norm}")
        if skip_norm is not None and not skip_norm > 0:
            raise ValueError(f"skip_norm must be positive, got {skip_norm}")
        super().__init__(optim_constructor, optim_args)
        self.clip_norm, self.skip_norm = clip_norm, skip_norm
        self.skipped = 0  # updates skipped (gradient norm above skip_norm)
        self.optim = None  # the torch optimizer, built on the first call
        self._groups: list[list[str]] = []  # param-store names of each param group
        self._members: set = set()
        self._pending = None  # a state loaded before the first call

    def _name(self, p: torch.Tensor, k: int) -> str:
        name = pyro.get_param_store().param_name(p)
        return name if name is not None else f"<unnamed {k}>"

    def _add(self, params) -> None:
        named = sorted(((self._name(p, k), p) for k, p in enumerate(params)), key=lambda np_: np_[0])
        if self._pending is not None and self.optim is None:
            saved = [n for group in self._pending["groups"] for n in group]
            by_name = dict(named)
            missing = [n for n in saved if n not in by_name]
            if missing:
                raise ValueError(f"optimizer state names parameters that this step did not capture: {missing[:3]}")
            groups = [[by_name[n] for n in group] for group in self._pending["groups"]]
            self.optim = self.pt_optim_constructor([{"params": g} for g in groups],
                                                   **self._kernel_args([p for g in groups for p in g]))
            self.optim.load_state_dict(self._pending["optim"])
            if "lr" in self.pt_optim_args:  # the current rate (set_lr), not the one saved with the moments
                for g in self.optim.param_groups:
                    g["lr"] = self.pt_optim_args["lr"]
            self._groups = [list(g) for g in self._pending["groups"]]
            self._members.update(p for g in groups for p in g)
            self._pending = None
            named = [(n, p) for n, p in named if p not in self._members]
            if not named:
                return
        group = {"params": [p for _, p in named]}
        if self.optim is None:
            self.optim = self.pt_optim_constructor([group], **self._kernel_args([p for _, p in named]))
        else:
            self.optim.add_param_group(group)
        self._groups.append([n for n, _ in named])
        self._members.update(p for _, p in named)

    def _kernel_args(self, params: list) -> dict:
        """The constructor's arguments, with ``fused=True`` for Adam and AdamW where the user chose no
        kernel (``fused`` / ``foreach``) and every parameter is a dense floating tensor on the CPU or a
        CUDA device: one fused kernel per update instead of torch's per-tensor loop, the CPU default
        (2.1 against 5.1 ms per update for the top-down HVAE's 2.1 M parameters, 1 thread).  The update
        is Adam's, elementwise, to rounding; a checkpoint keeps the kernel it was written with."""
        args = dict(self.pt_optim_args)
        if (self.pt_optim_constructor in (torch.optim.Adam, torch.optim.AdamW)
                and "fused" not in args and "foreach" not in args
                and all(p.is_floating_point() and p.layout == torch.strided and p.device.type in ("cpu", "cuda")
                        for p in params)):
            args["fused"] = True
        return args

    @property
    def lr(self) -> float:
        """The learning rate of the (first) param group: what the next step uses."""
        if self.optim is not None and self.optim.param_groups:
            return float(self.optim.param_groups[0]["lr"])
        return float(self.pt_optim_args.get("lr", float("nan")))

    def set_lr(self, lr: float) -> None:
        """Use ``lr`` from the next step on (every param group; :mod:`hlvm.training.lr_schedule`)."""
        self.pt_optim_args = {**self.pt_optim_args, "lr": lr}
        for group in self.optim.param_groups if self.optim is not None else ():
            group["lr"] = lr

    def __call__(self, params, *args, **kwargs) -> Update:
        """One optimizer step over ``params`` (an iterable of unconstrained parameters)."""
        params = list(params)
        new = [p for p in params if p not in self._members]
        if new:
            self._add(new)
        norm = None
        if self.skip_norm is not None or self.clip_norm is not None:
            wanted = set(params)
            # in the optimizer's own (param-store name) order, not the caller's: SVI hands a set, whose
            # order follows memory addresses, and the norm's float sum must not (exact resume)
            grads = [p for group in self.optim.param_groups for p in group["params"] if p in wanted and p.grad is not None]
            norm = float(torch.nn.utils.clip_grad_norm_(grads, self.clip_norm if self.clip_norm is not None else float("inf")))
            if self.skip_norm is not None and not norm <= self.skip_norm:  # VDVAE's update skipping (also NaN)
                self.skipped += 1
                self.optim.zero_grad(set_to_none=True)
                return Update(norm, True)
        self.optim.step(*args, **kwargs)
        self.optim.zero_grad(set_to_none=True)
        return Update(norm, False)

    def get_state(self) -> dict:
        """The torch optimizer's state dict with the param-store names of each group."""
        if self.optim is None:
            return self._pending or {"groups": [], "optim": None}
        return {"groups": [list(g) for g in self._groups], "optim": self.optim.state_dict()}

    def set_state(self, state: dict) -> None:
        """Load a state from :meth:`get_state` (now, or on the first step if none was taken yet)."""
        if not isinstance(state, dict) or "groups" not in state:
            raise ValueError("not a SingleOptim state (expected keys 'groups' and 'optim'); "
                             "was the checkpoint written with pyro.optim's per-parameter optimizers?")
        if state["optim"] is None:
            return
        if self.optim is None:
            self._pending = state
            return
        if state["groups"] != self._groups:
            raise ValueError("optimizer state's parameter groups do not match this optimizer's")
        self.optim.load_state_dict(state["optim"])

    def save(self, filename: str) -> None:
        torch.save(self.get_state(), filename)

    def load(self, filename: str, map_location=None) -> None:
        """Load a state written by :meth:`save` without running code (``weights_only=True``: a file
        that would call anything to be rebuilt is refused with a ValueError)."""
        try:
            state = torch.load(filename, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            raise ValueError(f"optimizer state {filename!r} was refused: rebuilding it would run code "
                             f"({str(e).splitlines()[-1].strip()[:200]})") from None
        self.set_state(state)


def Adam(optim_args: dict | None = None, clip_norm: float | None = None, skip_norm: float | None = None) -> SingleOptim:
    """``torch.optim.Adam`` over all parameters, for :class:`pyro.infer.SVI` (cf. ``pyro.optim.Adam``)."""
    return SingleOptim(torch.optim.Adam, optim_args, clip_norm, skip_norm)


def AdamW(optim_args: dict | None = None, clip_norm: float | None = None, skip_norm: float | None = None) -> SingleOptim:
    """``torch.optim.AdamW`` over all parameters, for :class:`pyro.infer.SVI`."""
    return SingleOptim(torch.optim.AdamW, optim_args, clip_norm, skip_norm)
