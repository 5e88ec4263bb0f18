"""Data parallelism: the processes of a run and the gradient sum across them.

Under ``torchrun --nproc_per_node N`` each rank takes its shard of every global batch, and the
gradients and the loss are summed with one ``all_reduce`` (gloo on CPU, nccl on GPU), so that the
summed loss equals the single-process loss on the same global batch computed with
``grad_shards = N`` (the same per-shard random streams: :func:`hlvm.training.step.shard_seed`).
A plain ``python`` process is a world of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Processes", "join_processes", "sum_over_ranks"]


@dataclass(frozen=True)
class Processes:
    """The processes of a run: how many (``world``), which one this is (``rank``), and its device."""

    world: int
    rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, metrics and progress."""
        return self.rank == 0


def join_processes(device: str) -> Processes:
    """This process's place in the run: joins the process group when ``torchrun`` started several
    (``WORLD_SIZE`` > 1), and picks the rank's own GPU (``LOCAL_RANK``) for ``device == "cuda"``."""
    world, rank = 1, 0
    local = int(os.environ.get("LOCAL_RANK", 0))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        world, rank = dist.get_world_size(), dist.get_rank()
        if device.startswith("cuda"):
            torch.cuda.set_device(local)
    return Processes(world, rank, torch.device(f"cuda:{local}" if device == "cuda" and world > 1 else device))


def sum_over_ranks(params: list[torch.Tensor], total: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Sum every parameter's gradient (in place) and the loss ``total`` over the ranks in one
    ``all_reduce``; the summed loss, float64 on the CPU.  A parameter without a gradient counts as
    a zero gradient."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    # (Σ numel + 1,): every gradient flattened, the loss last
    flat = torch.cat([p.grad.reshape(-1) for p in params] + [total.reshape(1).to(params[0].dtype).to(device)])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p))
        offset += n
    return flat[-1].double().cpu()
