"""``kill -9`` in the middle of ``hlvm train``, then ``--resume`` (no other option repeated):
the losses equal those of an uninterrupted run, bit for bit (CPU)."""

import json
import os
import signal
import subprocess
import sys
import time

import torch

from conftest import ROOT as CONFTEST_ROOT

ROOT = str(CONFTEST_ROOT)
RUN = ["train", "vae", "--data", "digits", "--steps", "40", "--batch-size", "32", "--eval-examples", "32",
       "--eval-every", "100", "--checkpoint-every", "1", "--no-progress"]


def _cmd(*args):
    return [sys.executable, "-m", "hlvm.cli", *map(str, args)]


def _env():
    return dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")


def _step(path) -> int:
    try:
        return torch.load(path, weights_only=True)["step"]
    except Exception:  # not written yet
        return 0


def test_kill_9_then_resume_reproduces_the_losses(tmp_path):
    full = subprocess.run(_cmd(*RUN, "--out", tmp_path / "full"), env=_env(), cwd=ROOT, capture_output=True, text=True)
    assert full.returncode == 0, full.stderr
    killed = subprocess.Popen(_cmd(*RUN, "--out", tmp_path / "killed"), env=_env(), cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 120
    while _step(ckpt) < 5 and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    step = _step(ckpt)
    assert killed.returncode == -9 and 5 <= step < 40, (killed.returncode, step)
    r = subprocess.run(_cmd("train", "vae", "--out", tmp_path / "killed", "--resume", "--no-progress"), env=_env(),
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not list((tmp_path / "killed").glob(".checkpoint.pt.tmp-*"))
    losses = [json.load(open(tmp_path / d / "history.json"))["losses"] for d in ("full", "killed")]
    assert len(losses[0]) == 40 and losses[1] == losses[0]
