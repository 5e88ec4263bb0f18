"""Names and limits the command line needs before any heavy import (no torch, no Pyro here).

The modules that own these concepts import them from here, so each lives in one place.
"""

import os

__all__ = ["DATASETS", "ESTIMATORS", "MAX_T", "default_threads"]

#: the datasets :func:`hlvm.data.load_dataset` knows
DATASETS = ("mnist5k", "digits", "five-clusters", "gaussian", "ppca", "mnist", "fashion-mnist", "cifar10")

#: the estimator names of ``--estimator`` / :func:`hlvm.estimators.make_estimator` (``auto``: the rule of
#: :func:`hlvm.estimators.default_estimator`, which training and evaluation both follow)
ESTIMATORS = ("auto", "trace", "meanfield", "diffusion")

#: the most discrete steps a chain takes.  The grid t = i/T, s = t − 1/T is computed in the
#: model's dtype; in float32 the discrete-time weights ½ T expm1(γ_t − γ_s) averaged over the grid
#: stay within 0.1% of their float64 values up to T = 10⁵ (tests/diffusion/test_time_grid.py) and
#: drift beyond it (1% at 10⁶, 7% at 10⁷; at 10⁸ neighbouring times coincide).
MAX_T = 100_000


def default_threads() -> int:
    """Intra-op threads for a run on this machine: its cores less those other work keeps busy
    (the 1-minute load average), at least 1.  On a shared 2-core machine with one other job this
    is 1 — where torch's default of 2 made a 784×512 matmul 8× slower than 1 thread.  Recorded in
    the run's config; ``--threads N`` overrides it."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = round(os.getloadavg()[0])
    except OSError:  # pragma: no cover - no load average on this platform
        busy = 0
    return max(1, min(cores, cores - busy))
