"""``make results``'s pipeline end to end on the smoke profile (tiny budgets): the search, rows, fields,
resume; the page's k̂ notes and published anchors."""

import json

import numpy as np
import pytest

from hlvm.reports.page import khat_note, write_page
from hlvm.reports.results import ROWS, run_results


def test_results_pipeline_smoke_and_resume(tmp_path):
    logs = []
    res = run_results("smoke", out=str(tmp_path / "docs"), runs=str(tmp_path / "runs"), log=logs.append)
    rows = {r["row"]: r for r in res["rows"]}
    assert list(rows) == [name for name, *_ in ROWS]
    saved = json.load(open(tmp_path / "docs" / "results-smoke.json"))
    assert [r["row"] for r in saved["rows"]] == list(rows)
    for r in rows.values():
        for key in ("model", "dataset", "n_train", "n_test", "test_elbo_nats", "iwae_nats", "iwae_k", "pfode_bound_nats",
                    "bits_per_dim", "steps", "epochs", "train_seconds", "threads", "device", "git_commit"):
            assert key in r, key
        assert r["test_elbo_nats"] < 0 and r["steps"] == 20
    # one model per row: the continuous-time VDM has a PF-ODE bound and no IWAE; the T = 1000 VDM its own IWAE
    assert rows["vdm"]["iwae_nats"] is None and rows["vdm"]["pfode_bound_nats"] < 0
    assert rows["vdm-T1000"]["iwae_nats"] < 0 and rows["vdm-T1000"]["pfode_bound_nats"] is None
    assert rows["vae"]["iwae_nats"] < 0 and rows["vae"]["pfode_bound_nats"] is None
    page = (tmp_path / "docs" / "results-smoke.md").read_text()
    assert "| vae |" in page and "Published anchors" in page
    _check_search(tmp_path, rows, page)
    _check_paired(tmp_path, rows, saved, page)
    assert 0 <= rows["vae"]["khat_frac_gt_0.7"] <= 1 and rows["vdm"]["khat_frac_gt_0.7"] is None
    # resumable: a second run finds every row done
    logs.clear()
    run_results("smoke", out=str(tmp_path / "docs"), runs=str(tmp_path / "runs"), log=logs.append)
    assert sum("already in" in line for line in logs) == len(ROWS)
    # a row to redo finds its search's configurations done (not retrained) and its winner's run trained
    saved["rows"] = [r for r in saved["rows"] if r["row"] != "vae"]
    (tmp_path / "docs" / "results-smoke.json").write_text(json.dumps(saved))
    logs.clear()
    again = run_results("smoke", out=str(tmp_path / "docs"), runs=str(tmp_path / "runs"), log=logs.append)
    assert [line.split(":")[0] for line in logs if "already in" in line] == \
        ["== search vae/latent-20", "== search vae/latent-32"] + [f"== {name}" for name, *_ in ROWS[1:]]
    vae = next(r for r in again["rows"] if r["row"] == "vae")
    assert vae["search"] == rows["vae"]["search"] and vae["test_elbo_nats"] == rows["vae"]["test_elbo_nats"]


