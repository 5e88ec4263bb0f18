"""A VAE exactly as Pyro's tutorial writes one (https://pyro.ai/examples/vae.html), for hlvm to take as is.

Nothing here knows hlvm: plain ``nn.Module`` networks registered with ``pyro.module``, the data observed
at a site named ``"obs"``, images flattened inside the model, no ``data_shape`` attribute.  hlvm reads the
data site and the plate over the examples from a trace (:mod:`hlvm.programs.roles`), so

    hlvm train examples/gallery/tutorial_vae.py:VAE --data mnist --epochs 20
    hlvm compare --models 'vae,examples/gallery/tutorial_vae.py:VAE' --data mnist5k --steps 2000
    hlvm render examples/gallery/tutorial_vae.py:VAE --data mnist
    hlvm sample examples/gallery/tutorial_vae.py:VAE --checkpoint RUN/checkpoint.pt

all work unchanged.  (Kingma & Welling 2014; the networks follow the tutorial's 784-400-50, softplus.)
"""

import pyro
import pyro.distributions as dist
import torch
from torch import nn


class Decoder(nn.Module):
    def __init__(self, z_dim, hidden_dim, x_dim):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, x_dim)
        self.softplus = nn.Softplus()

    def forward(self, z):
        return torch.sigmoid(self.fc21(self.softplus(self.fc1(z))))  # pixel probabilities


class Encoder(nn.Module):
    def __init__(self, z_dim, hidden_dim, x_dim):
        super().__init__()
        self.x_dim = x_dim
        self.fc1 = nn.Linear(x_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        self.softplus = nn.Softplus()

    def forward(self, x):
        hidden = self.softplus(self.fc1(x.reshape(-1, self.x_dim)))  # (B, 1, 28, 28) -> (B, 784)
        return self.fc21(hidden), torch.exp(self.fc22(hidden))


class VAE(nn.Module):
    def __init__(self, z_dim=50, hidden_dim=400, x_dim=784):
        super().__init__()
        self.encoder = Encoder(z_dim, hidden_dim, x_dim)
        self.decoder = Decoder(z_dim, hidden_dim, x_dim)
        self.z_dim, self.x_dim = z_dim, x_dim

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder(z)
            pyro.sample("obs", dist.Bernoulli(loc_img, validate_args=False).to_event(1), obs=x.reshape(-1, self.x_dim))

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
