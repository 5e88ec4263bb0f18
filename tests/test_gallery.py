"""The gallery (examples/gallery/): hierarchies written as Pyro users write them — data sites and
plates under their own names, ``pyro.module`` registration, images flattened inside the model, no
``data_shape`` — go through ``hlvm train``, ``compare`` (ELBO, IWAE, k̂), ``render`` and ``sample``
with no edit (issue 22)."""

import json
import math

import pytest

from hlvm.cli import main

from conftest import ROOT

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

GALLERY = ROOT / "examples" / "gallery"
#: file:Class, small options for 8×8 digits, the estimator hlvm's rule must read from the DAG, a site name
CASES = {
    "tutorial_vae.py:VAE": ("x_dim=64 z_dim=4 hidden_dim=32", "TraceMeanField_ELBO", "latent"),
    "vamp_prior.py:VampPriorVAE": ("x_dim=64 z_dim=4 hidden=32 pseudo_inputs=5", "TraceMeanField_ELBO", "x_obs"),
    "skip_ladder.py:SkipLadderVAE": ("x_dim=64 top=2 bottom=4 hidden=32", "TraceMeanField_ELBO", "pixels"),
    "latent_ddpm.py:LatentDDPM": ("x_dim=64 z_dim=4 num_steps=3 hidden=32", "Trace_ELBO", "z_3"),
}


#: log p(x) of 8×8 binary digits under independent fair pixels, 64 log ½
COIN_FLIPS = 64 * math.log(0.5)


def _spec(name):
    return f"{GALLERY / name}"


@pytest.mark.parametrize("name", list(CASES))
def test_a_pyro_users_hierarchy_trains_renders_and_samples_unchanged(name, tmp_path, capsys):
    options, estimator, site = CASES[name]
    run = tmp_path / "run"
    assert main(["train", _spec(name), "--data", "digits", "--steps", "40", "--batch-size", "32", "--lr", "3e-3",
                 "--eval-every", "40", "--out", str(run), "--threads", "1", "--set", *options.split()]) == 0
    elbo = json.loads((run / "history.json").read_text())["history"][-1]["test_elbo"]
    assert COIN_FLIPS + 5 < elbo < 0, elbo  # it learned: 40 steps beat independent fair pixels by > 5 nats
    assert f"estimator {estimator}" in capsys.readouterr().out
    assert main(["render", _spec(name), "--data", "digits", "--format", "dot", "--out", str(tmp_path),
                 "--set", *options.split()]) == 0
    cls = name.split(":")[1]
    assert f"<{site}" in (tmp_path / f"{cls}.dot").read_text().replace("<SUB>", "_").replace("</SUB>", "")
    assert main(["sample", _spec(name), "--checkpoint", str(run), "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 100


def test_compare_takes_the_gallery_beside_the_zoo(tmp_path):
    models = ["vae(latent_dim=4,hidden=32)"] + [f"{_spec(n)}({','.join(CASES[n][0].split())})" for n in CASES]
    out = tmp_path / "cmp"
    assert main(["compare", "--models", ",".join(models), "--data", "digits",
                 "--steps", "30", "--K", "30", "--iwae-examples", "20", "--eval-examples", "60", "--out", str(out),
                 "--threads", "1", "--no-render"]) == 0
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert len(rows) == 5
    for row in rows:
        assert row["elbo"] < 0 and row["iwae"] < 0 and row["khat_max"] == row["khat_max"], row  # k̂ computed
        assert row["iwae"] > row["elbo"] - 3 * (row["elbo_se"] + 1.0), row  # IWAE_30 ≥ ELBO up to noise
