"""Every CLI command end to end with tiny budgets, as subprocesses; bad input exits 2 with one line."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT as CONFTEST_ROOT

ROOT = str(CONFTEST_ROOT)


def hlvm(*args, cwd=None, timeout=600):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "hlvm.cli", *map(str, args)], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "vdm"
    r = hlvm("train", "vdm", "--data", "digits", "--steps", "6", "--batch-size", "32", "--eval-examples", "32",
             "--eval-every", "3", "--no-progress", "--out", out)
    assert r.returncode == 0, r.stderr
    return out, r


def test_train_writes_checkpoint_and_history(trained):
    out, r = trained
    assert "test ELBO" in r.stdout and (out / "checkpoint.pt").exists()
    hist = json.load(open(out / "history.json"))
    assert [h["step"] for h in hist["history"]] == [3, 6]
    assert len(hist["losses"]) == 6


def test_train_resume_continues(trained, tmp_path):
    out, _ = trained
    r = hlvm("train", "vdm", "--data", "digits", "--steps", "8", "--batch-size", "32", "--eval-examples", "32",
             "--eval-every", "4", "--no-progress", "--out", out, "--resume")
    assert r.returncode == 0, r.stderr
    assert len(json.load(open(out / "history.json"))["losses"]) == 8


@pytest.mark.parametrize("extra", [[], ["--steps", "5"], ["--langevin", "--steps", "5"]])
def test_sample_writes_png(trained, tmp_path, extra):
    out, _ = trained
    png = tmp_path / "s.png"
    r = hlvm("sample", "vdm", "--checkpoint", out, "--n", "4", "--out", png, *extra)
    assert r.returncode == 0, r.stderr
    assert _is_png(png)


def test_compare_writes_report(tmp_path):
    out = tmp_path / "cmp"
    r = hlvm("compare", "--models", "vae,hvae-td,vdm", "--data", "digits", "--steps", "4", "--batch-size", "32",
             "--K", "30", "--iwae-examples", "8", "--eval-examples", "64", "--pfode-examples", "4", "--no-progress",
             "--out", out)
    assert r.returncode == 0, r.stderr
    rep = json.load(open(out / "report.json"))
    assert [row["model"] for row in rep["rows"]] == ["vae", "hvae-td", "vdm"]
    for row in rep["rows"]:
        # same units: bits/dim = −ELBO / (D ln 2) with D = 64 for the 8×8 digits
        assert row["bpd"] == pytest.approx(-row["elbo"] / (64 * 0.6931471805599453), rel=1e-12)  # up to rounding
        assert row["params"] > 0 and row["sec_per_epoch"] > 0 and row["elbo_se"] > 0
    vae, _, vdm = rep["rows"]
    # one model per row: the continuous-time VDM has no IWAE entry; its PF-ODE bound takes the place
    assert vae["iwae"] is not None and vae["pfode"] is None
    assert vdm["iwae"] is None and vdm["pfode"] < 0 and vdm["pfode_nfe"] > 0 and vdm["pfode_s_per_image"] > 0
    md = open(out / "report.md").read()
    assert "| vae |" in md and "| vdm |" in md
    # every pair of rows on the same images: the ELBO, and each row's tightest bound (IWAE / PF-ODE)
    pairs = {(e["bound"], frozenset((e["a"], e["b"]))): e for e in rep["paired"]}
    assert {(b, frozenset(p)) for b, p in pairs} == {(b, frozenset(p)) for b in ("elbo", "tightest")
                                                     for p in [("vae", "hvae-td"), ("vae", "vdm"), ("hvae-td", "vdm")]}
    for (bound, _), e in pairs.items():
        assert e["delta"] >= 0 and e["se"] > 0 and e["n"] == {"elbo": 64, "tightest": 4 if "vdm" in (e["a"], e["b"]) else 8}[bound]
    elbo = {r["model"]: r["elbo"] for r in rep["rows"]}
    e = pairs[("elbo", frozenset(("vae", "vdm")))]
    assert e["delta"] == pytest.approx(abs(elbo["vae"] - elbo["vdm"]), rel=1e-6)  # Δ of the means = mean of the Δs
    assert "## Paired differences" in md
    for f in ["elbo_curves.png", "breakdown.png", "samples_vae.png", "reconstructions_vdm.png"]:
        assert _is_png(out / f), f


def test_compare_and_sample_user_hierarchies(tmp_path):
    """Hierarchies with nothing but model/guide/data_shape go through compare (ELBO, IWAE, samples,
    diagrams in the report) and sample from their checkpoint — the README's own example included.
    ``--T 8`` reaches only the model that has a T: its latent diffusion is then a discrete 8-step
    chain, whose IWAE bound is of the model itself (a continuous-time chain gets none: one model per row)."""
    latent = os.path.join(ROOT, "examples", "user_hierarchy.py") + ":LatentDiffusionVAE"
    two_level = os.path.join(ROOT, "tests", "programs", "contract_models.py") + ":TwoLevelGaussianHVAE"
    out = tmp_path / "cmp"
    r = hlvm("compare", "--models", f"vae,{latent},{two_level}", "--data", "digits", "--steps", "20", "--batch-size",
             "32", "--K", "30", "--iwae-examples", "8", "--eval-examples", "64", "--T", "8", "--no-progress", "--out", out)
    assert r.returncode == 0, r.stderr
    rep = json.load(open(out / "report.json"))
    assert [row["model"] for row in rep["rows"]] == ["vae", latent, two_level]
    for row, tag in zip(rep["rows"], ["vae", "user_hierarchy-LatentDiffusionVAE", "contract_models-TwoLevelGaussianHVAE"]):
        assert row["elbo"] < 0 and row["iwae"] is not None and row["iwae"] < 0, row
        assert row["pfode"] is None  # the latent chain is not over the data
        assert _is_png(out / f"samples_{tag}.png"), tag
        if shutil.which("dot"):
            assert _is_png(out / f"diagram_{tag}.png"), tag
    md = open(out / "report.md").read()
    assert "LatentDiffusionVAE" in md and "TwoLevelGaussianHVAE" in md
    for spec, tag in ((latent, "user_hierarchy-LatentDiffusionVAE"), (two_level, "contract_models-TwoLevelGaussianHVAE")):
        png = tmp_path / f"{tag}.png"
        r = hlvm("sample", spec, "--checkpoint", out / "runs" / tag, "--n", "4", "--out", png)
        assert r.returncode == 0, r.stderr
        assert _is_png(png)


@pytest.mark.parametrize("args,message", [
    (["train", "nosuchmodel"], "unknown model 'nosuchmodel'"),
    (["train", "vae", "--data", "nosuchdata"], "unknown dataset 'nosuchdata'"),
    (["train", "vae", "--epochs", "-1"], "--epochs must be an integer >= 1"),
    (["train", "vae", "--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["train", "vae", "--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
    (["train", "vae", "--data", "mnist", "--data-dir", "/proc/1/nonexistent/dir"], "does not exist"),
    (["train", "vae", "--data", "fashion-mnist"], "needs --data-dir"),
    (["train", "vae", "--data", "cifar10", "--data-dir", "/tmp"], "cifar10 file data_batch_1 not found; looked for /tmp/cifar-10-batches-py/data_batch_1"),
    (["train", "vae", "--resume", "--out", "/nonexistent/run"], "no checkpoint"),
    (["sample", "vae", "--checkpoint", "/nonexistent/ck.pt"], "does not exist"),
    (["compare", "--models", "vae,bogus"], "unknown model 'bogus'"),
    (["train", "missing_file.py:Model"], "does not exist"),
    (["train"], "required: model"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_exits_2_with_one_line(args, message):
    r = hlvm(*args, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [l for l in r.stderr.splitlines() if l.strip() and not l.startswith("usage:") and not l.startswith("  ")]
    assert len(lines) == 1, r.stderr
    assert message in lines[0]
    assert "Traceback" not in r.stderr


def test_nan_loss_stops_with_clear_message(tmp_path):
    """A user model whose loss turns NaN: exit 1, a clear message, the last good checkpoint kept."""
    src = tmp_path / "nanmodel.py"
    src.write_text(
        "import pyro, torch\n"
        "from hlvm.zoo import VAE\n"
        "class NaNVAE(VAE):\n"
        "    calls = 0\n"
        "    def model(self, x=None, batch_size=None):\n"
        "        out = super().model(x, batch_size)\n"
        "        if self.training and torch.is_grad_enabled():\n"
        "            NaNVAE.calls += 1\n"
        "            if NaNVAE.calls > 4:\n"
        "                pyro.factor('boom', torch.tensor(float('nan')))\n"
        "        return out\n")
    out = tmp_path / "run"
    r = hlvm("train", f"{src}:NaNVAE", "--data", "digits", "--steps", "10", "--batch-size", "32", "--eval-examples", "32",
             "--eval-every", "100", "--checkpoint-every", "2", "--no-progress", "--out", out,
             "--no-compile")  # NaN armed by Python state: Pyro's step reruns the program, the recorded one replays it
    assert r.returncode == 1, r.stderr
    assert "loss became nan at step 5" in r.stderr and "last good checkpoint is kept" in r.stderr
    assert "Traceback" not in r.stderr
    import torch
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 4


def test_the_recorded_step_is_the_default_and_no_compile_opts_out(tmp_path, capsys):
    """Issue 24: ``hlvm train`` with no flag runs the recorded step and says so; --no-compile runs Pyro's."""
    from hlvm.cli import main
    from hlvm.training import load_run_checkpoint

    common = ["train", "vae", "--data", "mnist5k", "--steps", "3", "--batch-size", "16", "--eval-examples", "16",
              "--no-progress", "--threads", "1", "--set", "latent_dim=2", "hidden=8"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert "; recorded step (--no-compile: Pyro's); steps 0 → 3" in capsys.readouterr().out
    assert load_run_checkpoint(str(tmp_path / "a"))["config"]["compile"] is True
    assert main([*common, "--out", str(tmp_path / "b"), "--no-compile"]) == 0
    assert "; Pyro's step (--no-compile); steps 0 → 3" in capsys.readouterr().out
