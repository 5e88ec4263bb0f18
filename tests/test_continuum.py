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
from hlvm.zoo import VAE, TopDownHVAE

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


def test_the_recipe_fits_the_budget_fixed_posteriors_train_on_the_elbo():
    from hlvm.reports.continuum import _config

    p = PROFILES["cpu"]
    steps = p.epochs * (60000 // p.batch_size)
    for family, L in points(p):
        cfg = _config(p, family, L, "unused", 60000)
        if family in ("diffusion", "diffusion-denoiser"):  # q is fixed: nothing to collapse
            assert cfg.kl_warmup == 0 and cfg.free_bits == 0, family
        elif family in ("hvae", "hvae-shared"):  # the recipe's remedies, the warm-up within the budget
            assert cfg.kl_warmup == round(p.kl_warmup_share * steps) < steps and cfg.free_bits == 0.5, family
    assert p.kl_warmup_share * steps < 2000  # the class recipe's warm-up would outlast this budget


@pytest.mark.parametrize("likelihood", ["binary", "8bit"])
def test_family_d_predicts_what_the_vdm_predicts(likelihood):
    """Family (d)'s denoiser has VDM's parameterization for the same data (logits of x for binary data:
    ε-prediction divides by α ≈ 0.05 at the top level, −107,791 nats at L = 2 in the first run)."""
    from hlvm.zoo import VDM, TopDownHVAE

    td = TopDownHVAE((1, 8, 8), likelihood, layers=2, posterior="diffusion", transition="denoiser", hidden=8)
    vdm = VDM((1, 8, 8), likelihood, T=1, width=8, depth=1)
    assert td.denoisers[0].parameterization == vdm.denoiser.parameterization
    with pytest.raises(ValueError, match="unknown parameterization 'bogus'"):
        TopDownHVAE((1, 8, 8), likelihood, parameterization="bogus")


class _VDMDecoder(nn.Module):
    """VDM's own decoder p(x | z_0) (Bernoulli logits 2α₀z/σ₀²), as a module the top-down HVAE can use.
    It holds the VDM's schedule and likelihood, not the VDM (whose chain would make the HVAE a chain model)."""

    def __init__(self, vdm):
        super().__init__()
        self.schedule, self.from_z0, self.shape = vdm.schedule, vdm.likelihood.from_z0, vdm.data_shape

    def forward(self, z):
        g0 = self.schedule.gamma(z.new_zeros(()))
        return self.from_z0(z.reshape(-1, *self.shape), g0).base_dist.logits  # (B, D) -> (B, 1, 8, 8)


def _diffusion_pair(T: int):
    """Family (d) with T + 1 latent layers and ``VDM(T)`` built from ONE denoiser, one decoder and
    aligned levels: the HVAE's levels t_l = l/(T+1) on a linear γ from A to γ_max land on VDM's
    t_i = i/T, i = l − 1, on its linear γ from γ_min to γ_max when A = ((T+1)γ_min − γ_max)/T."""
    from hlvm.diffusion.schedules.fixed import LinearSchedule
    from hlvm.zoo import VDM

    g0, g1 = -2.0, 4.0
    torch.manual_seed(0)
    vdm = VDM((1, 8, 8), T=T, schedule=LinearSchedule(g0, g1), width=16, depth=1, parameterization="eps")
    td = TopDownHVAE((1, 8, 8), layers=T + 1, hidden=16, shared=True, posterior="diffusion", transition="denoiser",
                     schedule=LinearSchedule(((T + 1) * g0 - g1) / T, g1))
    td.denoisers = nn.ModuleList([vdm.denoiser])
    td.decoder = _VDMDecoder(vdm)
    return td, vdm


def _log_weights(model, guide, x, values=None):
    """log p(x, z) − log q(z | x) per example, at the guide's draw (or at ``values``)."""
    from pyro import poutine

    if values is None:
        q = poutine.trace(guide).get_trace(x)
        p = poutine.trace(poutine.replay(model, trace=q)).get_trace(x)
    else:  # conditioned sites count as observed, which replay refuses: condition both programs
        q = poutine.trace(poutine.condition(guide, data=values)).get_trace(x)
        p = poutine.trace(poutine.condition(model, data=values)).get_trace(x)
    q.compute_log_prob(), p.compute_log_prob()
    total = lambda tr: sum(s["log_prob"] for s in tr.nodes.values() if s["type"] == "sample")  # noqa: E731
    return total(p) - total(q), q


@pytest.mark.filterwarnings("ignore::hlvm.eval.psis.ParetoKWarning")  # untrained nets: heavy tails in both, alike
def test_family_d_is_a_vdm_with_one_fewer_level_and_its_decoder():
    """Family (d) is VDM(T) with T + 1 latent layers (VDM's z_0 … z_T) when both use one denoiser, one
    decoder and aligned levels: every draw of the HVAE's guide has the VDM's log weight to rounding,
    and the two models' default estimators (TraceMeanField_ELBO; DiffusionELBO) agree within their SE."""
    T = 4
    td, vdm = _diffusion_pair(T)
    x = digits().test[:200]
    with torch.no_grad():
        w_td, q = _log_weights(td.model, td.guide, x)
        renamed = {f"z_{l - 1}": q.nodes[f"z_{l}"]["value"].reshape(-1, 1, 8, 8) for l in range(1, T + 2)}
        w_vdm, _ = _log_weights(vdm.model, vdm.guide, x, values=renamed)
    assert w_td.shape == (200,) and torch.allclose(w_td, w_vdm, rtol=1e-5, atol=1e-3)
    a = evaluate(td, x, K=100, seed=3, per_example=True)
    b = evaluate(vdm, x, K=100, seed=4, per_example=True)
    assert a["estimator"] != b["estimator"]
    for bound in ("elbo", "iwae"):
        d = torch.as_tensor(a["per_example"][bound]) - torch.as_tensor(b["per_example"][bound])
        se = float(d.std() / len(d) ** 0.5)
        assert abs(float(d.mean())) < 4 * se + 1e-3, (bound, float(d.mean()), se)


def test_the_trend_in_words_names_who_leads_and_where_the_lead_changes_hands():
    from hlvm.reports.continuum_page import _trend

    assert _trend([(1, 75.0, 0.8), (2, 50.0, 0.7), (16, 14.0, 0.5), (32, -5.2, 0.6)], "a", "d") == \
        " — the lead changes hands between L = 16 and L = 32: d leads at L = 32"
    assert _trend([(1, 3.0, 0.1), (32, 9.0, 0.4)], "a", "b") == \
        " — a leads at every depth measured, by more at L = 32 than at L = 1"
    assert _trend([(1, 3.0, 0.1), (32, 0.1, 0.4)], "a", "b") == " — a leads at L = 1, neither at L = 32"
    assert _trend([(1, 3.0, 0.1)], "a", "b") == ""
