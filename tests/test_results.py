"""``make results``'s pipeline end to end on the smoke profile (tiny budgets): rows, fields, resume."""

import json

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
    # resumable: a second run finds every row done
    logs.clear()
    run_results("smoke", out=str(tmp_path / "docs"), runs=str(tmp_path / "runs"), log=logs.append)
    assert sum("already in" in line for line in logs) == len(ROWS)


def test_results_page_shows_the_schedule_variance_benchmark_when_its_json_is_there(tmp_path):
    from hlvm.reports.results import SCHEDULE_JSON, write_page

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
