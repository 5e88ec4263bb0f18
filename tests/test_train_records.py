"""The step records of a training run: what the metrics file says a step used and did is what the
step used and did — its β (also through KL warm-up and a resume inside it), its gradient norm
(with and without clipping), whether its update was skipped — and the EMA weights are evaluated
without touching the live weights."""

import math

import pytest
import torch

import hlvm.training.step as step_module
from hlvm.training import StepRecord, TrainConfig, Trainer, train
from hlvm.training.monitor import read_metrics
from hlvm.training.step import shard_seed

from conftest import small_vae_config

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _cfg(out, **kw):
    return small_vae_config(out, **kw)


def _train_records(folder):
    return [r for r in read_metrics(str(folder)) if r["kind"] == "train"]


def test_beta_in_the_metrics_is_the_beta_the_step_used(tmp_path, digits, monkeypatch):
    """Every β < 1 a step scaled its latents by, and β = 1 for a step that scaled nothing, is the β
    its record carries — also for the steps after a resume in the middle of the warm-up."""
    used = []

    class Spy(step_module.ScaleLatents):
        def __init__(self, beta):
            super().__init__(beta)
            used.append(beta)

    monkeypatch.setattr(step_module, "ScaleLatents", Spy)
    records = []
    t = Trainer(_cfg(tmp_path / "run", steps=3, kl_warmup=4), digits)
    t.svi.step = _spying(t.svi.step, records)
    t.fit()
    resumed = Trainer(_cfg(tmp_path / "run", steps=6, kl_warmup=4, resume=True), digits)
    resumed.svi.step = _spying(resumed.svi.step, records)
    resumed.fit()
    expected = [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert used == expected[:4]  # β < 1: the scaling the step applied; β = 1: none
    assert [r.beta for r in records] == expected
    assert [r["beta"] for r in _train_records(tmp_path / "run")] == expected


def _spying(step, records):
    def spy(x):
        record = step(x)
        records.append(record)
        return record
    return spy


def _first_gradient_norm(cfg, digits) -> float:
    """The global gradient norm of a run's first step, computed here from its first batch and its
    first shard's seed, outside the trainer's step."""
    t = Trainer(cfg, digits)
    x = t._next_batch()
    with torch.random.fork_rng():
        torch.manual_seed(shard_seed(cfg.seed, 0, 0))
        t.estimator.differentiable_loss(t.model.model, t.model.guide, x).backward()
    return math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in t.model.parameters() if p.grad is not None))


def test_gradient_norm_is_recorded_before_clipping(tmp_path, digits):
    """Without clipping, with clipping (the norm before it) and with update skipping, the first
    record's gradient norm is the norm of the first step's gradient; clipping changes the update."""
    expected = _first_gradient_norm(_cfg(tmp_path / "probe", steps=2), digits)
    runs = {}
    for name, kw in {"plain": {}, "clip": {"grad_clip": 1.0}, "skip": {"skip_norm": 1e6}}.items():
        t = Trainer(_cfg(tmp_path / name, steps=2, **kw), digits)
        t.fit()
        runs[name] = (t, _train_records(tmp_path / name))
    for name, (t, records) in runs.items():
        assert records[0]["grad_norm"] == pytest.approx(expected, rel=1e-5), name
        assert all(r["grad_norm"] > 0 and r["skipped"] is False for r in records), name
    assert expected > 1.0  # so the clipped run's update differs
    assert runs["clip"][0].losses[1] != runs["plain"][0].losses[1]
    assert runs["skip"][0].losses == runs["plain"][0].losses  # a skip threshold never reached changes nothing


def test_skipped_updates_are_recorded(tmp_path, digits):
    t = Trainer(_cfg(tmp_path, steps=3, skip_norm=1e-3), digits)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    t.fit()
    records = _train_records(tmp_path)
    assert [r["skipped"] for r in records] == [True, True, True]
    assert all(r["grad_norm"] > 1e-3 for r in records) and t.optim.skipped == 3
    assert all(torch.equal(before[k], v) for k, v in t.model.state_dict().items())


def test_record_is_frozen_and_train_returns_the_fit_result(tmp_path, digits):
    record = StepRecord(step=1, loss=1.0, grad_norm=2.0, beta=1.0, skipped=False, lr=1e-3)
    with pytest.raises(AttributeError):
        record.loss = 0.0
    assert math.isnan(record.seconds)
    assert Trainer(_cfg(tmp_path / "a", steps=1), digits).result is None
    t = train(_cfg(tmp_path / "b", steps=2), digits)
    assert t.result is not None and t.result["steps"] == 2 and t.result["losses"] == t.losses


def test_the_ema_decay_warms_up_with_the_step(tmp_path, digits):
    """θ̄ after n updates: each with d_n = min(d, (1 + n)/(10 + n)), n counted from the first update —
    recomputed here from the live weights after every step."""
    t = Trainer(_cfg(tmp_path, steps=4, ema=0.999), digits)
    expect = {k: v.clone() for k, v in t.model.state_dict().items()}
    for n in range(1, 5):
        t._train_step()
        d = min(0.999, (1 + n) / (10 + n))
        for k, v in t.model.state_dict().items():
            if v.dtype.is_floating_point:
                expect[k] = d * expect[k] + (1 - d) * v
        assert all(torch.allclose(t.ema.shadow[k], expect[k], atol=1e-6) for k in expect)
    assert t.ema.decay_at(None) == 0.999 and t.ema.decay_at(10 ** 6) == 0.999


def test_ema_weights_are_evaluated_without_touching_the_live_weights(tmp_path, digits):
    t = Trainer(_cfg(tmp_path, steps=3, ema=0.5), digits)
    t.fit()
    live = {k: v.clone() for k, v in t.model.state_dict().items()}
    shadow = {k: v.clone() for k, v in t.ema.shadow.items()}
    assert any(not torch.equal(live[k], shadow[k]) for k in live)
    with t.ema_weights() as model:
        assert all(torch.equal(v, shadow[k]) for k, v in model.state_dict().items())
    ev = t.evaluate_test()
    grid = t.sample_grid(4)
    assert grid is not None and grid.shape[0] == 3 and math.isfinite(ev["elbo"])
    assert all(torch.equal(v, live[k]) for k, v in t.model.state_dict().items())
    assert all(torch.equal(v, shadow[k]) for k, v in t.ema.shadow.items())
    with t.ema_weights():  # nested: the evaluation still reads the average, not the live weights
        assert t.evaluate_test() == ev
