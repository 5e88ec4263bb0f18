"""hlvm.training.compile: the recorded SVI step equals Pyro's — loss, gradients and whole trajectories at the
same seed — for the zoo, a contract-only hierarchy and a diffusion chain; and it falls back to
Pyro, with one notice, wherever a record cannot be trusted."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.nn import PyroModule, pyro_method
from torch import nn

from hlvm.programs.chain import chains_of
from hlvm.training.compile import RecordedLoss, compile_step
from hlvm.estimators import default_estimator
from hlvm.training.free_bits import FreeBitsELBO
from hlvm.zoo import VAE, VDM, BottomUpHVAE, TopDownHVAE

from conftest import tensor
from programs.contract_models import TwoLevelGaussianHVAE

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

SHAPE = (1, 6, 6)


def _binary(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tensor((torch.rand((n,) + SHAPE, generator=g) > 0.5).double())


CASES = {  # each with the estimator hlvm picks from its DAG
    "vae": lambda: VAE(SHAPE, latent_dim=3, hidden=16),
    "hvae-bu": lambda: BottomUpHVAE(SHAPE, hidden=16),
    "hvae-td": lambda: TopDownHVAE(SHAPE, hidden=16),
    "vdm": lambda: VDM(SHAPE, width=16, depth=1),
    "vdm-T8": lambda: VDM(SHAPE, T=8, width=16, depth=1),
    "contract": lambda: TwoLevelGaussianHVAE(SHAPE),
    # the searched configurations of make results: a learned schedule (its inverse CDF indexes by a
    # 0-d tensor) trained on the variance objective, and free bits (a per-site penalty)
    "vdm-learned-density": lambda: VDM(SHAPE, width=16, depth=1, schedule="learned-density"),
    "vdm-importance": lambda: VDM(SHAPE, width=16, depth=1, schedule="learned-density"),
    "hvae-td-free-bits": lambda: TopDownHVAE(SHAPE, hidden=16, merge="residual"),
}

#: cases trained under another estimator than the default one (as the Trainer builds it)
ESTIMATORS = {
    "vdm-learned-density": lambda m: default_estimator(m, schedule_objective="variance"),
    # VDM's recipe: loss-aware importance-sampled times, whose history the record hands back (deferred_updates)
    "vdm-importance": lambda m: default_estimator(m, schedule_objective="variance", sampler="importance"),
    "hvae-td-free-bits": lambda m: FreeBitsELBO(50.0),  # above every layer's KL: the penalty acts from step 1
}


def _notices():
    seen = []
    return seen, seen.append


@pytest.mark.parametrize("name", sorted(CASES))
def test_recorded_loss_and_gradients_equal_pyros(name):
    model = CASES[name]()
    x = _binary(5)
    seen, log = _notices()
    estimator = ESTIMATORS.get(name, default_estimator)(model)
    rec = RecordedLoss(model.model, model.guide, estimator, check_every=10**6, log=log)
    rec(x)  # records (and is Pyro's step)
    pyro.set_rng_seed(7)
    rec(x)  # the first replay is checked against Pyro: still Pyro's numbers
    pyro.set_rng_seed(11)
    loss, params, grads = rec(x)  # a pure replay
    assert rec.fallback is None and not seen
    pyro.set_rng_seed(11)
    ref_loss, ref_params, ref_grads = rec.pyro_loss_and_grads(x)
    assert [id(p) for p in params] == [id(p) for p in ref_params] or {id(p) for p in params} == {id(p) for p in ref_params}
    ref = {id(p): g for p, g in zip(ref_params, ref_grads)}
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-9)
    for p, g in zip(params, grads):
        torch.testing.assert_close(g, ref[id(p)], rtol=1e-10, atol=1e-10)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", ["vae", "hvae-td", "vdm", "vdm-importance"])
def test_compiled_svi_follows_svi_step_for_step(name):
    """Same seed, same optimizer: the same losses and the same parameters (and, for the importance
    sampler, the same time-sampler history) after 40 steps — past the sampler's warm-up, so its
    learned density decides the times of the later steps."""
    x = _binary(6)
    runs = []
    for compiled in (False, True):
        pyro.clear_param_store()
        pyro.set_rng_seed(3)
        model = CASES[name]()
        opt = pyro.optim.Adam({"lr": 1e-2})
        elbo = ESTIMATORS.get(name, default_estimator)(model)
        samplers = [elbo.sampler_for(c) for c in chains_of(model)] if name == "vdm-importance" else []
        for sampler in samplers:  # few bins and a short warm-up: the history is in use within the run
            sampler.sq_mean, sampler.count, sampler.warmup = sampler.sq_mean[:4].clone(), sampler.count[:4].clone(), 2
        svi = compile_step(model.model, model.guide, elbo, opt, check_every=15) if compiled else \
            SVI(model.model, model.guide, opt, elbo)
        losses = [svi.step(x) for _ in range(40)]
        runs.append((losses, [p.detach().clone() for p in model.parameters()], [s.sq_mean.clone() for s in samplers]))
        if compiled:
            assert svi.recorded.fallback is None
        if samplers:
            assert bool((samplers[0].count >= 2).all())  # the importance density was in use
    (la, pa, ha), (lb, pb, hb) = runs
    assert la == pytest.approx(lb, rel=1e-9)
    for a, b in zip(pa, pb):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-11)
    for a, b in zip(ha, hb):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


def test_a_new_batch_shape_records_again_and_still_matches():
    model = VAE(SHAPE, latent_dim=3, hidden=16)
    rec = RecordedLoss(model.model, model.guide, TraceMeanField_ELBO(), check_every=10**6, log=_notices()[1])
    for n in (4, 4, 3, 3, 4):
        pyro.set_rng_seed(n)
        loss, params, grads = rec(_binary(n))
        pyro.set_rng_seed(n)
        ref_loss, _, _ = rec.pyro_loss_and_grads(_binary(n))
        torch.testing.assert_close(loss, ref_loss)
    assert len(rec.records) == 2 and rec.fallback is None


class _DiscreteLatent(PyroModule):
    """A guide with a Bernoulli (non-reparameterized) latent: its surrogate loss is not the ELBO."""

    def __init__(self):
        super().__init__()
        self.data_shape = SHAPE
        self.q = nn.Linear(36, 1)

    @pyro_method
    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(x.new_full((x.shape[0],), 0.5)))
            pyro.sample("x", dist.Bernoulli(logits=c[:, None, None, None].expand_as(x)).to_event(3), obs=x)

    @pyro_method
    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(logits=self.q(x.flatten(1)).squeeze(-1)))


class _WithBatchNorm(PyroModule):
    """A decoder with BatchNorm: its running statistics are state the record would not update."""

    def __init__(self):
        super().__init__()
        self.data_shape = SHAPE
        self.vae = VAE(SHAPE, latent_dim=3, hidden=16, decoder=nn.Sequential(nn.Linear(3, 36), nn.BatchNorm1d(36)))

    def model(self, x):
        return self.vae.model(x)

    def guide(self, x):
        return self.vae.guide(x)


@pytest.mark.parametrize("make, why", [(_DiscreteLatent, "non-reparameterized"), (_WithBatchNorm, "mutates state")])
def test_untrustworthy_records_fall_back_to_pyro_with_one_notice(make, why):
    model = make()
    seen, log = _notices()
    rec = RecordedLoss(model.model, model.guide, Trace_ELBO(), log=log)
    x = _binary(4)
    for _ in range(3):
        pyro.set_rng_seed(1)
        loss, _, _ = rec(x)
    assert rec.fallback is not None and why in rec.fallback
    assert len(seen) == 1 and why in seen[0] and "Pyro" in seen[0]
    pyro.set_rng_seed(1)
    torch.testing.assert_close(loss, rec.pyro_loss_and_grads(x)[0])


class _Tempered(PyroModule):
    """A model whose likelihood temperature is a Python float: a record fixes it."""

    def __init__(self):
        super().__init__()
        self.data_shape = SHAPE
        self.vae = VAE(SHAPE, latent_dim=3, hidden=16)
        self.temperature = 1.0

    def model(self, x):
        with pyro.poutine.scale(scale=self.temperature):
            return self.vae.model(x)

    def guide(self, x):
        with pyro.poutine.scale(scale=self.temperature):
            return self.vae.guide(x)


def test_a_stale_record_is_caught_by_the_periodic_check():
    model = _Tempered()
    seen, log = _notices()
    rec = RecordedLoss(model.model, model.guide, Trace_ELBO(), check_every=3, log=log)
    x = _binary(4)
    rec(x)
    rec(x)
    model.temperature = 0.5  # the record still multiplies by 1.0
    pyro.set_rng_seed(2)
    loss = [rec(x)[0] for _ in range(3)][-1]
    assert rec.fallback is not None and "no longer matches" in rec.fallback and len(seen) == 1
    pyro.set_rng_seed(2)
    ref = [rec.pyro_loss_and_grads(x)[0] for _ in range(3)][-1]
    torch.testing.assert_close(loss, ref)


def test_check_every_is_validated():
    model = VAE(SHAPE, latent_dim=3, hidden=16)
    with pytest.raises(ValueError, match="check_every"):
        RecordedLoss(model.model, model.guide, Trace_ELBO(), check_every=0)


def test_cuda_graph_needs_cuda():
    model = VAE(SHAPE, latent_dim=3, hidden=16)
    if torch.cuda.is_available():
        # a CPU batch cannot be captured: refused when the record is made
        rec = RecordedLoss(model.model, model.guide, Trace_ELBO(), cuda_graph=True, log=_notices()[1])
        with pytest.raises(ValueError, match="CUDA device"):
            rec(_binary(4).cpu().float())
    else:
        with pytest.raises(ValueError, match="cuda_graph=True needs a CUDA device"):
            RecordedLoss(model.model, model.guide, Trace_ELBO(), cuda_graph=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="runs where the suite runs on CUDA (HLVM_DEVICE=cuda)")
def test_cuda_graph_step_equals_pyros_on_the_gpu():
    model = VAE(SHAPE, latent_dim=3, hidden=16).cuda().float()
    x = _binary(8).cuda().float()
    seen, log = _notices()
    rec = RecordedLoss(model.model, model.guide, TraceMeanField_ELBO(), check_every=10**6, log=log, cuda_graph=True)
    for _ in range(3):
        loss, params, grads = rec(x)
    assert rec.fallback is None and not seen
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
