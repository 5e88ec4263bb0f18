"""Progress output fit for log files, the metrics file of a run (and its resume), TensorBoard."""

import io
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from hlvm.training.monitor import auto_log_every, line_mode, read_metrics
from hlvm.training import WARMUP_STEPS, TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

TINY = dict(model="vae", data="digits", batch_size=32, eval_examples=32, progress=False)


def _hlvm(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "hlvm.cli", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


class _Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_line_mode_when_not_a_terminal_or_asked():
    assert not line_mode(0, _Stream(True))
    assert line_mode(0, _Stream(False))
    assert line_mode(5, _Stream(True))
    assert auto_log_every(40) == 2 and auto_log_every(3) == 1 and auto_log_every(1000) == 50


@pytest.mark.parametrize("extra, progress_lines", [([], 20), (["--log-every", "10"], 4)])
def test_piped_progress_is_a_bounded_number_of_lines(tmp_path, extra, progress_lines):
    r = _hlvm("train", "vae", "--data", "digits", "--steps", 40, "--batch-size", 16, "--eval-examples", 16,
              "--eval-every", 20, "--out", tmp_path / "run", *extra)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "vae on digits: step " in ln]
    assert len(lines) == progress_lines
    assert lines[-1].startswith("vae on digits: step 40/40")
    assert len(r.stderr.splitlines()) == progress_lines  # nothing else on stderr
    assert r.stdout.count("test ELBO") == 3  # evaluations at 20 and 40, and the closing line


def _run(out, steps, resume=False, **kw):
    t = Trainer(TrainConfig(**TINY, steps=steps, out=str(out), resume=resume, eval_every=2, **kw))
    t.fit()
    return t


def _train_steps(records):
    return [r["step"] for r in records if r["kind"] == "train"]


def test_metrics_file_records_every_step_and_evaluation(tmp_path):
    t = _run(tmp_path, 4, kl_warmup=4)
    records = read_metrics(str(tmp_path))
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert [r["step"] for r in evals] == [2, 4]
    for r in train:
        assert {"loss", "bpd", "lr", "grad_norm", "beta", "step_seconds", "seconds"} <= set(r)
        assert all(math.isfinite(r[k]) for k in r if k != "kind")
        assert r["lr"] == 1e-3 and r["grad_norm"] > 0
        assert r["bpd"] == pytest.approx(r["loss"] / (64 * math.log(2)))
    assert [r["beta"] for r in train] == [0.0, 0.25, 0.5, 0.75]
    assert [r["loss"] for r in train] == pytest.approx(t.losses)
    for r, h in zip(evals, t.history):
        assert r["elbo"] == h["test_elbo"] and r["bpd"] == h["test_bpd"]
        # the VAE's ELBO is −(reconstruction + KL); the terms come from their own draw of z
        assert r["elbo"] == pytest.approx(-(r["reconstruction"] + r["kl_total"]), rel=0.02)
        assert r["kl/z"] == r["kl_total"] > 0


def test_metrics_survive_resume_without_duplicate_steps(tmp_path):
    run, saved = tmp_path / "run", tmp_path / "at3.pt"
    _run(run, 3)
    shutil.copy(run / "checkpoint.pt", saved)
    _run(run, 6, resume=True)
    first = read_metrics(str(run))
    assert _train_steps(first) == [1, 2, 3, 4, 5, 6]
    # a run killed after step 6's records but before its checkpoint, mid-way through a record:
    # resume from step 3 again
    shutil.copy(saved, run / "checkpoint.pt")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "st')
    _run(run, 6, resume=True)
    again = read_metrics(str(run))
    assert _train_steps(again) == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in again if r["kind"] == "eval"] == [2, 3, 4, 6]  # 3: the first run's last step
    loss = {r["step"]: r["loss"] for r in first if r["kind"] == "train"}
    assert {r["step"]: r["loss"] for r in again if r["kind"] == "train"} == loss  # exact resume


def test_a_resumed_runs_step_seconds_cover_every_segment(tmp_path):
    """The results page's training time: the first segment's steps count too (a resumed process's own
    timer sees only the last)."""
    from hlvm.training.monitor import run_step_seconds

    run = tmp_path / "run"
    _run(run, 3)
    first = run_step_seconds(str(run))
    _run(run, 6, resume=True)
    records = [r for r in read_metrics(str(run)) if r["kind"] == "train"]
    assert len(records) == 6 and first > 0
    assert run_step_seconds(str(run)) == pytest.approx(sum(r["step_seconds"] for r in records))
    assert run_step_seconds(str(run)) > first and run_step_seconds(str(tmp_path / "none")) == 0.0


def test_new_run_starts_a_new_metrics_file(tmp_path):
    _run(tmp_path, 3)
    _run(tmp_path, 2, overwrite=True)  # a new run replacing the old one in the same folder
    assert _train_steps(read_metrics(str(tmp_path))) == [1, 2]


def test_tensorboard_events_hold_losses_terms_and_samples(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _run(tmp_path, 4, tensorboard=True)
    events = [f for f in os.listdir(tmp_path) if f.startswith("events.out.tfevents.")]
    assert len(events) == 1 and os.path.getsize(tmp_path / events[0]) > 0
    acc = EventAccumulator(str(tmp_path)).Reload()
    tags = acc.Tags()
    assert {"train/loss", "train/grad_norm", "train/lr", "eval/elbo", "eval/reconstruction", "eval/kl_total"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in acc.Scalars("eval/elbo")] == [2, 4]
    images = acc.Images("samples")
    assert [e.step for e in images] == [2, 4] and images[0].width > 8 * 4  # a 4×4 grid of 8×8 digits


def test_without_tensorboard_no_event_file(tmp_path):
    _run(tmp_path, 2)
    assert not [f for f in os.listdir(tmp_path) if f.startswith("events.")]
    assert json.loads(open(tmp_path / "metrics.jsonl").readline())["step"] == 1


def test_throughput_excludes_the_warm_up_step(tmp_path):
    t = Trainer(TrainConfig(**TINY, steps=4, out=str(tmp_path)))
    result = t.fit()
    times = [r["step_seconds"] for r in read_metrics(str(tmp_path)) if r["kind"] == "train"]
    assert len(times) == 4
    w = WARMUP_STEPS
    assert result["seconds_per_epoch"] == pytest.approx(sum(times[w:]) / (4 - w) * t.steps_per_epoch)
