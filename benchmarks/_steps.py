"""Training steps of the same networks written three ways, for the overhead benchmarks.

For each zoo model the *plain* step is hand-written PyTorch on the model's own ``nn.Module``s
(encoder/decoder/denoiser taken from the hlvm instance), computing the same loss as the Pyro
estimator — a sum over the batch of −ELBO in nats — and stepping ``torch.optim.Adam``:

* ``VAE`` with ``TraceMeanField_ELBO``: Bernoulli reconstruction + closed-form KL(q(z|x) ‖ N(0, I));
  with ``Trace_ELBO``: the same reconstruction + the single-sample KL estimate log q(z|x) − log p(z).
* ``TopDownHVAE`` (default: 3 layers, precision merge) with ``TraceMeanField_ELBO``: the bottom-up
  pass, the top-down posterior and the per-layer closed-form KLs KL(q(z_l|·) ‖ p(z_l|z_{l+1})).
* ``VDM`` (continuous time, its default parameterization, linear schedule, Bernoulli decoder) with
  ``DiffusionELBO``: reconstruction −log p(x|z_0) + KL(q(z_1|x) ‖ N(0, I)) + ½ γ' ‖ε − ε̂(z_t; γ_t)‖²
  with VDM's antithetic times (Kingma et al. 2021, eq. 17).

The plain losses consume the random stream in the same order as the Pyro programs, so at the
same seed they reproduce the Pyro loss to rounding (:func:`check_same_loss`).
"""

from __future__ import annotations

import math

import pyro
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

from hlvm import DiffusionELBO
from hlvm.zoo import VAE, VDM, TopDownHVAE

LOG_2PI = math.log(2 * math.pi)


# ------------------------------------------------------------------------------------ plain losses
def _normal_kl(q_loc, q_scale, p_loc, p_scale):
    """KL(N(q) ‖ N(p)) summed over the last dim (closed form)."""
    var_ratio = (q_scale / p_scale).pow(2)
    t1 = ((q_loc - p_loc) / p_scale).pow(2)
    return 0.5 * (var_ratio + t1 - 1 - var_ratio.log()).sum(-1)


def _std_normal_kl(loc, scale):
    return 0.5 * (loc.pow(2) + scale.pow(2) - 1 - 2 * scale.log()).sum(-1)


def _bernoulli_nll(logits, x):
    return F.binary_cross_entropy_with_logits(logits, x.reshape(logits.shape), reduction="none").flatten(1).sum(-1)


def plain_vae_loss(model: VAE, x, kl: str = "analytic"):
    """−ELBO of the batch (sum) for hlvm's VAE, by hand."""
    loc, scale = model.encoder(2 * x - 1)
    eps = torch.randn_like(loc)
    z = loc + scale * eps
    rec = _bernoulli_nll(model.decoder(z), x)
    if kl == "analytic":
        kl_term = _std_normal_kl(loc, scale)
    else:  # single-sample estimate log q(z|x) − log p(z)
        log_q = (-0.5 * eps.pow(2) - scale.log() - 0.5 * LOG_2PI).sum(-1)
        log_p = (-0.5 * z.pow(2) - 0.5 * LOG_2PI).sum(-1)
        kl_term = log_q - log_p
    return (rec + kl_term).sum()


def _precision_merge(loc_a, scale_a, loc_b, scale_b):
    pa, pb = scale_a.pow(-2), scale_b.pow(-2)
    var = 1 / (pa + pb)
    return var * (loc_a * pa + loc_b * pb), var.sqrt()


def plain_hvae_loss(model: TopDownHVAE, x):
    """−ELBO (sum) of the default TopDownHVAE (learned posterior, precision merge) with analytic KLs."""
    assert model.posterior == "learned" and model.merge == "precision" and not model.shared
    h = (2 * x - 1).flatten(1)
    hs = []
    for f in model.up:
        h = f(h)
        hs.append(h)
    loc, scale = model.q_top(hs[-1])
    z = loc + scale * torch.randn_like(loc)
    kl = _std_normal_kl(loc, scale)
    for l in range(model.L - 1, 0, -1):
        p_loc, p_scale = model.transitions[l - 1](z)
        m_loc, m_scale = model.messages[l - 1](hs[l - 1])
        q_loc, q_scale = _precision_merge(m_loc, m_scale, p_loc, p_scale)
        z = q_loc + q_scale * torch.randn_like(q_loc)
        kl = kl + _normal_kl(q_loc, q_scale, p_loc, p_scale)
    rec = _bernoulli_nll(model.decoder(z), x)
    return (rec + kl).sum()


