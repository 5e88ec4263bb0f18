""":func:`hlvm.eval.score`: a trained model scored by its own bounds, each one :func:`hlvm.evaluate` call from
the same seed — the numbers ``hlvm compare`` and ``make results`` report."""

import warnings

import pytest
import torch

import hlvm.eval.scores as score_module
from hlvm.data import digits
from hlvm.eval import ParetoKWarning, evaluate, own_bounds, score
from hlvm.programs.elbo import DiffusionELBO
from hlvm.zoo import VAE, VDM

from conftest import DEVICE, DTYPE

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.fixture(scope="module")
def test_x():
    return digits().test[:24]


def _numbers(out: dict) -> dict:
    """``out`` without its wall-clock times (the only entries that differ between identical runs);
    NaN as a string, so that two equal results compare equal."""
    return {k: ("nan" if isinstance(v, float) and v != v else v) for k, v in out.items() if "seconds" not in k}


def test_a_vae_gets_the_elbo_and_its_iwae_bound_from_the_same_seed(test_x):
    vae = VAE((1, 8, 8), "binary", latent_dim=4, hidden=16).to(device=DEVICE, dtype=DTYPE)
    x = test_x.to(DEVICE, DTYPE)
    assert own_bounds(vae) == {"iwae": True, "pfode": False}
    s = score(vae, x, seed=3, eval_examples=20, K=30, iwae_examples=10, pfode_examples=5)
    # exactly the evaluations it names: same examples, same seed, so the same numbers to the bit
    assert _numbers(s.evaluation) == _numbers(evaluate(vae, x[:20], seed=3))
    assert _numbers(s.iwae) == _numbers(evaluate(vae, x[:10], K=30, seed=3, breakdown=False))
    assert s.iwae["n_examples"] == 10 and s.iwae["K"] == 30
    assert s.pfode == {} and s.seconds > 0
    # 0 examples or K = 0: no IWAE bound
    assert score(vae, x, K=30, iwae_examples=0).iwae == {} and score(vae, x, K=0).iwae == {}


def test_a_continuous_time_vdm_gets_the_pfode_bound_in_place_of_the_iwae(test_x):
    vdm = VDM((1, 8, 8), "binary", T=None, width=16, depth=1).to(device=DEVICE, dtype=DTYPE)
    x = test_x.to(DEVICE, DTYPE)
    assert own_bounds(vdm) == {"iwae": False, "pfode": True}
    s = score(vdm, x, seed=1, eval_examples=8, K=30, iwae_examples=8, pfode_examples=2)
    assert s.iwae == {}
    assert _numbers(s.pfode) == _numbers(evaluate(vdm, x[:2], seed=1, breakdown=False, pfode=True))
    assert s.pfode["n_examples"] == 2 and s.evaluation["n_examples"] == 8
    assert score(vdm, x, eval_examples=4, pfode_examples=0).pfode == {}


def test_a_discrete_time_vdm_gets_its_own_iwae_bound_and_no_pfode_bound():
    vdm = VDM((1, 8, 8), "binary", T=3, width=16, depth=1)
    assert own_bounds(vdm) == {"iwae": True, "pfode": False}


def test_khat_warnings_are_returned_and_other_warnings_pass(test_x, monkeypatch):
    def fake_evaluate(model, x, K=0, **kw):
        if K:
            warnings.warn("max Pareto k̂ = 0.90 > 0.7", ParetoKWarning)
            warnings.warn("something else", UserWarning)
        return {"n_examples": x.shape[0]}

    monkeypatch.setattr(score_module, "evaluate", fake_evaluate)
    vae = VAE((1, 8, 8), "binary", latent_dim=2, hidden=8)
    with pytest.warns(UserWarning, match="something else") as record:
        s = score(vae, torch.zeros(4, 1, 8, 8), K=30)
    assert s.khat_warnings == ["max Pareto k̂ = 0.90 > 0.7"]
    assert not [w for w in record if issubclass(w.category, ParetoKWarning)]


