"""Start-up: wall time of ``hlvm --help`` and each ``hlvm <cmd> --help``, and time to the first step.

Each figure is the median over ``--repeats`` fresh processes (``python -m hlvm.cli``), timed from
just before the process is spawned:

* ``hlvm --help`` and ``hlvm <cmd> --help`` until the process exits;
* time to first step: ``hlvm train vae --data mnist5k`` until the first SVI step has returned —
  the child runs the real command with one addition, a print of the wall clock after that step,
  and is stopped there (nothing is evaluated or saved).

Goals (issue 15): ``hlvm --help`` ≤ 0.5 s; the first training step ≤ 2 s after start on mnist5k.

    .venv/bin/python benchmarks/startup.py [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

import _common as C  # noqa: I001

COMMANDS = ("train", "compare", "sample", "render", "results", "demo")
GOALS = {"help": 0.5, "first_step": 2.0}

# the child: the real CLI, with a print of the wall clock after the first SVI step, then exit
_FIRST_STEP = r"""
import os, sys, time
import hlvm.train as T
_fit = T.Trainer.fit
def fit(self):
    step = self.svi.step
    def first(*a, **k):
        out = step(*a, **k)
        print("FIRST_STEP", time.time(), flush=True)
        os._exit(0)
    self.svi.step = first
    return _fit(self)
T.Trainer.fit = fit
from hlvm.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env():
    return dict(os.environ, PYTHONPATH=C.LIBRARY + os.pathsep + os.environ.get("PYTHONPATH", ""))


def time_exit(args: list[str]) -> float:
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "hlvm.cli", *args], cwd=C.ROOT, env=_env(), capture_output=True, check=True)
    return time.time() - t0


def time_first_step(out: str) -> float:
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", _FIRST_STEP, "train", "vae", "--data", "mnist5k", "--steps", "10",
                           "--out", out, "--overwrite", "--no-progress"], cwd=C.ROOT, env=_env(), capture_output=True,
                          text=True)
    stamp = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("FIRST_STEP")]
    if not stamp:
        raise RuntimeError(f"no first step (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return float(stamp[0]) - t0


def run(args) -> dict:
    C.setup(args)
    med = lambda fn, *a: statistics.median(fn(*a) for _ in range(args.repeats))  # noqa: E731
    res = {"info": C.machine_info("cpu"), "repeats": args.repeats, "help": med(time_exit, ["--help"]),
           "commands": {c: med(time_exit, [c, "--help"]) for c in COMMANDS}}
    with tempfile.TemporaryDirectory() as tmp:
        res["first_step"] = med(time_first_step, os.path.join(tmp, "run"))
    res["met"] = {k: res[k] <= g for k, g in GOALS.items()}
    print(f"hlvm --help {res['help']:.2f} s; " + ", ".join(f"{c} --help {t:.2f} s" for c, t in res["commands"].items())
          + f"; first training step {res['first_step']:.2f} s after start")
    return res


def markdown(res: dict, command: str = "python benchmarks/startup.py") -> str:
    rows = [["`hlvm --help`", f"{res['help']:.2f}", f"≤ {GOALS['help']} s — {'met' if res['met']['help'] else 'missed'}"]]
    rows += [[f"`hlvm {c} --help`", f"{t:.2f}", ""] for c, t in res["commands"].items()]
    rows += [["first SVI step of `hlvm train vae --data mnist5k`", f"{res['first_step']:.2f}",
              f"≤ {GOALS['first_step']} s — {'met' if res['met']['first_step'] else 'missed'}"]]
    return (f"`{command}` — {C.describe(res['info'])}; median of {res['repeats']} fresh processes, wall clock from "
            "spawn.\n\n" + C.md_table(["what", "seconds", "goal"], rows))


def main(argv=None):
    p = C.base_parser(__doc__.splitlines()[0], repeats=5)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats = 1
    res = run(args)
    print(markdown(res))
    C.dump_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
