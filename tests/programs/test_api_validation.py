"""Bad input to the Python API: a ValueError naming the argument and its allowed range, raised at the
boundary (constructors, the data entering model/guide, samplers), never a deep torch error."""

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

import hlvm
import hlvm.programs.sample
from hlvm import DiffusionELBO
from hlvm.zoo import VAE, VDM, BottomUpHVAE, TopDownHVAE

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

SHAPE = (1, 4, 4)
SMALL = {
    VAE: dict(latent_dim=2, hidden=8),
    BottomUpHVAE: dict(latent_dims=(3, 2), hidden=8),
    TopDownHVAE: dict(layers=2, latent_dim=2, hidden=8),
    VDM: dict(T=4, width=8, depth=1),
}


def small(cls, likelihood="binary"):
    return cls(data_shape=SHAPE, likelihood=likelihood, **SMALL[cls])


def binary(n=3, dtype=None):
    return torch.bernoulli(torch.full((n, *SHAPE), 0.5, dtype=dtype or torch.get_default_dtype()))


def loss(m, x):
    elbo = DiffusionELBO() if isinstance(m, VDM) else Trace_ELBO()
    return elbo.loss(m.model, m.guide, x)


# ------------------------------------------------------------------------------- constructors
@pytest.mark.parametrize("cls,kwargs,match", [
    (VAE, dict(latent_dim=0), r"latent_dim must be an integer >= 1, got 0"),
    (VAE, dict(latent_dim=-1), r"latent_dim must be an integer >= 1, got -1"),
    (VAE, dict(latent_dim=2.5), r"latent_dim must be an integer >= 1, got 2.5"),
    (VAE, dict(hidden=0), r"hidden must be an integer >= 1, got 0"),
    (VAE, dict(depth=-1), r"depth must be an integer >= 0, got -1"),
    (VAE, dict(data_shape=(1, 0, 28)), r"data_shape must be a non-empty tuple of positive integers"),
    (VAE, dict(likelihood="gaussian"), r"unknown likelihood kind 'gaussian'; expected one of"),
    (BottomUpHVAE, dict(latent_dims=(8, 0)), r"latent_dims\[1\] must be an integer >= 1, got 0"),
    (BottomUpHVAE, dict(latent_dims=4, layers=0), r"layers must be an integer >= 1, got 0"),
    (BottomUpHVAE, dict(latent_dims=()), r"latent_dims must name at least one latent layer"),
    (TopDownHVAE, dict(layers=0), r"layers must be an integer >= 1, got 0"),
    (TopDownHVAE, dict(latent_dim=-4), r"latent_dim must be an integer >= 1, got -4"),
    (TopDownHVAE, dict(layers=2, latent_dim=(4, 0)), r"latent_dim\[1\] must be an integer >= 1, got 0"),
    (TopDownHVAE, dict(merge="sum"), r"unknown merge 'sum'; expected one of \['precision', 'residual'\]"),
    (TopDownHVAE, dict(posterior="diffusion", gamma_min=3.0, gamma_max=-3.0), r"gamma_max must be a finite number > 3.0"),
    (VDM, dict(T=0), r"T must be an integer in \[1, 100,000\].* got 0"),
    (VDM, dict(T=-5), r"T must be an integer in \[1, 100,000\].* got -5"),
    (VDM, dict(width=0), r"width must be an integer >= 1, got 0"),
    (VDM, dict(depth=-2), r"depth must be an integer >= 0, got -2"),
    (VDM, dict(trace_steps=0), r"trace_steps must be an integer >= 1, got 0"),
    (VDM, dict(schedule="quadratic"), r"unknown schedule 'quadratic'; expected one of"),
    (VDM, dict(gamma_min=5.0, gamma_max=-13.3), r"gamma_max must be a finite number > 5.0"),
    (VDM, dict(gamma_min=float("nan")), r"gamma_min must be a finite number, got nan"),
    (VDM, dict(backbone="transformer"), r"unknown backbone 'transformer'"),
    (VDM, dict(T=True), r"T must be an integer in \[1, 100,000\].* or None for continuous time, got True"),
    (VDM, dict(fourier=7), r"fourier must be None or \(n_min, n_max\), two integers with n_min <= n_max, got 7"),
    (VDM, dict(fourier=(8, 6)), r"fourier must be None or \(n_min, n_max\).*got \(8, 6\)"),
    (VDM, dict(parameterization="noise"), r"unknown parameterization 'noise'"),
])
def test_constructor_arguments_refused_by_name(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**{"data_shape": SHAPE, **kwargs})


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_t=0), r"num_t must be an integer >= 1, got 0"),
    (dict(eval_nodes=-1), r"eval_nodes must be an integer >= 1, got -1"),
    (dict(sampler="sobol"), r"sobol"),
])
def test_diffusion_elbo_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiffusionELBO(**kwargs)


