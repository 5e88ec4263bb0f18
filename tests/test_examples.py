"""Smoke-run every script in ``examples/`` as a subprocess with a tiny budget.

Each script runs as a user would run it (``python examples/<script>.py ...`` from the repository
root) and must exit with status 0, print its training and test lines, and write its PNG.  Numbers
are checked where a closed form exists: bits/dim = nats / (D ln 2), and the VDM's aggregate
posterior q(z_1) has no holes whatever its (barely trained) denoiser, because q(z_1 | x) is fixed.

All selected scripts start together (one thread each) and every test waits for its own, so the
file takes about as long as the slowest script instead of the sum of all of them.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300  # seconds per script, generous for a busy machine

TINY = ["--steps", "6", "--log-every", "3", "--device", "cpu"]
DIGITS = [*TINY, "--dataset", "digits"]  # 8×8 images: fast to load and to train
SCRIPTS = {
    # name: (command line, writes a PNG, data dimension D)
    "train_vae": (["examples/train_vae.py", *TINY, "--samples", "{out}"], True, 784),  # default data: MNIST
    "train_hvae_bottom_up": (["examples/train_hvae_bottom_up.py", *DIGITS, "--layers", "3", "--samples", "{out}"], True, 64),
    "train_hvae_top_down": (["examples/train_hvae_top_down.py", *DIGITS, "--layers", "2", "--merge", "residual",
                             "--samples", "{out}"], True, 64),
    # discrete time, a learned schedule, the U-Net and a coarser sampling grid (continuous time: hole_problem)
    "train_vdm": (["examples/train_vdm.py", *DIGITS, "--T", "50", "--schedule", "learned-linear", "--backbone", "unet",
                   "--samples", "{out}", "--sample-steps", "10"], True, 64),
    "hole_problem": (["examples/hole_problem.py", "--steps", "20", "--device", "cpu", "--out", "{out}"], True, 2),
    "user_hierarchy": (["examples/user_hierarchy.py", "--steps", "5"], False, 784),
}
TRAINERS = [n for n in SCRIPTS if n.startswith("train_")]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NUMBER = r"(-?\d+\.\d+|nan|inf|-inf)"


class Run:
    """One script started in the background; ``result()`` waits for it."""

    def __init__(self, name: str, tmp: Path):
        args, writes_png, self.dim = SCRIPTS[name]
        self.png = tmp / f"{name}.png" if writes_png else None
        self.log = tmp / f"{name}.log"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                   OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONIOENCODING="utf-8", MPLBACKEND="Agg")
        cmd = [sys.executable] + [a.replace("{out}", str(self.png)) for a in args]
        with open(self.log, "wb") as f:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)

    def result(self) -> str:
        """The script's output after a successful exit (fails the test otherwise)."""
        try:
            rc = self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"{self.log.stem} ran longer than {TIMEOUT} s")
        out = self.log.read_bytes().decode("utf-8")
        assert rc == 0, f"{self.log.stem} exited with {rc}:\n{out[-4000:]}"
        return out


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    """Start every script whose test is selected in this session, all at once (each test names
    its script with the parameter ``name``)."""
    names = {item.callspec.params["name"] for item in request.session.items
             if getattr(item, "module", None) is request.module and "name" in getattr(getattr(item, "callspec", None), "params", {})}
    tmp = tmp_path_factory.mktemp("examples")
    started = {name: Run(name, tmp) for name in SCRIPTS if name in names}
    yield started
    for run in started.values():  # a failed test may leave its script running
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


def assert_png(path: Path):
    assert path.is_file(), f"{path} was not written"
    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"


@pytest.mark.parametrize("name", TRAINERS)
def test_training_script(runs, name):
    run = runs[name]
    out = run.result()
    train = re.findall(rf"step\s+(\d+)\s+train −ELBO\s+{NUMBER} nats/image\s+{NUMBER} bits/dim", out)
    assert [int(s) for s, _, _ in train] == [3, 6], out
    test = re.search(rf"test −ELBO\s+{NUMBER} nats/image\s+{NUMBER} bits/dim", out)
    assert test, out
    for nats, bits in [(float(a), float(b)) for _, a, b in train] + [tuple(map(float, test.groups()))]:
        assert math.isfinite(nats) and nats > 0, out  # −ELBO ≥ −log p(x) > 0 for discrete data
        assert bits == pytest.approx(nats / (run.dim * math.log(2)), abs=1e-3), out
    assert f"wrote {run.png}" in out
    assert_png(run.png)


@pytest.mark.parametrize("name", ["hole_problem"])
def test_hole_problem(runs, name):
    run = runs[name]
    out = run.result()
    holes = {m: (float(h), float(kl)) for m, h, kl in
             re.findall(rf"(VAE|VDM)\s+hole mass {NUMBER}\s+KL\(p‖q\) {NUMBER} nats", out)}
    assert set(holes) == {"VAE", "VDM"}, out
    for hole, kl in holes.values():
        assert math.isfinite(hole) and 0.0 <= hole <= 1.0, out
        assert math.isfinite(kl) and kl >= 0.0, out
    # q(z_1 | x) = N(α_1 x, σ_1² I) with α_1 ≈ 0.08, σ_1 ≈ 1: no holes even after 20 steps
    hole, kl = holes["VDM"]
    assert hole < 0.02 and kl < 0.05, out
    assert_png(run.png)


@pytest.mark.parametrize("name", ["user_hierarchy"])
def test_user_hierarchy(runs, name):
    out = runs[name].result()
    last = re.search(rf"step\s+5\s+−ELBO\s+{NUMBER} nats/image", out)
    assert last and math.isfinite(float(last.group(1))), out

