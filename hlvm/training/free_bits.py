"""Free bits: a training objective that stops the KL of a latent layer from being pushed below λ.

Kingma et al. (2016, *Improved Variational Inference with Inverse Autoregressive Flow*, App. C):
per group of latents j, the KL term KL_j (averaged over the minibatch) is replaced by max(λ, KL_j),
so no gradient drives a layer's KL under λ nats — the standard guard against the upper layers of a
hierarchy collapsing to the prior.  It is a training objective, not a bound: evaluate with the ELBO.

.. warning:: The value returned is the free-bits objective; it is ≥ the negative ELBO.
"""

from __future__ import annotations

import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import TraceMeanField_ELBO
from pyro.infer import trace_mean_field_elbo as _mean_field
from torch.distributions import kl_divergence

__all__ = ["FreeBitsELBO"]


class FreeBitsELBO(TraceMeanField_ELBO):
    """``TraceMeanField_ELBO`` with each latent site's KL held at ≥ ``free_bits`` nats per example.

    Args:
        free_bits: λ, in nats per example and latent site (layer); the examples of a minibatch are
            counted along each site's outermost batch dim (the ``"data"`` plate).
    """

    def __init__(self, free_bits: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        if not free_bits >= 0:
            raise ValueError(f"free_bits must be >= 0, got {free_bits}")
        self.free_bits = free_bits

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        loss, surrogate = super()._differentiable_loss_particle(model_trace, guide_trace)
        penalty = 0.0
        for name, model_site in model_trace.nodes.items():
            if model_site["type"] != "sample" or model_site["is_observed"] or name not in guide_trace.nodes:
                continue
            guide_site = guide_trace.nodes[name]
            try:
                kl = kl_divergence(guide_site["fn"], model_site["fn"])
            except NotImplementedError:
                continue
            kl = scale_and_mask(kl, scale=guide_site["scale"], mask=guide_site["mask"])
            n = kl.shape[0] if kl.dim() else 1  # examples in the batch (the outermost batch dim)
            # max(λ n, KL) − KL: the gap up to λ per example, with a gradient that cancels the KL's
            penalty = penalty + torch.relu(self.free_bits * n - kl.sum())
        # the reported loss reads the penalty out as Pyro reads out the ELBO: by the module's torch_item, which
        # the recorded step (hlvm.training.compile) replaces by the identity, so that its differentiable_loss
        # differentiates the penalty as loss_and_grads does through the surrogate
        return loss + _mean_field.torch_item(penalty), surrogate + penalty
