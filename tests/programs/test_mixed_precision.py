"""Mixed precision (bf16 autocast): the networks may run in half precision, the bound does not —
every site's log-density is float32, and the ELBO is the float32 ELBO to bf16's rounding of the
networks' outputs.  Checked with CPU autocast (the Trainer's ``--amp`` is the same on CUDA)."""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

from hlvm.estimators import default_estimator
from hlvm.zoo import VAE, VDM, BottomUpHVAE, TopDownHVAE

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

SHAPE = (1, 8, 8)
MODELS = {
    "vae": lambda: VAE(SHAPE, latent_dim=4, hidden=32),
    "vae-8bit": lambda: VAE(SHAPE, likelihood="8bit", latent_dim=4, hidden=32),
    "hvae-bu": lambda: BottomUpHVAE(SHAPE, hidden=32),
    "hvae-td": lambda: TopDownHVAE(SHAPE, hidden=32),
    "vdm": lambda: VDM(SHAPE, width=32, depth=1),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bf16_networks_float32_bound(name):
    torch.set_default_dtype(torch.float32)  # the suite's float64 default would hide the question
    model = MODELS[name]()
    g = torch.Generator().manual_seed(0)
    x = (torch.rand((16,) + SHAPE, generator=g) * (255 if name.endswith("8bit") else 1))
    x = x.round() if name.endswith("8bit") else (x > 0.5).float()
    elbo = default_estimator(model)
    pyro.set_rng_seed(1)
    full = elbo.differentiable_loss(model.model, model.guide, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pyro.set_rng_seed(1)
        mixed = elbo.differentiable_loss(model.model, model.guide, x)
        guide = poutine.trace(model.guide).get_trace(x)
        trace = prune_subsample_sites(poutine.trace(poutine.replay(model.model, trace=guide)).get_trace(x))
    assert mixed.dtype == torch.float32
    for site in trace.nodes.values():
        if site["type"] == "sample" and not site["infer"].get("is_auxiliary"):
            assert site["fn"].log_prob(site["value"]).dtype == torch.float32, site["name"]
    # bf16 keeps 8 bits of mantissa in the networks' outputs; the bound itself adds no more error
    full, mixed = full.item(), mixed.item()
    assert abs(mixed - full) <= 2e-3 * abs(full), (full, mixed)
