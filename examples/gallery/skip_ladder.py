"""A two-layer hierarchy with a skip connection, as a Pyro user would write it: the decoder reads
both latents, p(x | z_1, z_2), so the top layer cannot be ignored by a powerful lower one (the skip
connections of Dieng et al., *Avoiding latent variable collapse with generative skip models*,
AISTATS 2019), with a top-down posterior q(z_2 | x) q(z_1 | z_2, x) in the generative order (the
ladder VAE's, Sønderby et al. 2016).

A ``PyroModule`` with ``@pyro_method``; its own names: plate ``"minibatch"``, latents ``"top"`` and
``"bottom"``, data ``"pixels"``.  The guide is top-down, so hlvm picks ``TraceMeanField_ELBO``.

    hlvm train examples/gallery/skip_ladder.py:SkipLadderVAE --data mnist --epochs 20
"""

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, pyro_method
from torch import nn


def _gaussian(d_in, d_out, hidden):
    return nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, 2 * d_out))


def _normal(params):
    loc, log_scale = params.chunk(2, dim=-1)  # (B, 2·d) -> 2 × (B, d)
    return dist.Normal(loc, log_scale.clamp(-8, 4).exp()).to_event(1)


class SkipLadderVAE(PyroModule):
    def __init__(self, x_dim=784, top=16, bottom=32, hidden=256):
        super().__init__()
        self.x_dim, self.top = x_dim, top
        self.p_bottom = _gaussian(top, bottom, hidden)                       # p(z_1 | z_2)
        self.p_x = nn.Sequential(nn.Linear(top + bottom, hidden), nn.SiLU(), nn.Linear(hidden, x_dim))  # skip: z_2 → x
        self.embed = nn.Sequential(nn.Linear(x_dim, hidden), nn.SiLU())
        self.q_top = nn.Linear(hidden, 2 * top)                              # q(z_2 | x)
        self.q_bottom = _gaussian(hidden + top, bottom, hidden)              # q(z_1 | z_2, x)

    @pyro_method
    def model(self, x):
        with pyro.plate("minibatch", x.shape[0]):
            z2 = pyro.sample("top", dist.Normal(x.new_zeros(x.shape[0], self.top), 1.0).to_event(1))
            z1 = pyro.sample("bottom", _normal(self.p_bottom(z2)))
            logits = self.p_x(torch.cat([z1, z2], dim=-1))
            pyro.sample("pixels", dist.Bernoulli(logits=logits).to_event(1), obs=x.reshape(-1, self.x_dim))

    @pyro_method
    def guide(self, x):
        with pyro.plate("minibatch", x.shape[0]):
            h = self.embed(x.reshape(-1, self.x_dim))
            z2 = pyro.sample("top", _normal(self.q_top(h)))
            pyro.sample("bottom", _normal(self.q_bottom(torch.cat([h, z2], dim=-1))))
