"""Shared harness for the hlvm benchmarks: set-up, side-by-side timing, memory, tables.

Timing rules (the machine may be shared, so absolute times are noisy):

* every contender is warmed up first;
* contenders are **interleaved**: each repeat runs a block of ``inner`` calls of every contender,
  in a rotated order, so that all of them see the same machine load;
* a ratio is the **median over repeats of the per-repeat ratio** to the baseline measured in the
  same repeat (robust to load that drifts between repeats), reported next to the median times;
* wall-clock time is the headline; process CPU time (all threads) is recorded too.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The library under test: this checkout, or another tree of it (``HLVM_BENCH_LIBRARY``, e.g. a git
# worktree of an earlier commit, to measure a change before and after with the same harness).
LIBRARY = os.path.abspath(os.environ.get("HLVM_BENCH_LIBRARY") or ROOT)
sys.path.insert(0, LIBRARY)  # run from a fresh clone without installing: `python benchmarks/x.py`
if LIBRARY != ROOT:
    # an editable install of this checkout would otherwise supply modules missing from that tree
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in str(getattr(f, "__module__", ""))]

import pyro  # noqa: E402
import torch  # noqa: E402


# ------------------------------------------------------------------------------------------ set-up
def base_parser(description: str, repeats: int = 15) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--repeats", type=int, default=repeats, help=f"interleaved repeats (default {repeats})")
    p.add_argument("--quick", action="store_true", help="a fast smoke run (few repeats, small sizes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p


def setup(args) -> torch.device:
    """Pin threads, seed, and check the device."""
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass
    torch.manual_seed(args.seed)
    pyro.set_rng_seed(args.seed)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    return dev


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def machine_info(device) -> dict:
    dev = torch.device(device)
    info = {
        "python": platform.python_version(), "torch": torch.__version__, "pyro": pyro.__version__,
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "threads": torch.get_num_threads(), "device": str(dev), "library": _library_version(),
    }
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    try:
        info["loadavg"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


def _library_version() -> str:
    """The commit of the library under test (with ``+dirty`` for uncommitted changes)."""
    import subprocess

    if os.environ.get("HLVM_BENCH_LIBRARY_REV"):
        return os.environ["HLVM_BENCH_LIBRARY_REV"]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=LIBRARY, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "hlvm", "models"], cwd=LIBRARY,
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def describe(info: dict) -> str:
    s = f"torch {info['torch']}, pyro {info['pyro']}, Python {info['python']}, {info['threads']} CPU thread(s) of {info['cores']}"
    if "gpu" in info:
        s += f", GPU {info['gpu']}"
    if info.get("library"):
        s += f", hlvm at {info['library']}"
    if "loadavg" in info:
        s += f", load average {info['loadavg']} at start"
    return s


# ------------------------------------------------------------------------------------------ timing
@dataclass
class Timing:
    name: str
    wall: list = field(default_factory=list)  # seconds per call, one entry per repeat
    cpu: list = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu)


def interleaved(contenders: dict, repeats: int, inner: int = 5, warmup: int = 3, device="cpu",
                min_block_s: float = 0.0) -> dict:
    """Time each callable in ``contenders`` (name -> fn()), interleaved; returns name -> Timing.

    ``inner`` calls per block (raised so that one block lasts at least ``min_block_s`` on the
    slowest contender's warm-up timing).
    """
    names = list(contenders)
    t_warm = {}
    for n in names:
        for _ in range(warmup):
            contenders[n]()
        sync(device)
        t0 = time.perf_counter()
        contenders[n]()
        sync(device)
        t_warm[n] = time.perf_counter() - t0
    if min_block_s > 0:
        inner = max(inner, int(min_block_s / max(min(t_warm.values()), 1e-6)) + 1)
    out = {n: Timing(n) for n in names}
    gc_was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r in range(repeats):
            order = names[r % len(names):] + names[:r % len(names)]
            if (r // len(names)) % 2:
                order = order[::-1]
            for n in order:
                fn = contenders[n]
                sync(device)
                w0, c0 = time.perf_counter(), time.process_time()
                for _ in range(inner):
                    fn()
                sync(device)
                out[n].wall.append((time.perf_counter() - w0) / inner)
                out[n].cpu.append((time.process_time() - c0) / inner)
            gc.collect()
    finally:
        if gc_was:
            gc.enable()
    return out


def ratio(timings: dict, name: str, base: str, cpu: bool = False) -> float:
    """Median over repeats of the per-repeat time ratio name/base."""
    a = timings[name].cpu if cpu else timings[name].wall
    b = timings[base].cpu if cpu else timings[base].wall
    return statistics.median(x / y for x, y in zip(a, b))


def ratio_iqr(timings: dict, name: str, base: str) -> tuple[float, float]:
    rs = sorted(x / y for x, y in zip(timings[name].wall, timings[base].wall))
    if len(rs) < 4:
        return rs[0], rs[-1]
    q = statistics.quantiles(rs, n=4)
    return q[0], q[2]


# ------------------------------------------------------------------------------------------ memory
@contextmanager
def quiet_stderr():
    """Silence file descriptor 2 (the profiler's C++ start/stop log lines)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_memory(fn, device="cpu") -> int:
    """Peak bytes allocated by torch *above the level before the call* while running ``fn()``.

    CUDA: ``torch.cuda.max_memory_allocated``.  CPU: the largest "Total Allocated" of the
    profiler's memory events (torch.profiler with ``profile_memory=True``), which tracks the
    CPU allocator exactly like the CUDA counter does.
    """
    dev = torch.device(device)
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        start = torch.cuda.memory_allocated(dev)
        fn()
        torch.cuda.synchronize(dev)
        return torch.cuda.max_memory_allocated(dev) - start
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    finally:
        os.remove(path)
    events = [e for e in trace.get("traceEvents", []) if e.get("name") == "[memory]"
              and e.get("args", {}).get("Device Type", 0) == 0]
    if not events:
        return 0
    events.sort(key=lambda e: e.get("ts", 0))
    # "Total Allocated" is after the event; the level before the first event is total − bytes.
    first = events[0]["args"]
    start = first["Total Allocated"] - first["Bytes"]
    return max(e["args"]["Total Allocated"] for e in events) - start


def mib(nbytes: float) -> float:
    return nbytes / 2**20


# ------------------------------------------------------------------------------------------ output
def md_table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def dump_json(path, payload) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=float)


def fmt_ms(s: float) -> str:
    return f"{1e3 * s:.2f}"
