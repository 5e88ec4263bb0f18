"""The Hierarchy contract: a program written only to it trains, evaluates, compares, samples and
renders; a program breaking it gets a ValueError naming the missing piece; the estimator is chosen
from the program's DAG (one test per branch)."""

import warnings

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

import hlvm
from hlvm.data import load_dataset
from hlvm.estimators import default_estimator
from hlvm.registry import build_model, load_class
from hlvm.training import TrainConfig, Trainer
from hlvm.zoo import VAE, VDM, BottomUpHVAE, TopDownHVAE

from conftest import DEVICE, ROOT, user_hierarchy_class

MODELS_FILE = ROOT / "tests" / "programs" / "contract_models.py"
SPEC = f"{MODELS_FILE}:TwoLevelGaussianHVAE"

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _user(name, **kw):
    return load_class(f"{MODELS_FILE}:{name}")(**kw)


@pytest.mark.parametrize("name,message", [
    ("NoGuide", "no guide"),
    ("ObservesNothing", "observes no sample site"),
    ("ObservesTwice", r"observes \['a', 'b'\]; cannot tell which holds the data — set the class attribute observed"),
    ("NoDataPlate", "must sit in a plate over the examples"),
    ("BrokenModel", "RuntimeError: shapes do not fit"),
    ("UnregisteredParameters", "register none with Pyro"),
])
def test_contract_violations_name_the_missing_piece(name, message):
    with pytest.raises(ValueError, match=message):
        hlvm.check_hierarchy(_user(name))
    with pytest.raises(ValueError, match=message):  # and before any training, through the registry
        build_model(f"{MODELS_FILE}:{name}", (1, 8, 8))


def test_data_shape_is_optional_where_the_data_say_it():
    with pytest.raises(ValueError, match="no data_shape attribute .* pass example data"):
        hlvm.check_hierarchy(_user("NoDataShape"))
    hlvm.check_hierarchy(_user("NoDataShape"), x=torch.zeros(3, 1, 8, 8))
    assert build_model(f"{MODELS_FILE}:NoDataShape", (1, 8, 8)).data_shape == (1, 8, 8)  # from the command's data


def test_the_data_site_and_plate_are_read_from_the_trace_not_from_names():
    from hlvm.programs.roles import DataRoles, data_roles

    assert data_roles(_user("ObservesY")) == DataRoles("y", "batch")
    assert data_roles(_user("ObservesTwiceChosen")) == DataRoles("b", "data")  # the class attribute chooses
    assert data_roles(_user("ObservesTwice"), observed="a") == DataRoles("a", "data")
    with pytest.raises(ValueError, match="observed='c' is not an observed sample site"):
        data_roles(_user("ObservesTwice"), observed="c")
    for name in ("ObservesY", "ObservesTwiceChosen"):
        hlvm.check_hierarchy(_user(name))
    assert data_roles(VAE((1, 8, 8), latent_dim=2, hidden=8)) == DataRoles("x", "data")


def test_zoo_and_user_models_meet_the_contract():
    for m in (VAE((1, 8, 8), latent_dim=2, hidden=8), BottomUpHVAE((1, 8, 8), latent_dims=(2, 2), hidden=8),
              TopDownHVAE((1, 8, 8), layers=2, latent_dim=2, hidden=8), VDM((1, 8, 8), T=3, width=8, depth=1),
              user_hierarchy_class()(data_shape=(1, 8, 8), latent_dim=2, hidden=8), _user("TwoLevelGaussianHVAE")):
        hlvm.check_hierarchy(m)
        assert isinstance(m, hlvm.Hierarchy)


# ------------------------------------------------------------------ the estimator rule, per branch
def test_estimator_with_a_diffusion_chain_is_diffusion_elbo():
    assert type(default_estimator(VDM((1, 8, 8), T=3, width=8, depth=1))) is hlvm.DiffusionELBO
    user = user_hierarchy_class()(data_shape=(1, 8, 8), latent_dim=2, hidden=8)  # a chain inside a VAE
    assert type(default_estimator(user)) is hlvm.DiffusionELBO


