"""Training: exact resume, atomic checkpoints, NaN handling, data parallelism, EMA."""

import json
import dataclasses
import math
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from hlvm.training import TrainConfig, Trainer, TrainingDiverged, load_checkpoint, save_checkpoint

from conftest import small_vae_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _cfg(tmp, **kw):
    return small_vae_config(tmp, batch_size=64, eval_examples=100, hidden=64, **{"eval_every": 0, **kw})


@pytest.mark.parametrize("model,kw", [("vae", {}), ("vdm", {"model_kwargs": {"width": 64, "depth": 1}}),
                                      ("hvae-td", {"model_kwargs": {"hidden": 32, "latent_dim": 4}})])
def test_resume_is_exact(tmp_path, digits, model, kw):
    """Losses after resuming equal those of an uninterrupted run, bit for bit (CPU)."""
    full = Trainer(_cfg(tmp_path / "a", model=model, steps=30, eval_every=10, **kw), digits)
    full.fit()
    part = Trainer(_cfg(tmp_path / "b", model=model, steps=13, eval_every=10, checkpoint_every=13, **kw), digits)
    part.fit()
    resumed = Trainer(_cfg(tmp_path / "b", model=model, steps=30, eval_every=10, resume=True, **kw), digits)
    assert resumed.step == 13
    resumed.fit()
    assert resumed.losses == full.losses
    # the interrupted run also evaluated at its last step (13); at the common steps all agree
    full_hist = {h["step"]: h["test_elbo"] for h in full.history}
    common = {h["step"]: h["test_elbo"] for h in resumed.history if h["step"] in full_hist}
    assert common == full_hist
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_checkpoint_holds_everything(tmp_path, digits):
    t = Trainer(_cfg(tmp_path, model="vdm", steps=4, ema=0.9, model_kwargs={"width": 32, "depth": 1, "schedule": "learned-linear"}), digits)
    t.fit()
    ck = load_checkpoint(str(tmp_path))
    assert {"model", "optim", "rng", "gen", "perm", "step", "ema", "config", "estimator"} <= set(ck)
    assert ck["step"] == 4
    assert any("schedule" in k for k in ck["model"])  # the learned schedule's state
    assert ck["optim"], "optimizer state saved"
    # EMA differs from the live weights after a few steps, and moved from init
    diff = max((ck["ema"][k].float() - ck["model"][k].float()).abs().max().item() for k in ck["model"] if ck["model"][k].dtype.is_floating_point)
    assert diff > 0


_BOMB = textwrap.dedent("""
    import os, signal, sys, torch
    sys.path.insert(0, {root!r})
    from hlvm.training import save_checkpoint

    class Bomb:
        def __reduce__(self):
            os.kill(os.getpid(), signal.SIGKILL)  # killed in the middle of writing

    save_checkpoint({path!r}, {{"big": torch.zeros(2_000_000), "bomb": Bomb()}})
""")


def test_write_killed_midway_keeps_last_checkpoint(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    save_checkpoint(path, {"step": 7, "w": torch.arange(5.0)})
    proc = subprocess.run([sys.executable, "-c", _BOMB.format(root=ROOT, path=path)], env=_env())
    assert proc.returncode == -9  # really killed
    ck = load_checkpoint(path)
    assert ck["step"] == 7 and torch.equal(ck["w"], torch.arange(5.0))
    # a truncated file is reported clearly, not with a traceback from pickle
    bad = tmp_path / "bad.pt"
    bad.write_bytes(open(path, "rb").read()[:50])
    with pytest.raises(ValueError, match="unreadable"):
        load_checkpoint(str(bad))
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(str(tmp_path / "missing.pt"))


def test_nan_stops_training_and_keeps_last_good_checkpoint(tmp_path, digits, monkeypatch):
    t = Trainer(_cfg(tmp_path, steps=10, checkpoint_every=2, eval_every=100), digits)
    real_step = t.svi.step

    def step(x):
        record = real_step(x)
        return dataclasses.replace(record, loss=float("nan")) if t.step >= 5 else record

    monkeypatch.setattr(t.svi, "step", step)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 6; .*last good checkpoint is kept"):
        t.fit()
    ck = load_checkpoint(str(tmp_path))
    assert ck["step"] == 4
    assert all(math.isfinite(v) for v in ck["losses"])


def test_data_parallel_matches_single_process(tmp_path):
    """torchrun with 2 CPU processes (gloo): parameters in sync across ranks, and the losses equal
    a single-process run on the same global batch (grad_shards=2 gives the same random streams)."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    common = ["train", "vae", "--data", "digits", "--steps", "4", "--batch-size", "32", "--no-progress",
              "--eval-examples", "32", "--eval-every", "100"]
    ddp = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "hlvm.cli", *common,
                          "--out", str(tmp_path / "ddp")], env=_env(), capture_output=True, text=True, cwd=ROOT)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    single = subprocess.run([sys.executable, "-m", "hlvm.cli", *common, "--grad-shards", "2", "--out", str(tmp_path / "one")],
                            env=_env(), capture_output=True, text=True, cwd=ROOT)
    assert single.returncode == 0, single.stderr[-2000:]
    a, b = load_checkpoint(str(tmp_path / "ddp")), load_checkpoint(str(tmp_path / "one"))
    assert a["losses"] == pytest.approx(b["losses"], rel=1e-6)
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6)


def test_bad_config():
    with pytest.raises(ValueError, match="--epochs must be an integer >= 1"):
        TrainConfig(epochs=-1).validate()
    with pytest.raises(ValueError, match="--amp"):
        TrainConfig(amp=True).validate()
    with pytest.raises(ValueError, match="--lr"):
        TrainConfig(lr=0).validate()
