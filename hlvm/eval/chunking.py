"""How many rows (importance draws × examples) one vectorized model/guide pass may hold.

The importance weights of :func:`hlvm.eval.weights.per_example_log_weights` are computed by
tracing the guide and replaying the model on a batch whose rows are (draw, example) pairs. The
memory of such a pass is what its traces hold — every site's value and its distribution's
parameter tensors, linear in the rows — plus transients (a network's activations, one site's
log-density) of about the same size. The rule, with b = bytes held per row:

    hard  = ⌊ memory / (2 b) ⌋                          the bound: never more rows than this
    rows  = min(hard, max(⌊ 16 MiB / (2 b) ⌋, 256))      on CPU
    rows  = hard                                         on accelerators
    (at least 1 row),

with b measured on a one-row probe pass of the same program (each tensor extent counted once,
so broadcast views are free). On CPU a pass whose tensors stay in cache runs fastest (VAE
784-128-16, 100 images, K = 500, 1 thread: 1.03–1.10 s at 8–32 MiB a pass, 1.53–1.59 s at
64 MiB, 1.98–2.21 s at 256 MiB, 1.32 s with the former 8,192-row cap), but a pass also costs a
fixed Python price per site, which 256 rows amortize (VDM, T = 100, ~1 MB a row, 10 images,
K = 20: 6.9 s at 8 rows a pass, 2.9 s at 133, 2.6 s at 546). With gradients enabled the
activations kept for backward come on top and are not counted.
"""

from __future__ import annotations

import torch
from pyro.distributions import Distribution

__all__ = ["DEFAULT_MEMORY", "check_memory", "trace_bytes", "rows_per_pass"]

#: default memory bound of one pass, bytes, by device type
DEFAULT_MEMORY = {"cpu": 2**30, "other": 4 * 2**30}
#: on CPU, the bytes a pass aims at (cache-sized) and the fewest rows it aims at (Python overhead)
CPU_TARGET, CPU_MIN_ROWS = 16 * 2**20, 256


def _tensors_of(obj, depth: int = 0):
    """Tensors held by a site value or a (possibly wrapped) distribution."""
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, Distribution) and depth < 8:
        for v in vars(obj).values():
            if torch.is_tensor(v) or isinstance(v, Distribution):
                yield from _tensors_of(v, depth + 1)


def _extent(t: torch.Tensor) -> int:
    """Bytes a tensor spans in its storage (a broadcast view spans one copy; a slice only itself)."""
    if t.numel() == 0:
        return 0
    return (1 + sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride()))) * t.element_size()


def trace_bytes(*traces) -> int:
    """Bytes of tensor memory held by the sample sites of ``traces`` (values and distribution
    parameters; each (address, extent) once, so views of one tensor and broadcasts count once)."""
    seen, total = set(), 0
    for tr in traces:
        for site in tr.nodes.values():
            if site["type"] != "sample":
                continue
            for t in (*_tensors_of(site["value"]), *_tensors_of(site["fn"])):
                key = (t.device, t.data_ptr(), _extent(t))
                if key not in seen:
                    seen.add(key)
                    total += key[2]
    return total


def check_memory(memory, device) -> int:
    """The memory budget in bytes (None: :data:`DEFAULT_MEMORY` of ``device``); ValueError unless positive."""
    if memory is None:
        return DEFAULT_MEMORY["cpu" if torch.device(device).type == "cpu" else "other"]
    if not memory > 0:
        raise ValueError(f"memory must be a positive number of bytes, got {memory}")
    return memory


def rows_per_pass(bytes_per_row: float, memory: int, device="cpu") -> int:
    """Rows of one pass (see the module docstring): at most ⌊memory / (2 · bytes_per_row)⌋, at least 1."""
    per_row = 2 * max(bytes_per_row, 1.0)
    hard = int(memory // per_row)
    if torch.device(device).type == "cpu":
        return max(1, min(hard, max(int(CPU_TARGET // per_row), CPU_MIN_ROWS)))
    return max(1, hard)