def test_estimator_with_a_top_down_guide_is_trace_mean_field():
    for m in (VAE((1, 8, 8), latent_dim=2, hidden=8), TopDownHVAE((1, 8, 8), layers=3, latent_dim=2, hidden=8),
              _user("TwoLevelGaussianHVAE", order="top-down")):
        assert hlvm.check_mean_field(m).ok
        assert type(default_estimator(m)) is TraceMeanField_ELBO


def test_estimator_with_a_bottom_up_guide_is_trace_elbo():
    for m in (BottomUpHVAE((1, 8, 8), latent_dims=(2, 2), hidden=8), _user("TwoLevelGaussianHVAE", order="bottom-up")):
        check = hlvm.check_mean_field(m)
        assert not check.ok and check.site == "z_1"
        assert type(default_estimator(m)) is Trace_ELBO


# ------------------------------------------------------------------ every command on a contract-only program
def test_contract_only_hierarchy_trains_evaluates_samples_and_renders(tmp_path):
    data = load_dataset("digits")
    cfg = TrainConfig(model=SPEC, data="digits", steps=60, batch_size=64, lr=3e-3, eval_every=60,
                      eval_examples=300, out=str(tmp_path / "run"), progress=False, device=DEVICE.type)
    trainer = Trainer(cfg, data)
    assert type(trainer.estimator) is TraceMeanField_ELBO  # read from the DAG: a top-down guide
    before = trainer.evaluate_test()["elbo"]
    trainer.fit()
    after = trainer.history[-1]["test_elbo"]
    assert after > before + 5, (before, after)  # it learns (measured: ≈ −44 → ≈ −30 nats)

    m = trainer.model
    with warnings.catch_warnings():  # k̂ > 0.7 after 60 steps is reported, not an error here
        warnings.simplefilter("ignore", hlvm.ParetoKWarning)
        ev = hlvm.evaluate(m, data.test[:200], K=30, seed=0, elbo=Trace_ELBO())  # terms and total: one draw
    assert hlvm.evaluate(m, data.test[:20], seed=0)["estimator"] == "TraceMeanField_ELBO"  # the rule training used
    assert set(ev["kl"]) == {"z_1", "z_2"} and set(ev["active_units"]) == {"z_1", "z_2"}
    assert ev["reconstruction"] + ev["kl_total"] + ev["factor"] == pytest.approx(ev["nats"], rel=1e-9)
    assert ev["elbo"] - 1.0 < ev["iwae"] < 0  # IWAE_30 ≥ ELBO up to Monte Carlo noise; a bound on discrete data

    pyro.set_rng_seed(0)
    x = hlvm.sample(m, 16, return_mean=False)
    assert x.shape == (16, 1, 8, 8) and bool(((x == 0) | (x == 1)).all())
    p = hlvm.sample(m, 16)
    assert bool(((p > 0) & (p < 1)).all())

    g = hlvm.render(m, filename=tmp_path / "two_level.dot")
    assert "z<SUB>2</SUB>" in g.source and (tmp_path / "two_level.dot").exists()
    G_model, G_guide = hlvm.pair_graphs(m.model, m.guide, hlvm.example_input(m))
    assert hlvm.topological_order(G_model) == ["z_2", "z_1", "x"]
    assert hlvm.topological_order(G_guide) == ["z_2", "z_1"]


def test_register_a_user_class_by_name(monkeypatch):
    from hlvm import registry

    monkeypatch.setattr(registry, "_REGISTERED", dict(registry._REGISTERED))  # gone after the test: `render all` renders the zoo only
    cls = load_class(SPEC)
    hlvm.register("two-level-test", cls)
    m = build_model("two-level-test", (1, 8, 8), "binary")
    assert type(m) is cls
    with pytest.raises(ValueError, match="has no 'T' option"):
        build_model("two-level-test", (1, 8, 8), "binary", T=4)
    assert torch.isfinite(hlvm.sample(m, 2)).all()
