"""The validation search of ``make results`` (:mod:`hlvm.reports.search`): its declared spaces build,
its winner rule, the options a final row trains with, and resuming from its JSON."""

import json
import math

import pytest

from hlvm.reports.results import PROFILES, ROWS, train_config
from hlvm.reports.search import SPACES, config, final_options, pick_winner, run_search, search_lines, space_of
from hlvm.training import TrainConfig, TrainingDiverged


def test_every_row_has_a_space_of_at_most_eight_distinct_configurations():
    for name, *_ in ROWS:
        source, configs = space_of(name)
        assert source == ("vdm" if name == "vdm-T1000" else name)
        assert 2 <= len(configs) <= 8
        assert len({c["name"] for c in configs}) == len(configs)
        assert len({json.dumps([c["model"], c["trainer"]], sort_keys=True) for c in configs}) == len(configs)


@pytest.fixture(scope="module")
def digits_validation():
    from hlvm.data import load_dataset

    return load_dataset("digits", split="validation")


@pytest.mark.parametrize("row", list(SPACES))
def test_every_declared_configuration_builds_as_the_results_job_builds_it(row, digits_validation, tmp_path):
    """Each configuration through the results job's own TrainConfig (:func:`train_config`) into a
    Trainer: the model options are the zoo constructor's (a wrong name or value raises), ``T`` and
    ``layers`` their TrainConfig fields, the trainer options fields in range, the estimator options
    the estimator's."""
    from hlvm.training import Trainer

    _, model, options, trainer_options = next(r for r in ROWS if r[0] == row)
    for c in SPACES[row]:
        opts, trainer = final_options(c, options, trainer_options)
        cfg = train_config(PROFILES["cpu"], model, opts, trainer, str(tmp_path / c["name"]), search=True)
        assert cfg.epochs == 6 and cfg.layers == opts.get("layers") and "layers" not in cfg.model_kwargs
        t = Trainer(cfg, digits_validation, log=lambda line: None)
        for key, value in c["model"].items():
            if key in ("latent_dim", "hidden", "width", "depth", "merge"):
                found = getattr(t.model, key, None)
                assert found is None or found == value, (c["name"], key)
        assert getattr(t.estimator, "schedule_objective", "elbo") == \
            trainer.get("estimator_kwargs", {}).get("schedule_objective", "elbo")
        if "layers" in opts:
            assert t.model.L == opts["layers"]


def test_the_spaces_vary_what_the_issue_names():
    vdm = SPACES["vdm"]
    schedules = {c["model"].get("schedule") for c in vdm}
    assert schedules == {"cosine", "learned-density", "learned-net"}
    assert any("fourier" in c["model"] for c in vdm) and any(c["model"].get("width") == 1024 for c in vdm)
    assert any(c["trainer"].get("estimator_kwargs", {}).get("sampler") == "importance" for c in vdm)
    td = SPACES["hvae-td"]
    assert {c["model"]["merge"] for c in td} == {"residual", "precision"}
    assert {c["trainer"].get("free_bits", 0) for c in td} == {0, 0.5} and {c["trainer"].get("kl_warmup", 0) for c in td} == {0, 2000}
    assert {c["model"]["latent_dim"] for c in td} == {32, 64} and {c["model"].get("layers", 3) for c in td} == {2, 3, 5}
    assert {c["model"].get("latent_dim", 20) for c in SPACES["vae"]} == {20, 32, 50, 100}
    for row, space in SPACES.items():  # the learning-rate schedule, once per family
        assert [c["trainer"].get("lr_schedule") for c in space].count("cosine") == 1, row


def test_the_cpu_search_budget_outlasts_every_declared_warmup():
    """A configuration with KL warm-up is scored after β reached 1: the search's steps on 50,000 images exceed it."""
    p = PROFILES["cpu"]
    steps = p.search_epochs * math.ceil(50000 / p.batch_size)
    assert steps == 6 * 391
    assert max(c["trainer"].get("kl_warmup", 0) for cs in SPACES.values() for c in cs) < steps


def _scored(name, elbo, se=0.1, **model):
    return {**config(name, model), "elbo": elbo, "elbo_se": se}


def test_winner_is_the_highest_mean_ties_go_to_the_first_declared():
    w = pick_winner([_scored("a", -90.0, 0.3), _scored("b", -89.0, 0.4), _scored("c", -95.0)])
    assert (w["name"], w["runner_up"]) == ("b", "a")
    assert w["margin"] == pytest.approx(1.0) and w["margin_se"] == pytest.approx(0.5) and w["separated"] is False
    assert pick_winner([_scored("a", -90.0, 0.1), _scored("b", -89.0, 0.1)])["separated"] is True
    assert pick_winner([_scored("first", -90.0), _scored("second", -90.0)])["name"] == "first"
    # a failed or non-finite configuration takes no part; all failed is an error naming them
    failed = {**config("bad"), "elbo": None, "error": "diverged: nan"}
    w = pick_winner([failed, _scored("nan", float("nan")), _scored("ok", -99.0)])
    assert w["name"] == "ok" and "runner_up" not in w
    with pytest.raises(RuntimeError, match="every configuration of the search failed: diverged: nan"):
        pick_winner([failed])


