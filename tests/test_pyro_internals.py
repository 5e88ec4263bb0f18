"""hlvm.training.pyro_internals: the private parts of Pyro (and torch) that the recorded step relies
on are still there, with the types and meaning it expects, and a record made through the shim is
Pyro's own step.  A failure here means: Pyro changed; update the shim (and its list of internals)."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.params.param_store import ParamStoreDict

from hlvm.training import pyro_internals as shim
from hlvm.training.compile import RecordedLoss


@pytest.mark.parametrize("module", shim.READOUT_MODULES, ids=lambda m: m.__name__)
def test_the_readouts_are_module_globals_that_the_elbos_call(module, monkeypatch):
    for name in shim.READOUTS:
        assert callable(getattr(module, name)), f"{module.__name__}.{name} is gone"
    calls = []
    real = module.torch_item
    monkeypatch.setattr(module, "torch_item", lambda v: calls.append(v) or real(v))
    elbo = Trace_ELBO() if module.__name__.endswith("trace_elbo") else TraceMeanField_ELBO()
    elbo.loss(_model, _guide, torch.zeros(3))
    assert calls, f"{type(elbo).__name__}.loss no longer reads its loss through {module.__name__}.torch_item"


def test_without_readouts_makes_them_the_identity_and_restores_them():
    before = {(m.__name__, n): getattr(m, n) for m in shim.READOUT_MODULES for n in shim.READOUTS}
    v = torch.tensor(1.5)
    with shim.without_readouts():
        for m in shim.READOUT_MODULES:
            assert all(getattr(m, n)(v) is v for n in shim.READOUTS)
    assert before == {(m.__name__, n): getattr(m, n) for m in shim.READOUT_MODULES for n in shim.READOUTS}


def test_the_param_store_keeps_its_params_in_the_three_dicts():
    store = pyro.get_param_store()
    assert isinstance(store, ParamStoreDict)
    loc = pyro.param("loc", torch.zeros(2))
    scale = pyro.param("scale", torch.ones(2), constraint=dist.constraints.positive)
    params, to_name, constraints = (getattr(store, name) for name in shim.STORE_DICTS)
    assert all(isinstance(d, dict) for d in (params, to_name, constraints))
    u = params["scale"]
    assert u is scale.unconstrained() and u.requires_grad and to_name[u] == "scale"  # name → leaf, leaf → name
    assert params["loc"] is loc.unconstrained() and constraints["scale"] is dist.constraints.positive
    assert isinstance(torch.nn.Linear(1, 1)._parameters, dict)  # torch's name → parameter


def test_param_slots_swap_and_restore_every_place():
    net = torch.nn.Linear(2, 1)
    pyro.module("net", net)
    store = pyro.get_param_store()
    params = [store._params["net$$$weight"], store._params["net$$$bias"]]
    slots = shim.ParamSlots(params, [net])
    assert slots.reached == {0, 1}
    books = [dict(getattr(store, name)) for name in shim.STORE_DICTS]
    stand_ins = [torch.zeros_like(p).requires_grad_(True) for p in params]
    with slots.swapped(stand_ins):
        assert net.weight is stand_ins[0] and store._params["net$$$bias"] is stand_ins[1]
        pyro.module("net", net)  # pyro.module rewrites the store when it meets the stand-ins
    assert net.weight is params[0] and net.bias is params[1]
    assert books == [dict(getattr(store, name)) for name in shim.STORE_DICTS]


def test_a_record_made_through_the_shim_is_pyros_own_step():
    """The recorded step goes through the shim, and a pure replay of its record equals Pyro's step
    at the same random state (loss and every gradient)."""
    from hlvm.training import compile as recorded_step
    from hlvm.zoo import VAE

    assert recorded_step.ParamSlots is shim.ParamSlots and recorded_step.without_readouts is shim.without_readouts
    vae = VAE((1, 4, 4), latent_dim=2, hidden=8)
    x = (torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0)) > 0.5).to(torch.get_default_dtype())
    notices = []
    rec = RecordedLoss(vae.model, vae.guide, TraceMeanField_ELBO(), check_every=10**6, log=notices.append)
    rec(x)  # Pyro's step; records through the shim
    rec(x)  # the first replay, checked against Pyro's
    pyro.set_rng_seed(3)
    loss, params, grads = rec(x)  # a pure replay
    assert rec.fallback is None and not notices and len(rec.records) == 1
    pyro.set_rng_seed(3)
    ref_loss, ref_params, ref_grads = rec.pyro_loss_and_grads(x)
    torch.testing.assert_close(loss, ref_loss)
    ref = {id(p): g for p, g in zip(ref_params, ref_grads)}
    assert set(ref) == {id(p) for p in params}
    for p, g in zip(params, grads):
        torch.testing.assert_close(g, ref[id(p)])


def _model(x):
    pyro.sample("x", dist.Normal(0.0, 1.0).expand(x.shape).to_event(1), obs=x)


def _guide(x):
    pass
