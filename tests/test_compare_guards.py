"""``hlvm.reports.compare.run_compare`` through the Python API: its options checked before any data is
read, and a failure after a model's training names the checkpoint it kept."""

import pytest

import hlvm.reports.compare as compare
from hlvm.reports.compare import run_compare
from hlvm.training import EvaluationFailed, TrainConfig, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _base(tmp_path, **kw):
    return TrainConfig(**{"data": "digits", "steps": 2, "batch_size": 32, "progress": False, "out": str(tmp_path), **kw})


@pytest.mark.parametrize("kw,message", [
    ({"K": 25}, "--K must be 0 (no IWAE bound) or an integer >= 30"),
    ({"K": 29}, "--K must be 0 (no IWAE bound) or an integer >= 30"),
    ({"iwae_examples": -1}, "--iwae-examples must be an integer >= 0"),
    ({"eval_examples": 0}, "--eval-examples must be an integer >= 1"),
    ({"pfode_examples": -2}, "--pfode-examples must be an integer >= 0"),
    ({"pfode_samples": 0}, "--pfode-samples must be an integer >= 1"),
])
def test_compare_options_are_checked_before_the_data(tmp_path, monkeypatch, kw, message):
    monkeypatch.setattr(compare, "load_dataset", lambda *a, **k: pytest.fail("data loaded before the checks"))
    with pytest.raises(ValueError) as e:
        run_compare(["vae"], _base(tmp_path), str(tmp_path / "cmp"), **kw)
    assert message in str(e.value)


def test_compare_checks_the_training_options_too(tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "load_dataset", lambda *a, **k: pytest.fail("data loaded before the checks"))
    with pytest.raises(ValueError, match="--lr must be a finite number > 0"):
        run_compare(["vae"], _base(tmp_path, lr=-1.0), str(tmp_path / "cmp"))
    with pytest.raises(ValueError, match="--models names vae more than once"):
        run_compare(["vae", "vae"], _base(tmp_path), str(tmp_path / "cmp"))


def test_failure_after_training_names_the_kept_checkpoint(tmp_path, monkeypatch):
    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(compare, "_evaluate_row", broken)
    out = tmp_path / "cmp"
    with pytest.raises(EvaluationFailed, match=r"vae: evaluating or reporting failed after training \(OSError: disk full\); "
                                               r"its trained checkpoint is kept at .*runs/vae/checkpoint.pt"):
        run_compare(["vae"], _base(tmp_path), str(out), K=0, eval_examples=16, render=False, log=lambda *a: None)
    assert load_checkpoint(str(out / "runs" / "vae"))["step"] == 2
