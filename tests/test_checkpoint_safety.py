"""Checkpoints that cannot run code, and faults that lose nothing (issue 23): a malicious pickle given
to every loading path is refused and its payload never runs; SIGTERM mid-run saves a checkpoint and
exits with a distinct status, and --resume reproduces the uninterrupted losses exactly (one process
and two torchrun processes); a full disk at checkpoint time keeps the previous checkpoint and names it."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import hlvm.optim
from hlvm.cli import main
from hlvm.training import (PREEMPTED_EXIT, CheckpointWriteError, TrainConfig, Trainer, convert_legacy_checkpoint,
                           load_checkpoint, load_run_checkpoint, save_checkpoint)
from hlvm.training.checkpoints import rng_state, set_rng_state

from conftest import ROOT

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


class _Payload:
    """Unpickling this calls os.system(command): what a crafted .pt file does."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _malicious(path, marker):
    """A file shaped like an hlvm checkpoint whose pickle runs ``touch marker``."""
    torch.save({"version": 2, "config": {"model": "vae"}, "model": _Payload(f"touch {marker}"), "optim": {},
                "rng": {}, "gen": torch.zeros(1), "step": 1}, path)
    return path


def _small_run(tmp_path, name="run", steps=4):
    assert main(["train", "vae", "--data", "digits", "--steps", str(steps), "--batch-size", "16", "--set", "latent_dim=2",
                 "hidden=8", "--out", str(tmp_path / name), "--threads", "1", "--eval-examples", "16", "--no-progress"]) == 0
    return tmp_path / name


def test_a_malicious_pickle_is_refused_by_every_loader_and_never_runs(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    bad = _malicious(tmp_path / "bad.pt", marker)
    with pytest.raises(ValueError, match="refused: rebuilding it would call posix.system"):
        load_checkpoint(str(bad))
    with pytest.raises(ValueError, match="refused"):
        load_run_checkpoint(str(bad))
    with pytest.raises(ValueError, match="refused"):
        hlvm.optim.Adam({"lr": 1e-3}).load(str(bad))
    assert main(["sample", "vae", "--checkpoint", str(bad), "--n", "2", "--out", str(tmp_path / "s.png")]) == 2
    run = _small_run(tmp_path)
    _malicious(run / "checkpoint.pt", marker)  # a run folder whose checkpoint was swapped
    assert main(["evaluate", str(run)]) == 2
    assert main(["train", "vae", "--data", "digits", "--steps", "8", "--out", str(run), "--resume", "--threads", "1"]) == 2
    assert capsys.readouterr().err.count("refused") >= 3
    assert not marker.exists()  # the payload never ran


def test_current_checkpoints_round_trip_without_unpickling(tmp_path):
    run = _small_run(tmp_path)
    ck = torch.load(run / "checkpoint.pt", weights_only=True)  # tensors and plain values only
    assert ck["version"] == 2 and ck["step"] == 4 and isinstance(ck["rng"]["numpy"]["key"], torch.Tensor)
    np.random.seed(3)
    state = rng_state()
    expected = np.random.rand(4)
    set_rng_state(state)
    assert np.array_equal(np.random.rand(4), expected)  # NumPy's state survives its plain form


def test_an_older_checkpoint_gets_a_clear_message_and_an_explicit_converter(tmp_path):
    run = _small_run(tmp_path)
    ck = load_run_checkpoint(str(run))
    ck["version"] = 1
    ck["rng"]["numpy"] = np.random.get_state()  # format 1: NumPy's tuple, pickled
    old = tmp_path / "old.pt"
    torch.save(ck, old)
    with pytest.raises(ValueError, match="older hlvm format .*convert_legacy_checkpoint"):
        load_checkpoint(str(old))
    with pytest.raises(ValueError, match="unpickles the file, which can run code"):
        convert_legacy_checkpoint(str(old))
    convert_legacy_checkpoint(str(old), trust=True)
    assert load_run_checkpoint(str(old))["version"] == 2


def test_a_truncated_checkpoint_is_a_clear_error(tmp_path):
    run = _small_run(tmp_path)
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="unreadable .*truncated"):
        load_run_checkpoint(str(run))


