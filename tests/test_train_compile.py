"""``--compile`` in the Trainer: the recorded step gives the same run as Pyro's — losses and
parameters — through KL warm-up, gradient shards and an exact resume; ``--threads`` is recorded."""

import pytest
import torch

from hlvm.training import TrainConfig, Trainer

from conftest import small_vae_config

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _cfg(tmp, **kw):
    return small_vae_config(tmp, eval_examples=50, **kw)


def _run(tmp, digits, **kw):
    t = Trainer(_cfg(tmp, **kw), digits)
    t.fit()
    return t


@pytest.mark.parametrize("model, kw", [("vae", {}), ("vae", {"kl_warmup": 3, "grad_shards": 2}),
                                       ("hvae-td", {"model_kwargs": {"hidden": 16, "latent_dim": 4}}),
                                       ("vdm", {"model_kwargs": {"width": 32, "depth": 1}})])
def test_compiled_training_is_the_same_run(tmp_path, digits, model, kw):
    runs = [_run(tmp_path / str(c), digits, model=model, steps=8, compile=c, **kw) for c in (False, True)]
    plain, compiled = runs
    assert compiled.recorded is not None and compiled.recorded.fallback is None
    assert len(compiled.recorded.records) == 1  # one batch shape: recorded once, replayed after
    assert [g for g in compiled.optim._groups] == [g for g in plain.optim._groups]  # the same parameters, by name
    assert compiled.losses == pytest.approx(plain.losses, rel=1e-9)
    for a, b in zip(plain.model.state_dict().values(), compiled.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_compiled_training_resumes_exactly(tmp_path, digits):
    whole = _run(tmp_path / "whole", digits, steps=8, compile=True)
    _run(tmp_path / "part", digits, steps=4, compile=True)
    resumed = _run(tmp_path / "part", digits, steps=8, compile=True, resume=True)
    assert resumed.losses[-4:] == pytest.approx(whole.losses[-4:], rel=1e-9)


def test_threads_are_applied_and_checked(tmp_path, digits):
    n = torch.get_num_threads()
    try:
        _run(tmp_path, digits, steps=1, threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(n)
    with pytest.raises(ValueError, match="--threads must be an integer in \\[1, 1024\\]"):
        _cfg(tmp_path, threads=0).validate()
    with pytest.raises(ValueError, match="--amp .* needs --device cuda"):  # the recorded step is the default: --amp
        _cfg(tmp_path, compile=True, amp=True, device="cpu").validate()    # alone runs Pyro's step (not refused)


def test_default_threads_leave_busy_cores_alone(monkeypatch):
    import os

    from hlvm.limits import default_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    for load, expected in ((0.1, 2), (0.9, 1), (1.2, 1), (5.0, 1)):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, 0.0, 0.0))
        assert default_threads() == expected


def test_cli_compile_and_threads(tmp_path):
    import subprocess
    import sys

    from hlvm.training import load_checkpoint

    r = subprocess.run([sys.executable, "-m", "hlvm.cli", "train", "vae", "--data", "digits", "--steps", "3",
                        "--batch-size", "32", "--eval-examples", "20", "--compile", "--threads", "1", "--no-progress",
                        "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    cfg = load_checkpoint(str(tmp_path / "run" / "checkpoint.pt"))["config"]
    assert cfg["compile"] is True and cfg["threads"] == 1
