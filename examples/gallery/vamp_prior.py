"""A VAE with the VampPrior, written as a Pyro user would: the prior is a mixture of the encoder's own
posteriors at K learned pseudo-inputs, p(z) = (1/K) Σ_k q(z | u_k) (Tomczak & Welling, *VAE with a
VampPrior*, AISTATS 2018, eq. 9).

The guide is mean-field, so hlvm's estimator rule picks ``TraceMeanField_ELBO``, which takes the
KL to this prior by Monte Carlo (torch has no closed form for a mixture); the site names (``"z"``,
``"x_obs"``) and the plate (``"batch"``) are this file's own.

    hlvm train examples/gallery/vamp_prior.py:VampPriorVAE --data mnist --epochs 20
"""

import pyro
import pyro.distributions as dist
import torch
from torch import nn


class VampPriorVAE(nn.Module):
    def __init__(self, x_dim=784, z_dim=32, hidden=300, pseudo_inputs=50):
        super().__init__()
        self.x_dim, self.z_dim = x_dim, z_dim
        self.encoder = nn.Sequential(nn.Linear(x_dim, hidden), nn.Softplus(), nn.Linear(hidden, 2 * z_dim))
        self.decoder = nn.Sequential(nn.Linear(z_dim, hidden), nn.Softplus(), nn.Linear(hidden, x_dim))
        # pseudo-inputs live in logit space, so that sigmoid(u) is a grey image in (0, 1)
        self.pseudo = nn.Parameter(0.01 * torch.randn(pseudo_inputs, x_dim))

    def posterior(self, x):
        loc, log_scale = self.encoder(x).chunk(2, dim=-1)  # (B, 2·z) -> 2 × (B, z)
        return dist.Normal(loc, log_scale.clamp(-8, 4).exp())

    def prior(self, batch):
        """(1/K) Σ_k q(z | u_k), one per example: a mixture with batch shape (batch,)."""
        components = self.posterior(torch.sigmoid(self.pseudo)).to_event(1)  # batch (K,), event (z,)
        weights = dist.Categorical(logits=self.pseudo.new_zeros(self.pseudo.shape[0]))
        return dist.MixtureSameFamily(weights, components).expand([batch])

    def model(self, x):
        pyro.module("vamp", self)
        with pyro.plate("batch", x.shape[0]):
            z = pyro.sample("z", self.prior(x.shape[0]))
            pyro.sample("x_obs", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x.reshape(-1, self.x_dim))

    def guide(self, x):
        pyro.module("vamp", self)
        with pyro.plate("batch", x.shape[0]):
            pyro.sample("z", self.posterior(x.reshape(-1, self.x_dim)).to_event(1))
