"""A model's training recipe (``training_defaults``, :func:`hlvm.registry.training_defaults`):
``hlvm train`` and ``hlvm compare`` use it for the options the command line leaves unset, the
line overrides it, each model of a comparison gets its own, and a resumed run keeps its saved
options."""

import json
import os
import textwrap

import pytest

from hlvm.registry import training_defaults
from hlvm.training import load_run_checkpoint

from test_model_options import COMPARE, TINY, run

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.fixture
def recipe_model(tmp_path):
    path = tmp_path / "recipe.py"
    path.write_text(textwrap.dedent("""
        from hlvm.zoo import VAE

        class WithRecipe(VAE):
            training_defaults = {"kl_warmup": 7, "free_bits": 0.25, "lr_schedule": "cosine"}

        class WithoutRecipe(VAE):
            training_defaults = None
    """))
    return f"{path}:WithRecipe"


def _config(out):
    return load_run_checkpoint(os.path.join(out, "checkpoint.pt"))["config"]


def test_the_registry_reads_the_class_attribute(recipe_model):
    assert training_defaults(recipe_model) == {"kl_warmup": 7, "free_bits": 0.25, "lr_schedule": "cosine"}
    assert training_defaults(recipe_model.replace(":WithRecipe", ":WithoutRecipe")) == {}
    training_defaults(recipe_model)["kl_warmup"] = 0  # a copy: the class keeps its recipe
    assert training_defaults(recipe_model)["kl_warmup"] == 7


def test_train_takes_the_recipe_where_the_line_is_silent(recipe_model, tmp_path):
    code, _, err = run(["train", recipe_model, *TINY, "--out", str(tmp_path / "a")])
    assert code == 0, err
    cfg = _config(tmp_path / "a")
    assert (cfg["kl_warmup"], cfg["free_bits"], cfg["lr_schedule"]) == (7, 0.25, "cosine")
    code, _, err = run(["train", recipe_model, *TINY, "--out", str(tmp_path / "b"), "--kl-warmup", "0",
                        "--lr-schedule", "constant"])
    assert code == 0, err
    cfg = _config(tmp_path / "b")
    assert (cfg["kl_warmup"], cfg["free_bits"], cfg["lr_schedule"]) == (0, 0.25, "constant")  # the line wins
    code, _, err = run(["train", recipe_model, *TINY, "--out", str(tmp_path / "b"), "--resume", "--steps", "2"])
    assert code == 0, err
    cfg = _config(tmp_path / "b")
    assert (cfg["kl_warmup"], cfg["lr_schedule"]) == (0, "constant")  # resume keeps what the run was trained with


def test_each_model_of_a_comparison_gets_its_own_recipe(recipe_model, tmp_path):
    out = tmp_path / "cmp"
    code, _, err = run(["compare", *COMPARE, "--models", f"vae,{recipe_model}", "--out", str(out)])
    assert code == 0, err
    runs = {d: _config(out / "runs" / d) for d in os.listdir(out / "runs")}
    vae = next(c for d, c in runs.items() if d.startswith("vae"))
    mine = next(c for d, c in runs.items() if not d.startswith("vae"))
    assert (vae["kl_warmup"], vae["free_bits"], vae["ema"]) == (0, 0.0, 0.999)  # the VAE's recipe is its own
    assert (mine["kl_warmup"], mine["free_bits"]) == (7, 0.25)
    report = json.loads((out / "report.json").read_text())
    trained = {r["model"]: r["training"] for r in report["rows"]}
    assert trained["vae"] == {"ema": 0.999} and trained[recipe_model] == {"kl_warmup": 7, "free_bits": 0.25, "lr_schedule": "cosine"}
    assert f"* {recipe_model} trained with kl_warmup=7, free_bits=0.25, lr_schedule=cosine." in (out / "report.md").read_text()
    code, _, err = run(["compare", *COMPARE, "--models", f"vae,{recipe_model}", "--out", str(out), "--free-bits", "0"])
    assert code == 0, err
    mine = next(_config(out / "runs" / d) for d in os.listdir(out / "runs") if not d.startswith("vae"))
    assert (mine["kl_warmup"], mine["free_bits"]) == (7, 0.0)  # the line's --free-bits 0 holds