def test_a_continuous_chain_is_scored_with_stratified_nodes():
    """The ELBO column of a continuous-time VDM: ELBO_NODES stratified nodes per example — an
    unbiased estimate of the same ELBO (within a few SEs of the one-draw estimate) with a smaller
    standard error; other models and exact or weighted estimators are scored as given."""
    from hlvm.eval.scores import ELBO_NODES, scoring_elbo

    vdm = VDM((1, 8, 8), "binary", T=None, width=32, depth=1).to(device=DEVICE, dtype=DTYPE)
    x = digits().test[:200].to(device=DEVICE, dtype=DTYPE)
    chosen = scoring_elbo(vdm, DiffusionELBO())
    assert chosen.exact and chosen.eval_nodes == ELBO_NODES
    for same in (DiffusionELBO(exact=True), DiffusionELBO(weighting="sigmoid")):
        assert scoring_elbo(vdm, same) is same
    # discrete time: all T terms where T is small, else ELBO_NODES systematic draws per example
    assert scoring_elbo(VDM((1, 8, 8), "binary", T=4, width=32, depth=1), DiffusionELBO()).exact is True
    long = VDM((1, 8, 8), "binary", T=200, width=32, depth=1).to(device=DEVICE, dtype=DTYPE)
    many = scoring_elbo(long, DiffusionELBO())
    assert not many.exact and many.num_t == ELBO_NODES and many.sampler_kind == "antithetic"
    one_long = evaluate(long, x, elbo=DiffusionELBO(), seed=0)
    exact_long = evaluate(long, x, elbo=DiffusionELBO(exact=True), seed=0)  # all 200 terms: no time noise
    s_long = score(long, x, DiffusionELBO(), seed=0)
    assert s_long.evaluation["nats_se"] < one_long["nats_se"]
    assert abs(s_long.evaluation["elbo"] - exact_long["elbo"]) < 0.25 * one_long["nats_se"]
    one = evaluate(vdm, x, elbo=DiffusionELBO(), seed=0)
    s = score(vdm, x, DiffusionELBO(), seed=0, pfode_examples=0)
    assert s.evaluation["estimator"] == "DiffusionELBO" and s.evaluation["nats_se"] < one["nats_se"]
    assert abs(s.evaluation["elbo"] - one["elbo"]) < 4 * one["nats_se"]


def _starved(elbo: DiffusionELBO, model, x):
    """``elbo`` after one loss (its sampler created), its importance history starved on early times:
    the state the training history of hlvm demo's VDM reached (36 of 64 bins at p ≈ 0)."""
    elbo.loss(model.model, model.guide, x)
    (sampler,) = elbo.samplers.values()
    sampler.count.fill_(sampler.warmup)
    sampler.sq_mean.fill_(1.0)
    sampler.sq_mean[: sampler.bins // 2] = 0.0
    return elbo


@pytest.mark.parametrize("T", [None, 5])
def test_scores_do_not_depend_on_the_training_time_sampler(test_x, T, tmp_path):
    """A model that trained with importance-sampled times is scored as if it had not: the ELBO column
    and the trainer's periodic test ELBO use antithetic (or stratified) times, whatever the sampler's
    history."""
    from hlvm.eval.scores import scoring_elbo
    from hlvm.training import Trainer, TrainConfig

    vdm = VDM((1, 8, 8), "binary", T=T, width=16, depth=1).to(device=DEVICE, dtype=DTYPE)
    x = test_x.to(DEVICE, DTYPE)
    trained = _starved(DiffusionELBO(sampler="importance", num_t=2), vdm, x[:4])
    plain = DiffusionELBO(num_t=2)
    for_eval = trained.for_evaluation()
    assert for_eval.sampler_kind == "antithetic" and for_eval.num_t == 2 and plain.for_evaluation() is plain
    assert _numbers(evaluate(vdm, x, elbo=scoring_elbo(vdm, trained), seed=2)) == \
        _numbers(evaluate(vdm, x, elbo=scoring_elbo(vdm, plain), seed=2))
    # the trainer's periodic evaluation: the same numbers as a fresh antithetic bound's
    cfg = TrainConfig(model="vdm", data="digits", steps=1, T=T, out=str(tmp_path), progress=False, eval_examples=24,
                      model_kwargs={"width": 16, "depth": 1}, estimator_kwargs={"sampler": "importance"})
    trainer = Trainer(cfg, digits())
    _starved(trainer.bound_estimator, trainer.model, trainer.data.test[:4].to(trainer.device, trainer.dtype))
    got = trainer.evaluate_test()
    want = evaluate(trainer.model, trainer.data.test[:24], elbo=DiffusionELBO(), batch_size=250, seed=cfg.seed + 1)
    assert got["elbo"] == want["elbo"]