def _check_paired(tmp_path, rows, saved, page):
    """Per-image bounds beside the JSON, and every pair of rows with its paired difference: Δ is
    the difference of the two rows' reported means (same images), its SE that of the per-image
    differences, recomputed here with numpy from the saved values."""
    values = {}
    for name, r in rows.items():
        with np.load(tmp_path / "docs" / r["per_image"]) as f:
            values[name] = {k: f[k].astype(np.float64) for k in f.files}
        assert len(values[name]["elbo"]) == r["n_test_elbo"]
        assert values[name]["elbo"].mean() == pytest.approx(r["test_elbo_nats"], abs=1e-3)  # float32 files
    assert set(values["vae"]) == {"elbo", "iwae"} and set(values["vdm"]) == {"elbo", "pfode"}
    elbo = [e for e in saved["paired"] if e["bound"] == "elbo"]
    assert len(elbo) == len(rows) * (len(rows) - 1) // 2
    for e in elbo:
        d = values[e["a"]]["elbo"] - values[e["b"]]["elbo"]
        assert e["delta"] >= 0 and e["delta"] == pytest.approx(rows[e["a"]]["test_elbo_nats"] - rows[e["b"]]["test_elbo_nats"], abs=1e-3)
        assert e["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(len(d)), rel=1e-9)
        assert e["share_a_gt_b"] == pytest.approx((d > 0).mean())
    tight = next(e for e in saved["paired"] if e["bound"] == "tightest" and {e["a"], e["b"]} == {"vae", "vdm"})
    assert tight["bounds"] == {"vae": "iwae", "vdm": "pfode"} and tight["n"] == min(rows["vae"]["n_test_iwae"],
                                                                                      rows["vdm"]["n_test_pfode"])
    assert "## Paired differences" in page and f"| {elbo[0]['a']} | {elbo[0]['b']} | elbo | {elbo[0]['delta']:.2f} |" in page


def _check_search(tmp_path, rows, page):
    """The smoke profile's search: two VAE configurations at 5 steps on the validation split, scored on
    its 64 first held-out images; the final row trains the winner; the others search nothing."""
    search = rows["vae"]["search"]
    assert [c["name"] for c in search["configs"]] == ["latent-20", "latent-32"]
    for c in search["configs"]:
        assert c["elbo"] < 0 and c["elbo_se"] > 0 and c["n_valid"] == 64 and c["steps"] == 5 and c["train_seconds"] > 0
    best = max(search["configs"], key=lambda c: c["elbo"])
    assert search["winner"]["name"] == best["name"] and search["budget"] == "5 steps on 1,247 images"
    # the final row: the row's own base options, the winner's on top
    assert search["base"] == {"model": {"latent_dim": 20, "hidden": 400}, "trainer": {}}
    assert rows["vae"]["options"] == {"model": {"T": None, "latent_dim": 20, "hidden": 400, **best["model"]}, "trainer": {}}
    assert "Base of every configuration: latent_dim=20, hidden=400; each sets its options on top." in page
    assert all(rows[name]["search"] is None for name in rows if name != "vae")
    assert json.load(open(tmp_path / "docs" / "results-smoke-search.json"))["vae"] == search
    assert "### vae (5 steps on 1,247 images)" in page and f"Winner: **{best['name']}**, Δ = " in page
    assert f"| **{best['name']}** |" in page and "| latent-32 | latent_dim=32 |" in page.replace("**", "")


def test_results_page_shows_the_schedule_variance_benchmark_when_its_json_is_there(tmp_path):
    from hlvm.reports.page import SCHEDULE_JSON

    row = {"schedule": "density-from-cosine", "objective": "variance", "var_uniform": 16.34, "var_antithetic": 11.0,
           "test_elbo": -111.5, "test_elbo_se": 1.3, "bpd": 0.2}
    res = {"info": {"library": "abc1234", "threads": 2}, "steps": 1500, "tune_steps": 600, "batch": 128, "draws": 400,
           "eval_examples": 500, "frozen": {"density-variance": row}, "joint": {"cosine": {**row, "schedule": "cosine"}}}
    page = tmp_path / "results.md"
    write_page({"rows": []}, "cpu", str(page))
    assert "variance-minimising" not in page.read_text()
    (tmp_path / SCHEDULE_JSON).write_text(json.dumps(res))
    write_page({"rows": []}, "cpu", str(page))
    text = page.read_text()
    assert "| density-variance | density-from-cosine | variance | 16.34 | 11.00 | -111.50 ± 1.30 |" in text
    assert "| cosine | cosine | variance | 16.34 |" in text and "abc1234" in text


def _row(share, iwae=-90.0):
    return {"row": "vae", "iwae_nats": iwae, "khat_frac_gt_0.7": share, "n_test_iwae": 1000, "iwae_k": 5000}


def test_khat_note_says_what_the_share_implies_for_the_iwae_figure():
    assert khat_note(_row(0.253)) == ("vae: k̂ > 0.7 on 25% of 1,000 images: the IWAE figure -90.00 is a conservative "
                                      "bound (its NLL 90.00 likely overstates the model's) and more K would likely "
                                      "raise it; its ± does not cover this gap.")
    assert khat_note(_row(0.04)).startswith("vae: k̂ > 0.7 on 4% of 1,000 images: the IWAE figure -90.00 rests mostly")
    assert khat_note(_row(0.0)).startswith("vae: k̂ ≤ 0.7 on all 1,000 images: the K = 5,000 estimate is reliable")
    assert khat_note(_row(None, iwae=None)) is None


def test_page_lists_each_anchor_with_its_bound_and_protocol_and_the_khat_share(tmp_path):
    row = {**_row(0.42), "dataset": "mnist", "profile": "cpu", "test_elbo_nats": -99.0, "test_elbo_se": 0.26,
           "bits_per_dim": 0.18, "iwae_se": 0.8, "pfode_bound_nats": None, "khat_max": 2.5, "active_units": 20,
           "epochs": 20.0, "train_seconds": 120.0, "eval_seconds": 30.0, "threads": 2, "device": "CPU", "git_commit": "abc",
           "search": None}
    page = tmp_path / "results.md"
    write_page({"rows": [row]}, "cpu", str(page))
    text = page.read_text()
    for line in ("| VAE, 1 stochastic layer (Burda et al. 2016) | 86.76 | importance-weighted | dynamic binarization, K = 5,000 |",
                 "| VAE, 2 stochastic layers (Burda et al. 2016) | 85.33 | importance-weighted | dynamic binarization, K = 5,000 |",
                 "| IWAE, k = 50, 2 stochastic layers (Burda et al. 2016) | 82.90 | importance-weighted | dynamic binarization, "
                 "K = 5,000 |",
                 "| Efficient-VDVAE (Hazami et al. 2022) | 79.09 | ELBO | dynamic binarization |",
                 "| NVAE (Vahdat & Kautz 2020) | 78.01 | importance-weighted | dynamic binarization, K = 1,000 |",
                 "| PixelCNN (van den Oord et al. 2016) | 81.30 | exact | static binarization |"):
        assert line + "\n" in text, line
    assert text.count("| 86.76 |") == 1 and "| model | NLL | bound | protocol |" in text
    assert "| vae | -99.00 ± 0.26 | 0.1800 | -90.00 ± 0.80 (5000, 1000) | – | 2.50 | 42% | 20 | 20.0 | 120 | 30 | 2 |" in text
    assert "* vae: k̂ > 0.7 on 42% of 1,000 images: the IWAE figure -90.00 is a conservative" in text
    assert "still a lower bound on log p(x) in expectation (Burda et al. 2016)" in text and "Validation search" not in text


def test_cpu_profile_scores_the_whole_test_set_by_the_published_protocol():
    """IWAE with K = 5,000 (Burda et al. 2016) and the PF-ODE bound on every test image, the ELBO too."""
    from hlvm.reports.results import PROFILES, _iwae_budget
    from hlvm.zoo import VAE

    p = PROFILES["cpu"]
    assert p.data == "mnist" and p.K == 5000
    assert p.iwae_examples is None and p.pfode_examples is None and p.eval_examples is None
    assert _iwae_budget(p, VAE((1, 28, 28)), 10_000) == (5000, 10_000)


def _study_files(docs, elbo_with=-100.0, elbo_without=-101.0):
    (docs / "studies").mkdir(parents=True)
    for name, option, elbo in (("with", {"ema": 0.999}, elbo_with), ("without", {}, elbo_without)):
        (docs / "studies" / f"{name}.json").write_text(json.dumps(
            {"split": "validation", "train_options": option, "epochs": 3, "rows": {"hlvm-train": {"elbo": elbo}}}))
    return [({"ema": 0.999}, ("studies/with.json", "studies/without.json"))]


def test_a_row_trains_with_the_options_its_recipe_studies_chose(tmp_path, monkeypatch):
    """The final row's trainer options are the search winner's plus each study's option; the row's
    entry and the page record the study (validation ELBO with and without it)."""
    import dataclasses

    from hlvm.reports import results, studies

    monkeypatch.setitem(results.PROFILES, "smoke", dataclasses.replace(results.PROFILES["smoke"], studies=True))
    monkeypatch.setitem(studies.STUDIES, "vae", _study_files(tmp_path / "docs"))
    for model in ("hvae-bu", "hvae-td", "vdm"):
        monkeypatch.delitem(studies.STUDIES, model)
    real, seen = results._train_row, []

    def train_row(job, row, model, options, trainer_options, search=False):
        if search:
            return real(job, row, model, options, trainer_options, search)
        seen.append((row, trainer_options))
        raise KeyboardInterrupt  # the row's options are all this test needs

    monkeypatch.setattr(results, "_train_row", train_row)
    with pytest.raises(KeyboardInterrupt):
        run_results("smoke", out=str(tmp_path / "docs"), runs=str(tmp_path / "runs"), log=lambda *_: None)
    assert seen == [("vae", {"ema": 0.999})]
    entry = studies.study_entries("vae", str(tmp_path / "docs"))
    assert entry == [{"option": {"ema": 0.999}, "files": ["studies/with.json", "studies/without.json"], "epochs": 3,
                      "elbo_with": -100.0, "elbo_without": -101.0}]
    page = "\n".join(studies.study_lines([{"row": "vae", "studies": entry}]))
    assert "## Recipe studies" in page and "| vae | ema=0.999 | 3 | -100.00 | -101.00 | with.json, without.json |" in page
    older = "\n".join(studies.study_lines([{"row": "vae", "model": "vae"}, {"row": "vdm", "model": "vdm"}]))  # saved before
    assert "Trained before their family's study, without its option: vae." in older  # vdm: no study here


def test_a_missing_study_file_stops_make_results_before_any_training(tmp_path, monkeypatch):
    import dataclasses

    from hlvm.reports import results

    monkeypatch.setitem(results.PROFILES, "smoke", dataclasses.replace(results.PROFILES["smoke"], studies=True))
    monkeypatch.setattr(results, "_train_row", lambda *a, **k: pytest.fail("trained before checking the studies"))
    with pytest.raises(ValueError, match=r"study file .*pyro_example_vae_validation_ema_0_999.json is missing"):
        run_results("smoke", out=str(tmp_path / "docs"), runs=str(tmp_path / "runs"), log=lambda *_: None)
