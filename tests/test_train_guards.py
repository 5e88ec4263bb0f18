"""Training's guards, through the Python API: every option range-checked before any work, the run
folder protected, resume exact or refused, NaN stops before the update, late failures keep the
checkpoint, data that do not fit the likelihood refused, throughput measured after warm-up."""

import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from hlvm.data import load_dataset
from hlvm.training.checks import clean_stale_tmp
from hlvm.training import (WARMUP_STEPS, EvaluationFailed, TrainConfig, Trainer, TrainingDiverged, load_checkpoint,
                        load_run_checkpoint)

from hlvm.training.monitor import read_metrics

from conftest import small_vae_config

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

SMALL = {"hidden": 32, "latent_dim": 4}


def _cfg(out, **kw):
    return small_vae_config(out, **kw)


@pytest.fixture(scope="module")
def run4(tmp_path_factory, digits):
    """A finished 4-step run; tests copy its folder."""
    out = tmp_path_factory.mktemp("run4") / "run"
    Trainer(_cfg(out, steps=4), digits).fit()
    return out


def _copy(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


# ------------------------------------------------------------------------------ option ranges
@pytest.mark.parametrize("kw,message", [
    ({"steps": 0}, "--steps must be an integer >= 1"),
    ({"steps": 2.5}, "--steps must be an integer >= 1"),
    ({"epochs": 0}, "--epochs must be an integer >= 1"),
    ({"batch_size": 0}, "--batch-size must be an integer >= 1"),
    ({"lr": 0.0}, "--lr must be a finite number > 0"),
    ({"lr": float("inf")}, "--lr must be a finite number > 0"),
    ({"lr": float("nan")}, "--lr must be a finite number > 0"),
    ({"T": 0}, "--T must be an integer in [1, 100,000]"),
    ({"T": 100_000_000}, "--T must be an integer in [1, 100,000]"),
    ({"layers": 0}, "--layers must be an integer >= 1"),
    ({"ema": 1.0}, "--ema must be a number in [0, 1)"),
    ({"ema": -0.1}, "--ema must be a number in [0, 1)"),
    ({"eval_examples": 0}, "--eval-examples must be an integer >= 1"),
    ({"eval_examples": -5}, "--eval-examples must be an integer >= 1"),
    ({"eval_every": -1}, "--eval-every must be an integer >= 0"),
    ({"checkpoint_every": -1}, "--checkpoint-every must be an integer >= 0"),
    ({"free_bits": -1.0}, "--free-bits must be a finite number in [0, 1e+06]"),
    ({"free_bits": float("nan")}, "--free-bits must be a finite number in [0, 1e+06]"),
    ({"free_bits": 1e308}, "--free-bits must be a finite number in [0, 1e+06]"),
    ({"grad_clip": 0.0}, "--grad-clip must be a finite number > 0"),
    ({"skip_norm": -3.0}, "--skip-norm must be a finite number > 0"),
    ({"kl_warmup": -1}, "--kl-warmup must be an integer >= 0"),
    ({"seed": -1}, "--seed must be an integer in [0, 4294967295]"),
    ({"seed": 1.5}, "--seed must be an integer in [0, 4294967295]"),
    ({"grad_shards": 0}, "--grad-shards must be an integer >= 1"),
    ({"device": "tpu"}, "--device must be cpu, cuda or cuda:N"),
    ({"estimator": "bogus"}, "--estimator must be one of"),
    ({"amp": True}, "--amp"),
    ({"resume": True, "overwrite": True}, "--resume and --overwrite exclude each other"),
])
def test_every_option_is_range_checked(kw, message):
    with pytest.raises(ValueError) as e:
        TrainConfig(**kw).validate()
    assert message in str(e.value) and len(str(e.value).splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_cuda_says_so():
    with pytest.raises(ValueError, match="--device cuda: no CUDA device is available"):
        TrainConfig(device="cuda").validate()


def test_validation_comes_before_data_loading(tmp_path, monkeypatch):
    """A bad option fails before the data are read (so errors are instant)."""
    import hlvm.training.trainer as train

    monkeypatch.setattr(train, "load_dataset", lambda *a, **k: pytest.fail("data loaded before validation"))
    with pytest.raises(ValueError, match="--eval-examples"):
        Trainer(_cfg(tmp_path, eval_examples=0, data="mnist"))


# ------------------------------------------------------------------------------ the run folder
def test_existing_run_needs_resume_or_overwrite(run4, tmp_path, digits):
    out = _copy(run4, tmp_path)
    with pytest.raises(ValueError, match=r"already holds a run .*pass --resume to continue it or --overwrite to replace it"):
        Trainer(_cfg(out, steps=4), digits)
    t = Trainer(_cfg(out, steps=2, overwrite=True), digits)
    assert t.step == 0
    t.fit()
    assert load_checkpoint(str(out))["step"] == 2


def test_out_naming_a_file_or_unwritable_folder(tmp_path, digits):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        Trainer(_cfg(f, steps=2), digits)
    with pytest.raises(ValueError, match="--out .* is not a writable folder"):
        Trainer(_cfg(f / "sub", steps=2), digits)


def test_stale_temporary_checkpoints_are_removed(run4, tmp_path, digits):
    out = _copy(run4, tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid whose process is gone
    stale = out / f".checkpoint.pt.tmp-{dead.pid}"
    stale.write_bytes(b"partial")
    mine = out / f".checkpoint.pt.tmp-{os.getpid()}"  # a live process's write in progress stays
    mine.write_bytes(b"partial")
    Trainer(_cfg(out, steps=5, resume=True), digits)
    assert not stale.exists() and mine.exists()
    assert clean_stale_tmp(str(out)) == []


# ------------------------------------------------------------------------------ resume
@pytest.mark.parametrize("kw,changed", [
    ({"lr": 1e-2}, "lr 0.002 → 0.01"),
    ({"T": 5, "model": "vdm"}, "model 'vae' → 'vdm'"),
    ({"batch_size": 16}, "batch_size 32 → 16"),
    ({"seed": 1}, "seed 0 → 1"),
    ({"ema": 0.9}, "ema 0.0 → 0.9"),
    ({"data": "mnist5k"}, "data 'digits' → 'mnist5k'"),
    ({"binarize": "dynamic"}, "binarize 'static' → 'dynamic'"),
    ({"model_kwargs": {"hidden": 64, "latent_dim": 4}}, "model_kwargs.hidden 32 → 64"),
    ({"model_kwargs": {"hidden": 32, "latent_dim": 4, "depth": 2}}, "model_kwargs.depth (default) → 2"),
])
def test_resume_refuses_settings_that_alter_the_run(run4, tmp_path, kw, changed, monkeypatch):
    import hlvm.training.trainer as train

    out = _copy(run4, tmp_path)
    monkeypatch.setattr(train, "load_dataset", lambda *a, **k: pytest.fail("data loaded before the resume check"))
    with pytest.raises(ValueError) as e:
        Trainer(_cfg(out, steps=8, resume=True, **kw))
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and "--resume" in msg and "other settings" in msg and changed in msg, msg


def test_resume_lists_every_difference_in_one_line(run4, tmp_path, digits):
    out = _copy(run4, tmp_path)
    with pytest.raises(ValueError) as e:
        Trainer(_cfg(out, steps=8, resume=True, lr=1e-2, seed=3, kl_warmup=5), digits)
    msg = str(e.value)
    assert all(s in msg for s in ("lr 0.002 → 0.01", "seed 0 → 3", "kl_warmup 0 → 5")) and "\n" not in msg


def test_resume_accepts_and_logs_allowed_changes(run4, tmp_path, digits):
    out = _copy(run4, tmp_path)
    lines = []
    t = Trainer(_cfg(out, steps=6, resume=True, eval_every=3, checkpoint_every=2, eval_examples=16), digits, log=lines.append)
    assert t.step == 4
    assert any("steps 4 → 6" in l and "eval_every 100 → 3" in l and "checkpoint_every 0 → 2" in l for l in lines), lines
    t.fit()
    assert load_run_checkpoint(str(out / "checkpoint.pt"))["config"]["steps"] == 6
    with pytest.raises(ValueError, match="already at step 6, beyond the 5 steps asked for"):
        Trainer(_cfg(out, steps=5, resume=True), digits)


def test_foreign_torch_file_is_not_a_checkpoint(tmp_path, digits):
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"weights": torch.zeros(3)}, out / "checkpoint.pt")
    with pytest.raises(ValueError, match="is not an hlvm training checkpoint"):
        Trainer(_cfg(out, steps=2, resume=True), digits)


# ------------------------------------------------------------------------------ NaN
NAN_GRAD_MODEL = """
import pyro, torch
from hlvm.zoo import VAE

class NaNGradVAE(VAE):
    '''A VAE whose loss stays finite but whose gradient is NaN once armed (sqrt at 0).'''
    armed_after = None  # training steps (gradient-enabled model calls) before the gradient turns NaN
    calls = 0

    def model(self, x=None, batch_size=None):
        out = super().model(x, batch_size)
        if torch.is_grad_enabled():
            NaNGradVAE.calls += 1
            if NaNGradVAE.armed_after is not None and NaNGradVAE.calls > NaNGradVAE.armed_after:
                w = next(self.parameters())
                pyro.factor("zero_with_nan_gradient", torch.sqrt(0.0 * w.sum()))  # value 0, gradient NaN
        return out
"""


def test_nan_gradient_keeps_last_finite_checkpoint_and_resumes(tmp_path, digits):
    """The loss is finite at step 6 but its gradient is NaN: training stops before that update,
    the kept checkpoint (step 5) has finite parameters, and resuming from it reproduces the
    losses of a run that never met the NaN."""
    from hlvm.registry import load_class

    src = tmp_path / "nangrad.py"
    src.write_text(NAN_GRAD_MODEL)
    spec = f"{src}:NaNGradVAE"
    cls = load_class(spec)
    cls.armed_after = 5
    # Pyro's step: the recorded one replays the first steps' graph and never reruns the Python that arms the NaN
    t = Trainer(_cfg(tmp_path / "nan", model=spec, steps=8, checkpoint_every=1, compile=False), digits)
    with pytest.raises(TrainingDiverged, match=r"gradient became non-finite .* at step 6; training stopped before the "
                                               r"update and the last good checkpoint is kept"):
        t.fit()
    assert all(torch.isfinite(p).all() for p in t.model.parameters())  # the NaN update never happened
    ck = load_checkpoint(str(tmp_path / "nan"))
    assert ck["step"] == 5 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    cls.armed_after = None
    resumed = Trainer(_cfg(tmp_path / "nan", model=spec, steps=8, checkpoint_every=1, resume=True, compile=False), digits)
    resumed.fit()
    clean = Trainer(_cfg(tmp_path / "clean", model=spec, steps=8, checkpoint_every=1, compile=False), digits)
    clean.fit()
    assert resumed.losses == clean.losses and all(math.isfinite(v) for v in resumed.losses)


BAD_SITE_MODELS = """
import pyro, torch
import pyro.distributions as dist
from hlvm.zoo import VAE

class Armed(VAE):
    '''A VAE with one more observed site once armed (after ``armed_after`` training steps).'''
    armed_after = None
    calls = 0

    def model(self, x=None, batch_size=None):
        out = super().model(x, batch_size)
        if torch.is_grad_enabled():
            type(self).calls += 1
        if self.armed_after is not None and type(self).calls > self.armed_after:
            self.bad_site()
        return out


class NaNLocVAE(Armed):
    '''Once armed, a distribution gets a NaN parameter: a divergence.'''
    def bad_site(self):
        w = next(self.parameters())
        pyro.sample("bad", dist.Normal(w.sum() * float("nan"), 1.0), obs=torch.tensor(0.0))


class OutOfSupportVAE(Armed):
    '''Once armed, a Bernoulli site observes 2: a model error with a finite loss, not a divergence.'''
    def bad_site(self):
        pyro.sample("bad", dist.Bernoulli(probs=torch.tensor(0.5)), obs=torch.tensor(2.0))
"""


def _armed(tmp_path, name, after):
    from hlvm.registry import load_class

    src = tmp_path / "bad_site.py"
    src.write_text(BAD_SITE_MODELS)
    spec = f"{src}:{name}"
    load_class(spec).armed_after = after
    return spec


def test_nan_parameter_of_a_distribution_is_a_divergence(tmp_path, digits):
    """Argument validation stops the step on a NaN distribution parameter; the loss without
    validation is NaN, so the step diverged: TrainingDiverged, and the last checkpoint is kept."""
    spec = _armed(tmp_path, "NaNLocVAE", 3)  # armed by Python state: Pyro's step, which reruns the program
    t = Trainer(_cfg(tmp_path / "run", model=spec, steps=6, checkpoint_every=1, compile=False), digits)
    with pytest.raises(TrainingDiverged, match=r"^loss became nan at step 4 \(Expected parameter loc .*; training "
                                               r"stopped and the last good checkpoint is kept"):
        t.fit()
    assert load_checkpoint(str(tmp_path / "run"))["step"] == 3


def test_value_outside_the_support_is_a_model_error_not_a_divergence(tmp_path, digits):
    """Validation refuses an observed value outside its distribution's support; the loss without
    validation is finite, so this is the model's error, raised as itself — not reported as a NaN
    divergence (as matching "invalid values" in the message did)."""
    spec = _armed(tmp_path, "OutOfSupportVAE", 2)  # armed by Python state: Pyro's step, which reruns the program
    t = Trainer(_cfg(tmp_path / "run", model=spec, steps=6, checkpoint_every=1, compile=False), digits)
    with pytest.raises(ValueError, match="within the support") as e:
        t.fit()
    assert not isinstance(e.value, TrainingDiverged) and "invalid values" in str(e.value)
    assert t.step == 2 and all(torch.isfinite(p).all() for p in t.model.parameters())


def test_config_changes_are_records_filtered_by_field():
    from hlvm.training.checks import ALLOWED_ON_RESUME, QUIET_ON_RESUME, ConfigChange, config_changes

    saved = {"lr": 1e-3, "steps": 4, "progress": True, "resume": False}
    refused, allowed = config_changes(saved, {"lr": 1e-2, "steps": 8, "progress": False, "resume": True, "seed": 1},
                                      {"seed": 0})
    assert refused == [ConfigChange("lr", 1e-3, 1e-2), ConfigChange("seed", 0, 1)]
    assert [c.field for c in allowed] == ["steps", "progress", "resume"]
    assert str(refused[0]) == "lr 0.001 → 0.01"
    assert set(QUIET_ON_RESUME) <= set(ALLOWED_ON_RESUME)


def test_resume_log_names_changed_fields_but_not_the_quiet_ones(run4, tmp_path, digits):
    out = _copy(run4, tmp_path)
    lines = []
    Trainer(_cfg(out, steps=6, resume=True, progress=True, eval_every=3), digits, log=lines.append)
    assert lines == [f"resuming {out / 'checkpoint.pt'} at step 4 with changed settings: steps 4 → 6; "
                     f"out {str(run4)!r} → {str(out)!r}; eval_every 100 → 3"]  # not progress, resume


# ------------------------------------------------------------------------------ late failures
def test_failed_evaluation_keeps_the_trained_checkpoint(tmp_path, digits, monkeypatch):
    t = Trainer(_cfg(tmp_path, steps=3), digits)

    def broken(*a, **k):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(t, "evaluate_test", broken)
    with pytest.raises(EvaluationFailed, match=r"the test evaluation failed after step 3 \(ZeroDivisionError.*saved in "
                                               r".*checkpoint.pt; continue with --resume"):
        t.fit()
    assert load_checkpoint(str(tmp_path))["step"] == 3


# ------------------------------------------------------------------------------ data vs model
BINARY_MODEL = """
from hlvm.zoo import VAE

class BinaryOnlyVAE(VAE):
    '''A VAE whose likelihood is always Bernoulli, whatever the data.'''
    def __init__(self, data_shape=(1, 28, 28)):
        super().__init__(data_shape=data_shape, likelihood="binary", latent_dim=4, hidden=32)
"""


def test_8bit_data_to_a_bernoulli_model_is_refused(tmp_path):
    src = tmp_path / "binary_only.py"
    src.write_text(BINARY_MODEL)
    with pytest.raises(ValueError, match=r"the data do not fit model .*digits as 8bit data \(values 0\.\.255\) lie "
                                         r"outside the support of its likelihood Bernoulli"):
        Trainer(_cfg(tmp_path / "run", model=f"{src}:BinaryOnlyVAE", binarize="8bit", steps=2, model_kwargs={}))


# ------------------------------------------------------------------------------ throughput
def test_throughput_leaves_out_warm_up(tmp_path, digits):
    t = Trainer(_cfg(tmp_path, steps=WARMUP_STEPS + 4), digits)
    r = t.fit()
    assert r["timed_steps"] == 4 and 0 < r["seconds_per_epoch"]
    # exactly the mean of the steps after the warm-up, as each step's record timed it (no evaluation,
    # no checkpoint in it) — an identity on the recorded times, not a race between two clocks
    steps = [m["step_seconds"] for m in read_metrics(str(tmp_path)) if m["kind"] == "train"]
    assert len(steps) == WARMUP_STEPS + 4
    assert r["seconds_per_epoch"] == pytest.approx(sum(steps[WARMUP_STEPS:]) / 4 * t.steps_per_epoch, rel=1e-12)
    assert sum(steps) < r["seconds"]  # the fit also evaluated and wrote a checkpoint
