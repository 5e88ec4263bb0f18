"""Start-up: wall time of ``hlvm --help`` and each ``hlvm <cmd> --help``, and time to the first step.

Each figure is the median over ``--repeats`` fresh processes (``python -m hlvm.cli``), timed from
just before the process is spawned:

* ``hlvm --help`` and ``hlvm <cmd> --help`` until the process exits;
* time to first step: ``hlvm train vae --data mnist5k`` until the first SVI step has returned —
  the child runs the real command with one addition, a print of the wall clock after that step,
  and is stopped there (nothing is evaluated or saved).

The floor beside it: the same first step written by hand in PyTorch (``import torch``, the same
network sizes, ``torch.optim.Adam`` — whose first construction imports ``torch._dynamo``), and
``import torch`` alone.

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
import hlvm.training as T
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


# the floor: a hand-written PyTorch script doing the same first step (same networks' sizes, Adam)
_PLAIN = r"""
import time, torch
x = (torch.rand(128, 784) > 0.5).float()
enc, dec = torch.nn.Sequential(torch.nn.Linear(784, 400), torch.nn.ReLU(), torch.nn.Linear(400, 40)), \
    torch.nn.Sequential(torch.nn.Linear(20, 400), torch.nn.ReLU(), torch.nn.Linear(400, 784))
opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3)
loc, log_scale = enc(x).chunk(2, -1)
z = loc + log_scale.exp() * torch.randn_like(loc)
loss = torch.nn.functional.binary_cross_entropy_with_logits(dec(z), x, reduction="sum") \
    + 0.5 * (loc ** 2 + (2 * log_scale).exp() - 2 * log_scale - 1).sum()
opt.zero_grad(); loss.backward(); opt.step()
print("FIRST_STEP", time.time(), flush=True)
"""


def _env():
    return dict(os.environ, PYTHONPATH=C.LIBRARY + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _timed(cmd: list[str]) -> float:
    t0 = time.time()
    subprocess.run(cmd, cwd=C.ROOT, env=_env(), capture_output=True, check=True)
    return time.time() - t0


def time_exit(args: list[str]) -> float:
    return _timed([sys.executable, "-m", "hlvm.cli", *args])


def time_first_step(out: str, plain: bool = False) -> float:
    t0 = time.time()
    argv = ["-c", _PLAIN] if plain else ["-c", _FIRST_STEP, "train", "vae", "--data", "mnist5k", "--steps", "10",
                                         "--out", out, "--overwrite", "--no-progress"]
    proc = subprocess.run([sys.executable, *argv], cwd=C.ROOT, env=_env(), capture_output=True, text=True)
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
        res["first_step_plain"] = med(time_first_step, "", True)
    res["import_torch"] = med(lambda: _timed([sys.executable, "-c", "import torch"]))

    res["met"] = {k: res[k] <= g for k, g in GOALS.items()}
    print(f"hlvm --help {res['help']:.2f} s; " + ", ".join(f"{c} --help {t:.2f} s" for c, t in res["commands"].items())
          + f"; first training step {res['first_step']:.2f} s after start (plain PyTorch script {res['first_step_plain']:.2f} s; "
          f"import torch {res['import_torch']:.2f} s)")
    return res


def markdown(res: dict, command: str = "python benchmarks/startup.py") -> str:
    rows = [["`hlvm --help`", f"{res['help']:.2f}", f"≤ {GOALS['help']} s — {'met' if res['met']['help'] else 'missed'}"]]
    rows += [[f"`hlvm {c} --help`", f"{t:.2f}", ""] for c, t in res["commands"].items()]
    rows += [["first SVI step of `hlvm train vae --data mnist5k`", f"{res['first_step']:.2f}",
              f"≤ {GOALS['first_step']} s — {'met' if res['met']['first_step'] else 'missed'}"]]
    if "first_step_plain" in res:
        rows += [["the floor: first step of a hand-written PyTorch VAE script (same sizes, `torch.optim.Adam`)",
                  f"{res['first_step_plain']:.2f}", ""],
                 ["`import torch` alone", f"{res['import_torch']:.2f}", ""]]
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
