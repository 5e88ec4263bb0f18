"""Shared test set-up.

* ``HLVM_DTYPE`` (default ``float64``) and ``HLVM_DEVICE`` (default ``cpu``) choose the dtype
  and device of the suite, so ``HLVM_DEVICE=cuda make test`` runs the same tests on a GPU.
* Pyro's param store is cleared and validation enabled for every test.
* Warnings are errors (``pytest.ini_options``/``filterwarnings`` below), with targeted ignores.
"""

import os
import pathlib

import pyro
import pytest
import torch

DTYPE = getattr(torch, os.environ.get("HLVM_DTYPE", "float64"))
DEVICE = torch.device(os.environ.get("HLVM_DEVICE", "cpu"))
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    raise RuntimeError("HLVM_DEVICE=cuda but torch.cuda.is_available() is False")


def pytest_configure(config):
    # Turn warnings into errors, except known third-party noise.
    for line in [
        "error",
        "ignore::DeprecationWarning:jupyter_client.*",
        "ignore:.*is deprecated.*:DeprecationWarning:pyro.*",
        "ignore:.*pkg_resources.*:DeprecationWarning",
        "ignore:.*Implicitly cleaning up.*:ResourceWarning",
        "ignore::pytest.PytestUnraisableExceptionWarning",
    ]:
        config.addinivalue_line("filterwarnings", line)


@pytest.fixture(autouse=True)
def _pyro_fresh():
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(DTYPE)
    if DEVICE.type != "cpu":
        torch.set_default_device(DEVICE)
    yield
    torch.set_default_dtype(old)
    if DEVICE.type != "cpu":
        torch.set_default_device("cpu")
    pyro.clear_param_store()


@pytest.fixture
def dtype():
    return DTYPE


@pytest.fixture
def device():
    return DEVICE


def tensor(x, **kw):
    """A tensor on the suite's device and dtype."""
    return torch.as_tensor(x, dtype=kw.pop("dtype", DTYPE), device=kw.pop("device", DEVICE))


ROOT = pathlib.Path(__file__).resolve().parents[1]


def user_hierarchy_class():
    """``LatentDiffusionVAE`` of examples/user_hierarchy.py, loaded as ``hlvm train FILE:CLASS`` loads it."""
    from hlvm.registry import load_class

    return load_class(f"{ROOT / 'examples' / 'user_hierarchy.py'}:LatentDiffusionVAE")


@pytest.fixture(scope="module")
def one_intra_op_thread():
    """For modules of small tensors, where Pyro's bookkeeping dominates and extra intra-op threads
    only add contention (several times slower on a loaded 2-core machine); restored afterwards.
    Use with ``pytestmark = pytest.mark.usefixtures("one_intra_op_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def oracle_diffusion(mean, cov, schedule, T=None):
    """A hierarchy written only to the contract (model, guide, data_shape): a diffusion chain over
    Gaussian data x ∼ N(mean, cov) with the Bayes-optimal denoiser and VDM's Gaussian decoder."""
    from pyro.nn import PyroModule

    from hlvm.diffusion.oracle import GaussianOracle
    from hlvm.programs.chain import DiffusionChain
    from hlvm.programs.likelihoods import GaussianLikelihood

    class OracleDiffusion(PyroModule):
        def __init__(self):
            super().__init__()
            self.data_shape = (mean.numel(),)
            self.chain = DiffusionChain(GaussianOracle(mean, cov), schedule, GaussianLikelihood(self.data_shape), T=T)

        def model(self, x):
            with pyro.plate("data", x.shape[0]):
                return self.chain.model("x", x)

        def guide(self, x):
            with pyro.plate("data", x.shape[0]):
                return self.chain.guide(x)

    return OracleDiffusion()


@pytest.fixture(scope="module")
def digits():
    """sklearn's 8×8 digits as a DataSplit (statically binarized): the small data of training tests."""
    from hlvm.data import load_dataset

    return load_dataset("digits")


def small_vae_config(out, batch_size=32, eval_examples=32, hidden=32, **kw):
    """A TrainConfig of a small VAE on the digits, for tests of the training machinery; ``kw``
    overrides any field (``model_kwargs`` replaces the small network's)."""
    from hlvm.training import TrainConfig

    base = dict(model="vae", data="digits", batch_size=batch_size, lr=2e-3, out=str(out), progress=False,
                eval_examples=eval_examples, eval_every=100, model_kwargs={"hidden": hidden, "latent_dim": 4})
    base.update(kw)
    return TrainConfig(**base)
