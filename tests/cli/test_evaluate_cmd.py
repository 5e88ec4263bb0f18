"""``hlvm evaluate RUN`` end to end, as subprocesses, on runs trained here for a few steps on ``digits``.

Its JSON is checked against :func:`hlvm.evaluate` on the same model (rebuilt here from the
checkpoint by hand, EMA weights) and the same images; its ``.npz`` against its JSON; bad input
exits 2 with one line and writes nothing."""

import json
import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

from hlvm.data import digits
from hlvm.eval import ParetoKWarning, evaluate
from hlvm.registry import build_model

from conftest import ROOT as CONFTEST_ROOT

ROOT = str(CONFTEST_ROOT)


def hlvm(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "hlvm.cli", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _train(folder, model, steps, *extra):
    r = hlvm("train", model, "--data", "digits", "--steps", steps, "--batch-size", "32", "--eval-examples", "32",
             "--no-progress", "--out", folder, *extra)
    assert r.returncode == 0, r.stderr
    return folder


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("runs") / "vae", "vae", 30, "--ema", "0.5", "--lr", "3e-3")


def _numbers(out: dict) -> dict:
    return {k: ("nan" if isinstance(v, float) and v != v else v) for k, v in out.items() if "seconds" not in k}


def _model(run, weights):
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    m = build_model("vae", ck["data"]["shape"], ck["data"]["kind"])
    m.load_state_dict(ck[weights])
    return m.eval()


def test_evaluate_scores_the_runs_ema_model_as_hlvm_evaluate_does(vae_run, tmp_path):
    out = tmp_path / "ev"
    r = hlvm("evaluate", vae_run, "--K", "40", "--examples", "50", "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("estimated time: about ")  # one line, before the work
    rec = json.load(open(out / "evaluation.json"))
    assert (rec["model"], rec["dataset"], rec["n_examples"], rec["K"], rec["ema"]) == ("vae", "digits", 50, 40, True)
    x = digits().test[:50]
    m = _model(vae_run, "ema").to(torch.float32)
    expected = evaluate(m, x, TraceMeanField_ELBO(), seed=0)
    assert _numbers(rec["evaluation"]) == _numbers(json.loads(json.dumps(expected)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ParetoKWarning)
        expected_iwae = evaluate(m, x, TraceMeanField_ELBO(), K=40, seed=0, breakdown=False, iwae_batch=500)
    assert _numbers(rec["iwae"]) == _numbers(json.loads(json.dumps(expected_iwae)))
    assert bool(rec["khat_warnings"]) == (expected_iwae["khat_max"] > 0.7)  # returned, as hlvm.eval.score does
    live = evaluate(_model(vae_run, "model").to(torch.float32), x, TraceMeanField_ELBO(), seed=0)
    assert abs(live["elbo"] - rec["evaluation"]["elbo"]) > 1e-3  # the EMA weights were scored, not the live ones
    assert f"ELBO {rec['evaluation']['elbo']:.2f}" in r.stdout and "k̂ mean" in r.stdout


def test_the_npz_holds_each_images_value_whose_mean_is_the_json_value(vae_run, tmp_path):
    out = tmp_path / "ev"
    r = hlvm("evaluate", vae_run, "--K", "40", "--examples", "50", "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    rec, values = json.load(open(out / "evaluation.json")), np.load(out / "per_image.npz")
    assert sorted(values.files) == ["elbo", "iwae"] == rec["per_image"]["arrays"]
    for bound, mean in (("elbo", rec["evaluation"]["elbo"]), ("iwae", rec["iwae"]["iwae"])):
        v = values[bound]
        assert v.shape == (50,) and v.dtype == np.float64
        assert float(torch.from_numpy(v).mean()) == mean
    se = values["elbo"].std(ddof=1) / math.sqrt(50)
    assert se == pytest.approx(rec["evaluation"]["nats_se"], rel=1e-12)


def test_a_checkpoint_file_and_the_protocol_k(vae_run):
    r = hlvm("evaluate", vae_run / "checkpoint.pt", "--examples", "4", "--no-progress")
    assert r.returncode == 0, r.stderr
    rec = json.load(open(vae_run / "evaluation" / "evaluation.json"))  # default --out: beside the checkpoint
    assert rec["K"] == 5000 and rec["iwae"]["K"] == 5000 and rec["iwae"]["n_examples"] == 4
    assert "IWAE (K = 5000) on 4" in r.stdout.splitlines()[0]


def test_a_continuous_vdm_gets_its_pfode_bound(tmp_path):
    run = _train(tmp_path / "vdm", "vdm", 3)
    r = hlvm("evaluate", run, "--examples", "2", "--no-progress", "--out", tmp_path / "ev")
    assert r.returncode == 0, r.stderr
    rec, values = json.load(open(tmp_path / "ev" / "evaluation.json")), np.load(tmp_path / "ev" / "per_image.npz")
    assert rec["K"] == 0 and rec["iwae"] == {} and rec["pfode"]["n_examples"] == 2
    assert sorted(values.files) == ["elbo", "pfode"] and values["pfode"].shape == (2,)
    assert float(torch.from_numpy(values["pfode"]).mean()) == rec["pfode"]["pfode"]
    assert "PF-ODE bound on 2" in r.stdout.splitlines()[0]


@pytest.mark.parametrize("args, message", [
    (["{missing}"], "does not exist: give a run folder or a checkpoint file"),
    (["{foreign}"], "is not an hlvm training checkpoint"),
    (["{run}", "--K", "-1"], "--K must be an integer >= 0"),
    (["{run}", "--examples", "0"], "--examples must be an integer >= 1"),
    (["{run}", "--examples", "301"], "--examples 301: the test split has 300 images"),
    (["{run}", "--device", "cuda:99"], "--device cuda:99"),
    (["{run}", "--data", "mnist5k"], "images of shape (1, 28, 28), but the run's model takes (1, 8, 8)"),
    (["{run}", "--out", "{foreign}"], "is a file; give a folder"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(vae_run, tmp_path, args, message):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    names = {"missing": tmp_path / "nothing", "foreign": foreign, "run": vae_run}
    argv = [a.format(**names) for a in args]
    r = hlvm("evaluate", *argv, *([] if "--out" in argv else ["--out", tmp_path / "ev"]))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("hlvm evaluate: error: ") and message in r.stderr, r.stderr
    assert r.stdout == "" and not (tmp_path / "ev").exists()
