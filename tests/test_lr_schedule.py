"""hlvm.training.lr_schedule: the closed form of each schedule, the rates a run actually uses
(metrics.jsonl), an exact resume under a decaying rate, and clean errors for bad options."""

import json
import math

import pytest

from hlvm.training import Trainer
from hlvm.training.lr_schedule import learning_rate

from conftest import small_vae_config


def test_constant_and_warm_up():
    assert [learning_rate(s, 100, 1e-3) for s in (0, 50, 99)] == [1e-3] * 3
    assert learning_rate(0, 100, 1e-3, warmup=4) == pytest.approx(0.25e-3)
    assert learning_rate(2, 100, 1e-3, warmup=4) == pytest.approx(0.75e-3)
    assert learning_rate(3, 100, 1e-3, warmup=4) == pytest.approx(1e-3)
    assert learning_rate(60, 100, 1e-3, warmup=4) == pytest.approx(1e-3)


def test_cosine_decays_from_the_base_rate_through_half_to_zero():
    total, warm = 110, 10
    assert learning_rate(warm, total, 2e-3, "cosine", warm) == pytest.approx(2e-3)  # the top, after warm-up
    assert learning_rate(warm + 50, total, 2e-3, "cosine", warm) == pytest.approx(1e-3)  # half-way: η/2
    assert learning_rate(total, total, 2e-3, "cosine", warm) == pytest.approx(0.0, abs=1e-18)
    rates = [learning_rate(s, total, 2e-3, "cosine", warm) for s in range(warm, total)]
    assert all(a > b for a, b in zip(rates, rates[1:]))  # strictly decreasing after warm-up
    # a quarter of the way: ½(1 + cos(π/4)) η
    assert learning_rate(warm + 25, total, 1.0, "cosine", warm) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="learning-rate schedule 'step'"):
        learning_rate(0, 10, 1e-3, "step")


def _lrs(out):
    with open(out / "metrics.jsonl") as f:
        return {r["step"]: r["lr"] for r in map(json.loads, f) if r.get("kind") == "train"}


def test_a_run_uses_the_scheduled_rates_and_resumes_exactly(tmp_path, digits):
    kw = dict(steps=24, lr_schedule="cosine", lr_warmup=5, eval_every=0)
    full = Trainer(small_vae_config(tmp_path / "a", **kw), digits)
    full.fit()
    rates = _lrs(tmp_path / "a")
    assert len(rates) == 24
    for step, lr in rates.items():  # the record of step k was the update from k − 1 to k
        assert lr == pytest.approx(learning_rate(step - 1, 24, 2e-3, "cosine", 5), rel=1e-12)

    class Preempted(Exception):
        pass

    part = Trainer(small_vae_config(tmp_path / "b", checkpoint_every=9, **kw), digits)
    take_step = part._train_step

    def stop_after_nine():
        if part.step == 9:
            raise Preempted
        return take_step()

    part._train_step = stop_after_nine
    with pytest.raises(Preempted):
        part.fit()
    resumed = Trainer(small_vae_config(tmp_path / "b", resume=True, **kw), digits)
    assert resumed.step == 9
    resumed.fit()
    assert resumed.losses == full.losses  # the rates are a function of the step: the same run


@pytest.mark.parametrize("kw, message", [({"lr_schedule": "linear"}, "--lr-schedule must be one of"),
                                         ({"lr_warmup": -1}, "--lr-warmup")])
def test_bad_options_are_refused_before_any_work(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        Trainer(small_vae_config(tmp_path, steps=2, **kw))