def test_final_options_take_the_winners_and_drop_the_variance_objective_in_discrete_time():
    win = {"model": {"schedule": "learned-density", "fourier": [6, 8]},
           "trainer": {"estimator_kwargs": {"schedule_objective": "variance", "sampler": "importance"}}}
    assert final_options(win, {"T": None}, {}) == ({"T": None, **win["model"]}, win["trainer"])
    assert final_options(win, {"T": 1000}, {"grad_clip": 5.0}) == (
        {"T": 1000, **win["model"]}, {"grad_clip": 5.0, "estimator_kwargs": {"sampler": "importance"}})
    only = {"model": {}, "trainer": {"estimator_kwargs": {"schedule_objective": "variance"}}}
    assert final_options(only, {"T": 1000}, {}) == ({"T": 1000}, {})
    # the top-down row keeps its gradient clipping under every configuration of its space
    assert final_options(SPACES["hvae-td"][6], {"T": None}, {"grad_clip": 20000.0})[1] == {
        "kl_warmup": 0, "free_bits": 0.5, "grad_clip": 20000.0}


def test_search_writes_each_result_at_once_and_resumes_without_retraining(tmp_path):
    path, calls, seen = str(tmp_path / "search.json"), [], []
    configs = [config("a", {"latent_dim": 8}), config("b", {"latent_dim": 16}), config("c", {"latent_dim": 4})]

    def fit(c):
        calls.append(c["name"])
        if c["name"] == "c":
            raise TrainingDiverged("loss nan at step 3")
        seen.append([r["name"] for r in json.load(open(path))["vae"]["configs"]] if calls[1:] else [])
        return {"elbo": -100.0 + c["model"]["latent_dim"], "elbo_se": 0.5, "steps": 5, "train_seconds": 1.0}

    s = run_search("vae", configs, path, fit, "5 steps", log=lambda line: None)
    assert calls == ["a", "b", "c"] and s["winner"]["name"] == "b"
    assert seen == [[], ["a"]]  # each result was in the JSON before the next configuration started
    assert s["configs"][2]["error"] == "diverged: loss nan at step 3" and s["configs"][2]["elbo"] is None
    assert json.load(open(path))["vae"] == s
    # rerun: nothing finished is trained again (a diverged one would diverge again: same seed), a configuration
    # whose options changed is
    calls.clear()
    logs = []
    changed = [configs[0], config("b", {"latent_dim": 12}), configs[2]]
    s2 = run_search("vae", changed, path, fit, "5 steps", log=logs.append)
    assert calls == ["b"] and s2["configs"][1]["elbo"] == -88.0 and s2["winner"]["name"] == "b"
    assert logs[0] == f"== search vae/a: already in {path}, skipped"
    lines = search_lines({"vae": s2})
    assert "| a | latent_dim=8 | -92.00 ± 0.50 | 5 | 1 |" in lines and "| c | latent_dim=4 | diverged: loss nan at step 3 | – | 0 |" in lines
    assert "Winner: **b**, Δ = 4.00 ± 0.71 nats over a (more than two SEs)." in lines


def test_trainer_builds_its_estimator_with_the_configs_estimator_options(tmp_path):
    from hlvm.data import load_dataset
    from hlvm.training import Trainer

    cfg = TrainConfig(model="vdm", data="digits", steps=1, batch_size=32, out=str(tmp_path / "run"), progress=False,
                      model_kwargs={"schedule": "learned-density", "width": 16, "depth": 1},
                      estimator_kwargs={"sampler": "importance", "schedule_objective": "variance"})
    trainer = Trainer(cfg, load_dataset("digits", split="validation"), log=lambda line: None)
    assert trainer.estimator.sampler_kind == "importance" and trainer.estimator.schedule_objective == "variance"
    assert trainer.bound_estimator is trainer.estimator and trainer.fit()["steps"] == 1
    with pytest.raises(ValueError, match="estimator_kwargs must be a dict, got list"):
        TrainConfig(estimator_kwargs=["sampler"]).validate()


def test_every_configuration_of_a_space_is_a_distinct_run():
    """Options are set on top of the row's own, so a configuration that drops an option of the row
    (warm-up, free bits) must switch it off explicitly; otherwise it silently repeats another."""
    for row, space in SPACES.items():
        _, _, options, trainer_options = next(r for r in ROWS if r[0] == row)
        runs = [json.dumps(final_options(c, options, trainer_options), sort_keys=True) for c in space]
        assert len(set(runs)) == len(runs), row
