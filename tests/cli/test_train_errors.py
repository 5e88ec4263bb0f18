"""``hlvm train`` and ``hlvm compare`` refuse bad options with exit code 2 and one line naming the
option and its range — before any data is read — and never with a traceback; an existing run is
not overwritten by accident; a discrete-T VDM goes through ``compare`` with the default IWAE."""

import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import ROOT as CONFTEST_ROOT
from hlvm.cli import main

ROOT = str(CONFTEST_ROOT)
TINY = ["--data", "digits", "--batch-size", "32", "--eval-examples", "32", "--no-progress"]


def hlvm(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "hlvm.cli", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _one_line(stderr: str) -> str:
    lines = [l for l in stderr.splitlines() if l.strip() and not l.startswith("usage:") and not l.startswith("  ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def _main(argv, capsys):
    """Run the CLI in this process; (exit code, stderr)."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    return rc, capsys.readouterr().err


TRAIN_ERRORS = [
    (["--steps", "0"], "--steps must be an integer >= 1, got 0"),
    (["--steps", "-3"], "--steps must be an integer >= 1"),
    (["--epochs", "0"], "--epochs must be an integer >= 1"),
    (["--batch-size", "-1"], "--batch-size must be an integer >= 1"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
    (["--lr=-1e-3"], "--lr must be a finite number > 0"),
    (["--T", "0"], "--T must be an integer in [1, 100,000]"),
    (["--T", "100000000"], "--T must be an integer in [1, 100,000]"),
    (["--layers", "0"], "--layers must be an integer >= 1"),
    (["--ema", "1"], "--ema must be a number in [0, 1)"),
    (["--eval-examples", "0"], "--eval-examples must be an integer >= 1"),
    (["--eval-examples", "-5"], "--eval-examples must be an integer >= 1"),
    (["--free-bits", "-0.5"], "--free-bits must be a finite number in [0, 1e+06]"),
    (["--free-bits", "1e308"], "--free-bits must be a finite number in [0, 1e+06]"),
    (["--grad-clip", "0"], "--grad-clip must be a finite number > 0"),
    (["--skip-norm", "inf"], "--skip-norm must be a finite number > 0"),
    (["--kl-warmup", "-2"], "--kl-warmup must be an integer >= 0"),
    (["--seed", "-1"], "--seed must be an integer in [0, 4294967295]"),
    (["--eval-every", "-1"], "--eval-every must be an integer >= 0"),
    (["--checkpoint-every", "-1"], "--checkpoint-every must be an integer >= 0"),
    (["--grad-shards", "0"], "--grad-shards must be an integer >= 1"),
    (["--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
    (["--resume", "--overwrite"], "--resume and --overwrite exclude each other"),
]


@pytest.mark.parametrize("args,message", TRAIN_ERRORS)
def test_train_option_out_of_range(args, message, capsys, tmp_path):
    rc, err = _main(["train", "vae", "--data", "mnist", "--out", tmp_path / "run", *args], capsys)
    assert rc == 2
    line = _one_line(err)
    assert line.startswith("hlvm train: error: ") and message in line, line
    assert not (tmp_path / "run").exists()  # refused before the run folder (and the data) were touched


COMPARE_ERRORS = [
    (["--K", "25"], "--K must be 0 (no IWAE bound) or an integer >= 30"),
    (["--K", "-1"], "--K must be 0 (no IWAE bound) or an integer >= 30"),
    (["--iwae-examples", "-1"], "--iwae-examples must be an integer >= 0"),
    (["--pfode-examples", "-1"], "--pfode-examples must be an integer >= 0"),
    (["--pfode-samples", "0"], "--pfode-samples must be an integer >= 1"),
    (["--eval-examples", "0"], "--eval-examples must be an integer >= 1"),
    (["--steps", "0"], "--steps must be an integer >= 1"),
    (["--T", "1000000"], "--T must be an integer in [1, 100,000]"),
    (["--models", "vdm", "--T", "100000"], "--K 50 × --iwae-examples 100 × --T 100000 = 5.0e+08 chain steps for the IWAE"),
    (["--models", "vae,vae"], "--models names vae more than once"),
    (["--models", ","], "--models is empty"),
    (["--models", "vae,bogus"], "unknown model 'bogus'"),
]


@pytest.mark.parametrize("args,message", COMPARE_ERRORS)
def test_compare_option_out_of_range(args, message, capsys, tmp_path):
    rc, err = _main(["compare", "--data", "mnist", "--out", tmp_path / "cmp", *args], capsys)
    assert rc == 2
    line = _one_line(err)
    assert line.startswith("hlvm compare: error: ") and message in line, line
    assert not (tmp_path / "cmp").exists()


@pytest.mark.parametrize("args,message", [
    (["train", "vae", "--steps", "0"], "hlvm train: error: --steps must be an integer >= 1, got 0"),
    (["train", "vdm", "--T", "100000000"], "hlvm train: error: --T must be an integer in [1, 100,000]"),
    (["train", "vae", "--eval-examples", "-5"], "hlvm train: error: --eval-examples must be an integer >= 1, got -5"),
    (["compare", "--K", "25"], "hlvm compare: error: --K must be 0 (no IWAE bound) or an integer >= 30"),
    (["compare", "--models", "vdm", "--T", "100000"], "hlvm compare: error: --K 50 × --iwae-examples 100 × --T 100000"),
])
def test_as_a_subprocess(args, message, tmp_path):
    """The same errors from ``python -m hlvm.cli``: exit 2, one line, no traceback, nothing written."""
    r = hlvm(*args, "--data", "mnist", "--out", tmp_path / "out")
    assert r.returncode == 2 and _one_line(r.stderr).startswith(message), r.stderr
    assert not (tmp_path / "out").exists()


_INVALID = {
    "--steps": st.integers(max_value=0), "--epochs": st.integers(max_value=0), "--batch-size": st.integers(max_value=0),
    "--lr": st.sampled_from(["0", "-1", "nan", "inf", "-inf", "abc"]), "--T": st.integers(min_value=100_001) | st.integers(max_value=0),
    "--layers": st.integers(max_value=0), "--ema": st.floats(min_value=1.0) | st.floats(max_value=-1e-9),
    "--eval-examples": st.integers(max_value=0), "--free-bits": st.floats(max_value=-1e-9) | st.just(float("nan")),
    "--grad-clip": st.floats(max_value=0.0), "--skip-norm": st.floats(max_value=0.0), "--kl-warmup": st.integers(max_value=-1),
    "--seed": st.integers(max_value=-1) | st.integers(min_value=2**32), "--grad-shards": st.integers(max_value=0),
    "--eval-every": st.integers(max_value=-1), "--checkpoint-every": st.integers(max_value=-1),
    "--device": st.text(min_size=1).filter(lambda s: not s.startswith(("-", "cuda")) and s != "cpu"),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(sorted(_INVALID)), data=st.data(), command=st.sampled_from(["train", "compare"]))
def test_random_invalid_values_never_give_a_traceback(option, data, command, capsys, tmp_path_factory):
    value = data.draw(_INVALID[option])
    out = tmp_path_factory.mktemp("never") / "out"
    head = ["train", "vae"] if command == "train" else ["compare", "--models", "vae"]
    if option == "--grad-shards" and command == "compare":
        return  # a train-only option
    rc, err = _main([*head, "--data", "mnist", "--out", out, f"{option}={value}"], capsys)
    assert rc == 2, (option, value, err)
    line = _one_line(err)
    assert option in line or "invalid" in line, (option, value, line)
    assert not out.exists()


# ------------------------------------------------------------------------------ end to end
def test_existing_run_is_kept_unless_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    r = hlvm("train", "vae", *TINY, "--steps", "2", "--out", out)
    assert r.returncode == 0, r.stderr
    assert f"checkpoint {out / 'checkpoint.pt'}" in r.stdout
    before = (out / "checkpoint.pt").read_bytes()
    r = hlvm("train", "vae", *TINY, "--steps", "2", "--out", out)
    assert r.returncode == 2
    assert "--resume to continue it or --overwrite to replace it" in _one_line(r.stderr)
    assert (out / "checkpoint.pt").read_bytes() == before
    r = hlvm("train", "vae", *TINY, "--steps", "3", "--lr", "0.01", "--out", out, "--resume")
    assert r.returncode == 2 and "lr 0.001 → 0.01" in _one_line(r.stderr)
    # options not given take the run's own values (digits, batch 32, ...): only the more steps are a change
    r = hlvm("train", "vae", "--steps", "3", "--no-progress", "--out", out, "--resume")
    assert r.returncode == 0, r.stderr
    assert "changed settings: steps 2 → 3\n" in r.stdout and "digits" in r.stdout
    assert len(json.load(open(out / "history.json"))["losses"]) == 3
    r = hlvm("train", "vae", *TINY, "--steps", "2", "--out", out, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert len(json.load(open(out / "history.json"))["losses"]) == 2


def test_out_naming_a_file_is_refused_before_training(tmp_path):
    f = tmp_path / "afile"
    f.write_text("keep me")
    r = hlvm("train", "vae", *TINY, "--steps", "2", "--out", f)
    assert r.returncode == 2 and "is a file, not a folder" in _one_line(r.stderr)
    assert f.read_text() == "keep me"


def test_foreign_checkpoint_is_a_clear_error(tmp_path):
    import torch

    (tmp_path / "run").mkdir()
    torch.save({"state_dict": {}}, tmp_path / "run" / "checkpoint.pt")
    r = hlvm("train", "vae", *TINY, "--steps", "2", "--out", tmp_path / "run", "--resume")
    assert r.returncode == 2 and "is not an hlvm training checkpoint" in _one_line(r.stderr)


def test_compare_discrete_T_vdm_with_default_iwae(tmp_path):
    """``compare --models vdm --T 10`` (default K = 50): the row's IWAE bound and k̂ are its own
    10-step chain's, and sec/epoch is measured after warm-up."""
    out = tmp_path / "cmp"
    r = hlvm("compare", "--models", "vdm", "--T", "10", *TINY, "--steps", "5", "--iwae-examples", "4",
             "--no-render", "--out", out)
    assert r.returncode == 0, r.stderr
    row = json.load(open(out / "report.json"))["rows"][0]
    assert row["model"] == "vdm" and row["iwae"] is not None and row["iwae"] < 0 and row["elbo"] < 0
    assert row["khat_max"] is not None and row["khat_max"] == row["khat_max"]  # finite k̂ at K = 50, not NaN
    assert row["sec_per_epoch"] > 0
    assert "after the first 3 steps of warm-up" in open(out / "report.md").read()