def plain_vdm_loss(model: VDM, x):
    """−ELBO (sum) of a continuous-time VDM with linear schedule and MLP backbone, by hand (VDM eq. 17).

    Follows the model's parameterization: ``eps`` (ε̂ = f), ``x`` (x̂ = f) or ``logit`` (VDM's
    default for binary data: x̂ = tanh(α z/σ² + f)), with ε̂ = (z − α x̂)/σ.
    """
    kind = model.denoiser.parameterization
    assert model.T is None and kind in ("eps", "x", "logit"), (model.T, kind)
    net, g0, g1 = model.denoiser.backbone, model.schedule.g0, model.schedule.g1
    b = x.shape[0]
    y = 2 * x - 1  # model space
    # reconstruction −log p(x | z_0), z_0 ∼ q(z_0 | x); Bernoulli logit 2 α_0 z_0 / σ_0²
    a0 = torch.sigmoid(-g0).sqrt()
    z0 = a0 * y + torch.sigmoid(g0).sqrt() * torch.randn_like(y)
    rec = _bernoulli_nll(2 * z0 * a0 / torch.sigmoid(g0), x)
    # prior KL(q(z_1 | x) ‖ N(0, I))
    prior = (0.5 * (torch.sigmoid(-g1) * (y.pow(2) - 1) - F.logsigmoid(g1))).flatten(1).sum(-1)
    # diffusion: antithetic t, z_t = α_t y + σ_t ε, ½ γ' ‖ε − ε̂‖²
    t = torch.remainder(torch.rand((), dtype=x.dtype, device=x.device) + torch.arange(b, dtype=x.dtype, device=x.device) / b, 1.0)
    g_t = g0 + (g1 - g0) * t
    shape = (b,) + (1,) * (x.dim() - 1)
    eps = torch.randn_like(y)
    a_t, s2_t = torch.sigmoid(-g_t).sqrt().view(shape), torch.sigmoid(g_t).view(shape)
    s_t = s2_t.sqrt()
    z_t = a_t * y + s_t * eps
    out = net(z_t, g_t)
    if kind == "eps":
        eps_hat = out
    else:
        x_hat = out if kind == "x" else torch.tanh(z_t * a_t / s2_t + out)
        eps_hat = (z_t - a_t * x_hat) / s_t
    diffusion = 0.5 * (g1 - g0) * (eps - eps_hat).pow(2).flatten(1).sum(-1)
    return (rec + prior + diffusion).sum()


# ------------------------------------------------------------------------------------ models
def build(name: str, device, dtype=torch.float32, T="default", **kw):
    """One zoo model instance with the benchmark's configuration.

    Built with ``module_local_params=True`` so that the same instance also runs the ELBOModule
    path (a PyroModule created without it cannot enter a local-parameter context later).
    """
    with pyro.settings.context(module_local_params=True):
        return _build(name, device, dtype, T, **kw)


#: the benchmarks' configurations, pinned (the zoo's defaults follow the results page's search and
#: move; these stay, so that ratios compare across benchmark runs): the zoo's defaults before issue 20
PINNED = {"vae": {"latent_dim": 20, "hidden": 400},
          "hvae-td": {"merge": "precision", "latent_dim": 16, "hidden": 256},
          "vdm": {"schedule": "linear", "width": 512, "depth": 3}}


def _build(name, device, dtype, T, **kw):
    kw = {**PINNED.get(name, {}), **kw}
    if name == "vae":
        m = VAE(**kw)
    elif name == "hvae-td":
        m = TopDownHVAE(**kw)
    elif name == "vdm":
        m = VDM(T=None if T == "default" else T, **kw)
    else:
        raise ValueError(name)
    return m.to(device=device, dtype=dtype)


def plain_loss_fn(name: str, model, kl="analytic"):
    if name == "vae":
        return lambda x: plain_vae_loss(model, x, kl)
    if name == "hvae-td":
        return lambda x: plain_hvae_loss(model, x)
    if name == "vdm":
        return lambda x: plain_vdm_loss(model, x)
    raise ValueError(name)


