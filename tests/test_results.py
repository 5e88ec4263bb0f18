"""``make results``'s pipeline end to end on the smoke profile (tiny budgets): rows, fields, resume."""

import json

from hlvm.results import ROWS, run_results


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
