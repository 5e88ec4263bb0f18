"""Defaults that win: each zoo class's constructor defaults and training recipe are its family's
winner in the validation search recorded in docs/results-search.json (the search that ``make
results`` runs; every family whose search has finished there)."""

import json
import os

import pytest
import torch

from hlvm.diffusion.schedules import InteriorSchedule
from hlvm.programs.chain import chains_of
from hlvm.registry import build_model, training_defaults
from hlvm.reports.results import CONFIG_FIELDS, ROWS
from hlvm.reports.search import final_options
from hlvm.reports.studies import STUDIES, study_entries, study_options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEARCHES = json.load(open(os.path.join(ROOT, "docs", "results-search.json")))
DECIDED = [row for row, s in SEARCHES.items() if "winner" in s]


def _architecture(model) -> dict:
    """Every parameter's and buffer's name and shape, and the class of each submodule: what the
    constructor options decide."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    kinds = {name: type(m).__name__ for name, m in model.named_modules()}
    return {"shapes": shapes, "modules": kinds}


def test_the_vae_bottom_up_and_top_down_searches_have_finished():
    assert {"vae", "hvae-bu", "hvae-td"} <= set(DECIDED)


@pytest.mark.parametrize("row", DECIDED)
def test_the_zoo_defaults_are_the_search_winner(row):
    _, model, options, trainer_options = next(r for r in ROWS if r[0] == row)
    won, trainer = final_options(SEARCHES[row]["winner"], options, trainer_options)
    kwargs = {k: v for k, v in won.items() if k not in CONFIG_FIELDS}
    fields = {k: v for k, v in won.items() if k in CONFIG_FIELDS and v is not None}
    torch.manual_seed(0)
    winner = build_model(model, (1, 28, 28), "binary", **fields, **kwargs)
    torch.manual_seed(0)
    default = build_model(model, (1, 28, 28), "binary")
    assert _architecture(default) == _architecture(winner)
    for key, value in kwargs.items():  # options the model keeps as text (merge …) agree too; a schedule's
        if isinstance(getattr(default, key, None), str):  # class is among the modules compared above
            assert getattr(default, key) == getattr(winner, key) == value, key
    recipe = training_defaults(model)
    kwargs_ = recipe.get("estimator_kwargs", {})
    if kwargs_.get("schedule_objective") == "auto":  # "auto" is the variance objective where it applies
        chains = chains_of(default)
        applies = all(c.T is None and isinstance(c.schedule, InteriorSchedule) for c in chains)
        recipe["estimator_kwargs"] = {**kwargs_, "schedule_objective": "variance" if applies else "elbo"}
    assert recipe == {**trainer, **study_options(model)}


@pytest.mark.parametrize("model", sorted(STUDIES))
def test_a_recipe_entry_beyond_the_search_won_its_validation_study(model):
    """Each such entry was measured on the validation split (never the test set) and beat the
    recipe without it there."""
    for (option, (won, lost)), entry in zip(STUDIES[model], study_entries(model, os.path.join(ROOT, "docs"))):
        won, lost = (json.load(open(os.path.join(ROOT, "docs", f))) for f in (won, lost))
        assert won["split"] == lost["split"] == "validation" and won["train_options"] == option
        assert won.get("model", "vae") == lost.get("model", "vae") == model
        assert lost["train_options"] == {} and won["epochs"] == lost["epochs"]
        assert won["rows"]["hlvm-train"]["elbo"] > lost["rows"]["hlvm-train"]["elbo"]
        assert (entry["elbo_with"], entry["elbo_without"]) == (won["rows"]["hlvm-train"]["elbo"],
                                                               lost["rows"]["hlvm-train"]["elbo"])


def test_the_default_vae_at_least_matches_pyros_example_vae_on_the_test_set():
    """The recorded run of ``benchmarks/baseline_elbo.py --data mnist --epochs 20 --seeds 3 --kinds
    baseline,hlvm-train`` (the protocol of Pyro's examples/vae), made with the recipe above in place."""
    run = json.load(open(os.path.join(ROOT, "docs", "studies", "pyro_example_vae_test.json")))
    assert run["split"] == "test" and run["data"] == "mnist" and run["n_test"] == 10000
    assert (run["epochs"], run["batch"], run["seeds"]) == (20, 128, 3) and run["train_options"] == {}
    ours, pyro = run["rows"]["hlvm-train"], run["rows"]["baseline"]
    assert ours["elbo"] >= pyro["elbo"] and all(
        a["elbo"] > b["elbo"] for a, b in zip(ours["runs"], pyro["runs"]))  # ahead on every seed
