"""``hlvm continuum``: the VAE → VDM continuum (hlvm.reports.continuum).  The smoke profile runs the
whole command; where two families are the same model, they give the same bound."""

import json

import pytest
import torch
from torch import nn

from hlvm.cli import main
from hlvm.data import digits
from hlvm.eval import evaluate
from hlvm.reports.continuum import FAMILIES, PROFILES, points, run_continuum
from models import VAE, TopDownHVAE

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

FIELDS = {"family", "L", "bound", "bound_type", "se", "elbo", "params", "epochs", "seconds"}


def test_the_smoke_profile_runs_every_point_writes_the_page_and_resumes(tmp_path):
    out, runs = tmp_path / "docs", tmp_path / "runs"
    assert main(["continuum", "--profile", "smoke", "--out", str(out), "--runs", str(runs)]) == 0
    result = json.loads((out / "continuum-smoke.json").read_text())
    pts = result["points"]
    assert [(e["family"], e["L"]) for e in pts] == points(PROFILES["smoke"])
    assert len({e["family"] for e in pts}) >= 4 and any(e["family"] == "vdm" and e["L"] is None for e in pts)
    for e in pts:
        assert FIELDS <= set(e), e
        assert e["bound_type"] == ("pfode" if e["L"] is None else "elbo" if e["family"] == "vdm" else "iwae")
        assert e["se"] > 0 and e["params"] > 0 and (out / e["per_image"]).is_file()
        if e["bound_type"] != "elbo":  # a guide's IWAE bound and the PF-ODE bound sit above the ELBO, within noise
            assert e["bound"] > e["elbo"] - 3 * (e["se"] + e["elbo_se"]), e
    page = (out / "continuum-smoke.md").read_text()
    assert "![continuum](continuum-smoke.png)" in page and (out / "continuum-smoke.png").stat().st_size > 10_000
    assert "the learned posterior over the fixed diffusion posterior (hvae − diffusion): L = 1:" in page
    assert "VDM ELBO at T = L minus the continuous-time ELBO" in page and "paired" in page
    log = []
    again = run_continuum("smoke", str(out), str(runs), log=log.append)  # resumes: every point is kept
    assert again["points"] == pts and sum("already in" in line for line in log) == len(pts)


def test_bad_profile_exits_2(tmp_path, capsys):
    assert main(["continuum", "--profile", "smoke", "--threads", "0", "--out", str(tmp_path)]) == 2
    assert "--threads" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown continuum profile"):
        run_continuum("nope", str(tmp_path))


class _TopDownEncoder(nn.Module):
    """x ↦ (loc, scale) of the one-layer top-down HVAE's q(z_1 | x): its bottom-up MLP, then q_top."""

    def __init__(self, td):
        super().__init__()
        self.up, self.q_top = td.up[0], td.q_top

    def forward(self, x):
        return self.q_top(self.up(x.flatten(1)))


def test_family_a_at_one_layer_is_a_vae_with_the_same_networks():
    """Family (a) at L = 1 *is* a VAE: given its networks, hlvm's VAE gives the same ELBO and IWAE
    bound from the same seed (to rounding)."""
    torch.manual_seed(0)
    td = TopDownHVAE((1, 8, 8), layers=1, latent_dim=4, hidden=16)
    vae = VAE((1, 8, 8), latent_dim=4, hidden=16, encoder=_TopDownEncoder(td), decoder=td.decoder)
    x = digits().test[:40]
    a, b = evaluate(td, x, K=20, seed=5, breakdown=False), evaluate(vae, x, K=20, seed=5, breakdown=False)
    assert a["elbo"] == pytest.approx(b["elbo"], abs=1e-4)
    assert a["iwae"] == pytest.approx(b["iwae"], abs=1e-4)


def test_fixed_posterior_families_coincide_at_one_layer():
    """At L = 1 there is no transition: (c) and (d) are one model — same parameters, same bound."""
    models = []
    for transition in ("gaussian", "denoiser"):
        torch.manual_seed(0)
        models.append(TopDownHVAE((1, 8, 8), layers=1, hidden=16, posterior="diffusion", transition=transition))
    c, d = models
    assert {k: v.shape for k, v in c.state_dict().items()} == {k: v.shape for k, v in d.state_dict().items()}
    x = digits().test[:40]
    assert evaluate(c, x, K=10, seed=1, breakdown=False) == pytest.approx(evaluate(d, x, K=10, seed=1, breakdown=False))


def test_every_family_builds_at_every_depth_of_the_cpu_profile():
    from hlvm.reports.continuum import _config
    from hlvm.registry import build_model

    p = PROFILES["cpu"]
    assert len(p.families) >= 4 and len(p.depths) >= 5
    for family, L in points(p):
        cfg = _config(p, family, L, "unused")
        fields = {"T": cfg.T} if FAMILIES[family][1] == "vdm" else {"layers": cfg.layers}
        m = build_model(cfg.model, (1, 28, 28), "binary", **fields, **cfg.model_kwargs)
        assert sum(q.numel() for q in m.parameters()) > 0