# ------------------------------------------------------------------------------- data
@pytest.mark.parametrize("cls", list(SMALL))
def test_wrong_shape_named_at_the_boundary(cls):
    m = small(cls)
    with pytest.raises(ValueError, match=r"x has shape \(3, 1, 5, 5\); this model expects \(batch, 1, 4, 4\)"):
        loss(m, torch.zeros(3, 1, 5, 5))
    with pytest.raises(ValueError, match=r"x has shape \(16,\)"):
        loss(m, torch.zeros(16))
    with pytest.raises(ValueError, match=r"x must be a torch.Tensor of shape \(batch, 1, 4, 4\), got list"):
        m.guide([[0.0] * 16])


@pytest.mark.parametrize("cls", list(SMALL))
def test_other_dtype_is_cast_to_the_model(cls):
    """Decision: data of another real or integer dtype are cast to the parameters' dtype (exact for
    binary and 8-bit data), so the loss equals that of data in the model's own dtype."""
    m = small(cls)
    other = torch.float32 if torch.get_default_dtype() == torch.float64 else torch.float64
    x = binary()
    pyro.set_rng_seed(1)
    expected = loss(m, x)
    for data in (x.to(other), x.to(torch.uint8)):
        pyro.set_rng_seed(1)
        assert loss(m, data) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("cls", list(SMALL))
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_and_inf_data_named(cls, bad):
    x = binary()
    x[1, 0, 2, 3] = bad
    word = "1 NaN and 0 infinite" if bad != bad else "0 NaN and 1 infinite"
    with pytest.raises(ValueError, match=word):
        loss(small(cls), x)
    with pytest.raises(ValueError, match=word):
        loss(small(cls, "continuous"), x)


def test_value_checks_only_under_validation():
    """As Pyro's distributions: values are checked only while validation is on (shape always)."""
    m = small(VAE)
    x = binary()
    x[0, 0, 0, 0] = float("nan")
    with pyro.validation_enabled(False):
        with pytest.warns(UserWarning, match="Encountered NaN: loss"):  # NaN flows through, unchecked
            assert loss(m, x) != loss(m, x)
        with pytest.raises(ValueError, match="x has shape"):
            loss(m, torch.zeros(3, 16))


@pytest.mark.parametrize("cls", list(SMALL))
def test_8bit_vs_binary_ranges(cls):
    grey = torch.randint(0, 256, (3, *SHAPE)).to(torch.get_default_dtype())
    with pytest.raises(ValueError, match=r"binary likelihood needs data in \{0, 1\}: got integer values in "
                                         r"\[\d+, \d+\]; 8-bit grey levels\? use likelihood='8bit'"):
        loss(small(cls), grey)
    with pytest.raises(ValueError, match=r"8bit likelihood needs integer data in \[0, 255\]: got values in "
                                         r"\[0\.\d+, 0\.\d+\]; grey levels scaled to \[0, 1\]\? multiply by 255"):
        loss(small(cls, "8bit"), (grey + 0.5) / 256)
    assert torch.isfinite(torch.tensor(loss(small(cls, "8bit"), grey)))


# ------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("cls", list(SMALL))
def test_model_without_data_needs_a_batch_size(cls):
    m = small(cls)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got -1"):
        m.model(batch_size=-1)
    with pytest.raises(ValueError, match=r"give the data x, or batch_size \(an integer >= 1\)"):
        m.model()


@pytest.mark.parametrize("n", [-1, 0, 2.0])
def test_sample_count_refused(n):
    m = small(VDM)
    for f in (hlvm.sample, hlvm.programs.sample.draw):
        with pytest.raises(ValueError, match=f"n must be an integer >= 1, got {n!r}"):
            f(m, n)
    with pytest.raises(ValueError, match=f"n must be an integer >= 1, got {n!r}"):
        m.sample(n)


@pytest.mark.parametrize("steps", [0, -1])
def test_sample_steps_refused(steps):
    m = small(VDM)
    for f in (lambda: m.sample(2, steps=steps), lambda: m.langevin_sample(2, steps=steps),
              lambda: hlvm.sample(m, 2, steps=steps)):
        with pytest.raises(ValueError, match=f"steps must be an integer >= 1, got {steps}"):
            f()


# ------------------------------------------------------------------------------- README recipe
def test_readme_diffusion_elbo_module_with_torch_optim():
    """README: ``DiffusionELBO()(vdm.model, vdm.guide)``, an nn.Module for plain torch.optim (with
    ``pyro.settings.set(module_local_params=True)``)."""
    with pyro.settings.context(module_local_params=True):
        vdm = VDM(data_shape=SHAPE, T=None, width=16, depth=1)
        loss_fn = DiffusionELBO()(vdm.model, vdm.guide)
        assert {id(p) for p in loss_fn.parameters()} == {id(p) for p in vdm.parameters()}
        opt = torch.optim.Adam(loss_fn.parameters(), lr=1e-2)
        x = binary(16)
        before = [p.detach().clone() for p in vdm.parameters()]
        for _ in range(3):
            opt.zero_grad()
            value = loss_fn(x)
            value.backward()
            opt.step()
        assert torch.isfinite(value)
        assert all(not torch.equal(b, p) for b, p in zip(before, vdm.parameters()) if p.requires_grad and p.grad is not None)
        assert sum(p.grad is not None for p in vdm.parameters()) == len(before)  # every parameter learns
