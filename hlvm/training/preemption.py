"""Preemption: SIGTERM (SLURM, Kubernetes) or SIGINT ends a run at a step boundary with a checkpoint.

Shared clusters preempt a job by sending SIGTERM a while before they kill it.  While a
:class:`Trainer` runs, :class:`PreemptionGuard` catches SIGTERM and SIGINT: the signal only sets a flag,
so the step under way finishes (a step is never cut in half), and after it the trainer writes its
checkpoint atomically, logs where, and raises :class:`Preempted`; ``hlvm train`` then exits with
:data:`PREEMPTED_EXIT`, and ``--resume`` continues exactly as if nothing had happened (the checkpoint
holds the RNG states, the batch order and the position in it).

Under ``torchrun`` the processes may see the signal at different steps: after every step the flags are
combined with one ``all_reduce`` (MAX), so every rank stops after the same step and the checkpoint is
of that step.  A second signal while the checkpoint is written is ignored; the default handlers come
back when the run ends.
"""

from __future__ import annotations

import signal
import threading

import torch

__all__ = ["PREEMPTED_EXIT", "Preempted", "PreemptionGuard"]

#: the exit status of a run stopped by SIGTERM/SIGINT after saving its checkpoint (EX_TEMPFAIL: try again,
#: with ``--resume``)
PREEMPTED_EXIT = 75

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(RuntimeError):
    """The run stopped on a signal after step :attr:`step`, its checkpoint saved at :attr:`path`."""

    def __init__(self, signame: str, step: int, path: str | None):
        where = f"checkpoint saved at {path}; continue with --resume" if path else "no checkpoint written"
        super().__init__(f"stopped by {signame} after step {step}: {where}")
        self.signame, self.step, self.path = signame, step, path


class PreemptionGuard:
    """A context in which SIGTERM and SIGINT set a flag instead of ending the process.

    Args:
        world: processes of the run; above 1, :meth:`requested` agrees across them (``all_reduce``).
        device: the device of that ``all_reduce``'s one-number tensor (the process group's).
    """

    def __init__(self, world: int = 1, device="cpu"):
        self.world, self.device = world, device
        self.signame: str | None = None
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._caught)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False

    def _caught(self, signum, frame):
        self.signame = self.signame or signal.Signals(signum).name

    def requested(self) -> bool:
        """Whether any process of the run has caught a signal (the same answer on every rank)."""
        if self.world <= 1:
            return self.signame is not None
        import torch.distributed as dist

        flag = torch.tensor([1.0 if self.signame else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self.signame is None:
            self.signame = "SIGTERM (on another process)"
        return bool(flag.item())

    def hold(self):
        """Ignore further signals (while the checkpoint is written)."""
        for sig in self._previous:
            signal.signal(sig, signal.SIG_IGN)