def default_elbo(name: str):
    return {"vae": TraceMeanField_ELBO, "hvae-td": TraceMeanField_ELBO, "vdm": DiffusionELBO}[name]()


# ------------------------------------------------------------------------------------ steps
class ValidationSwitch:
    """Run a step with Pyro's (and torch.distributions') validation set to ``flag``."""

    def __init__(self, flag: bool):
        self.flag = flag

    def __enter__(self):
        from pyro.infer.util import is_validation_enabled

        self.old = is_validation_enabled()
        pyro.enable_validation(self.flag)

    def __exit__(self, *exc):
        pyro.enable_validation(self.old)


def plain_step(model, loss_fn, x, lr=1e-3, fused=None):
    """A hand-written training step: ``loss_fn``, backward, ``torch.optim.Adam`` (torch's default kernel;
    ``fused=True``: its fused kernel, what hlvm's optimizer picks)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=fused)

    def step():
        loss = loss_fn(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def svi_step(model, elbo, x, lr=1e-3, validation=True, optim="hlvm"):
    """``pyro.infer.SVI`` with ``hlvm.training.optim.Adam`` (``optim="hlvm"``: one torch Adam over all
    parameters, as hlvm's Trainer uses) or ``pyro.optim.Adam`` (``"pyro"``: one per tensor)."""
    if optim == "hlvm":
        import hlvm.training.optim

        opt = hlvm.training.optim.Adam({"lr": lr})
    else:
        opt = pyro.optim.Adam({"lr": lr})
    svi = SVI(model.model, model.guide, opt, elbo)

    def step():
        with ValidationSwitch(validation):
            return svi.step(x)

    return step


def compiled_step(model, elbo, x, lr=1e-3, validation=True, check_every=100, cuda_graph=False):
    """``hlvm.compile_step``: the recorded SVI step (with its periodic check against Pyro); with
    ``cuda_graph`` also captured in a CUDA graph."""
    import hlvm.training.optim
    from hlvm.training.compile import compile_step

    svi = compile_step(model.model, model.guide, elbo, hlvm.training.optim.Adam({"lr": lr}), check_every=check_every,
                       cuda_graph=cuda_graph)

    def step():
        with ValidationSwitch(validation):
            return svi.step(x)

    step.svi = svi
    return step


def default_step(name: str, model, x, lr=1e-3):
    """What ``hlvm train NAME`` runs with no flag, past any KL warm-up: the recorded step (on by default)
    on the objective of the model's training recipe (:func:`hlvm.registry.training_defaults`: its
    estimator options, free bits), with the recipe's gradient clipping and EMA update.  Where the
    objective cannot be recorded the step falls back to Pyro's, as the Trainer does (``step.svi``
    says why)."""
    import hlvm.training.optim
    from hlvm.registry import with_training_defaults
    from hlvm.training import TrainConfig
    from hlvm.training.compile import compile_step
    from hlvm.training.ema import EMA
    from hlvm.training.preflight import training_objective

    cfg = with_training_defaults(TrainConfig(model=name, lr=lr), set())
    _, objective = training_objective(cfg, model)
    svi = compile_step(model.model, model.guide, objective, hlvm.training.optim.Adam({"lr": lr}, clip_norm=cfg.grad_clip),
                       log=lambda msg: None)
    ema = EMA.of(model, cfg.ema) if cfg.ema > 0 else None
    count = [0]

    def step():
        loss = svi.step(x)
        count[0] += 1
        if ema is not None:
            ema.update(model, count[0])
        return loss

    step.svi = svi
    return step


def module_step(model, elbo, x, lr=1e-3, validation=True):
    """The ELBOModule path: ``elbo(model.model, model.guide)`` with local params + torch.optim.Adam."""
    loss_mod = elbo(model.model, model.guide)
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def step():
        with ValidationSwitch(validation), pyro.settings.context(module_local_params=True):
            loss = loss_mod(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return loss.item()

    return step


def check_same_loss(name, model, elbo, x, seed=123, kl="analytic") -> float:
    """Relative difference between the plain loss and the Pyro estimator's loss at the same seed."""
    with torch.no_grad():
        torch.manual_seed(seed)
        a = float(plain_loss_fn(name, model, kl)(x))
        torch.manual_seed(seed)
        b = float(elbo.differentiable_loss(model.model, model.guide, x))
    return abs(a - b) / max(abs(b), 1e-12)