def test_a_full_disk_at_checkpoint_time_keeps_the_previous_checkpoint_and_names_it(tmp_path, monkeypatch):
    from hlvm.data import digits
    from hlvm.training import checkpoints

    cfg = TrainConfig(model="vae", model_kwargs={"latent_dim": 2, "hidden": 8}, data="digits", steps=6, batch_size=16,
                      checkpoint_every=2, eval_every=100, eval_examples=16, out=str(tmp_path / "run"), progress=False)
    trainer = Trainer(cfg, digits())
    real_save, calls = torch.save, []

    def save(obj, f):
        calls.append(1)
        if len(calls) == 2:  # the second checkpoint: the disk is full half-way through the file
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f)

    monkeypatch.setattr(checkpoints.torch, "save", save)
    with pytest.raises(CheckpointWriteError, match=r"No space left on device.*the previous checkpoint .*checkpoint.pt is intact"):
        trainer.fit()
    assert load_run_checkpoint(cfg.out)["step"] == 2  # the step-2 checkpoint, loadable
    assert [p for p in os.listdir(cfg.out) if ".tmp-" in p] == []  # no half-written file left behind


# ------------------------------------------------------------------ preemption
def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


_COMMON = ["train", "vae", "--data", "digits", "--steps", "1500", "--batch-size", "16", "--set", "latent_dim=2",
           "hidden=8", "--eval-every", "100000", "--eval-examples", "16", "--no-progress", "--threads", "1",
           "--checkpoint-every", "100000"]


def _terminate_midway(cmd, run, sig=signal.SIGTERM):
    """Start ``cmd``, send ``sig`` once its metrics file shows 50 steps, and wait for it to end."""
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        metrics = run / "metrics.jsonl"
        if metrics.exists() and sum(1 for _ in metrics.open()) >= 50:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    os.killpg(proc.pid, sig) if sig == signal.SIGTERM and cmd[0].endswith("torchrun") else proc.send_signal(sig)
    _, err = proc.communicate(timeout=240)
    return proc.returncode, err


def _losses(run):
    return json.loads((run / "history.json").read_text())["losses"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_run_saves_a_checkpoint_exits_75_and_resume_reproduces_the_losses(tmp_path, sig):
    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run([sys.executable, "-m", "hlvm", *_COMMON, "--out", str(full)], env=_env(), cwd=ROOT, check=True,
                   capture_output=True)
    code, err = _terminate_midway([sys.executable, "-m", "hlvm", *_COMMON, "--out", str(cut)], cut, sig)
    assert code == PREEMPTED_EXIT, err[-2000:]
    step = load_run_checkpoint(str(cut))["step"]
    assert 0 < step < 1500 and f"stopped by {signal.Signals(sig).name} after step {step}: checkpoint saved at" in err
    subprocess.run([sys.executable, "-m", "hlvm", *_COMMON, "--out", str(cut), "--resume"], env=_env(), cwd=ROOT,
                   check=True, capture_output=True)
    assert _losses(cut) == _losses(full)  # exactly: same floats, step by step


def test_sigterm_under_torchrun_saves_one_agreed_step_and_resumes_exactly(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    launch = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "hlvm.cli"]
    common = [*_COMMON[:_COMMON.index("--steps") + 1], "600", *_COMMON[_COMMON.index("--steps") + 2:]]
    full, cut = tmp_path / "full", tmp_path / "cut"
    done = subprocess.run([*launch, *common, "--out", str(full)], env=_env(), cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    code, err = _terminate_midway([*launch, *common, "--out", str(cut)], cut)
    step = load_run_checkpoint(str(cut))["step"]
    assert 0 < step < 600 and f"after step {step}: checkpoint saved at" in err, err[-3000:]
    assert code != 0
    again = subprocess.run([*launch, *common, "--out", str(cut), "--resume"], env=_env(), cwd=ROOT, capture_output=True,
                           text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _losses(cut) == _losses(full)


def test_a_damaged_metrics_file_is_a_clear_error_on_resume(tmp_path, capsys):
    run = _small_run(tmp_path)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][: len(lines[1]) // 2]  # a record cut in the middle of the file, not a torn tail
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["train", "vae", "--data", "digits", "--steps", "8", "--out", str(run), "--resume", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "metrics file" in err and "corrupt at record 2" in err, err
