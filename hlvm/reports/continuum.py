"""The continuum, measured: from a VAE to a diffusion model, one latent layer at a time.

De Sousa Ribeiro & Glocker (2024, §2.3–2.4, Fig. 5) read a variational diffusion model as a
top-down hierarchical VAE with three constraints: the posterior is the fixed Gaussian-diffusion
one, one denoiser is shared by every layer, and the depth goes to infinity.  ``hlvm continuum``
lifts the constraints one at a time on one data set under one budget:

====================  ==============================================================================
family                model
====================  ==============================================================================
``hvae``              (a) :class:`~hlvm.zoo.TopDownHVAE`: learned posterior, a network per layer
``hvae-shared``       (b) learned posterior, one weight-shared generative network (``shared=True``)
``diffusion``         (c) the fixed diffusion posterior, Gaussian transitions (``posterior="diffusion"``)
``diffusion-denoiser`` (d) the fixed posterior and denoiser transitions (``transition="denoiser"``): L
                      latent layers are VDM's z_0 … z_T with T = L − 1, under a learned decoder
``vdm``               (e) :class:`~hlvm.zoo.VDM` with T = L, and with T = ∞ (continuous time) as the limit
====================  ==============================================================================

Every point trains the same epochs at the same width (``hidden`` of the HVAEs, ``width`` of the
VDM's denoiser) with its class's training recipe (:func:`hlvm.registry.training_defaults`), and is
scored by :func:`hlvm.eval.score`: each point's *tightest* bound is its IWAE bound where the model has
a guide of its own, else the PF-ODE bound (continuous-time VDM), else its ELBO (a discrete VDM: its
IWAE runs a T-step chain per sample).  Each point is saved to ``continuum.json`` as it finishes, so
a rerun continues where the last one stopped.

Family (d) with L layers *is* ``VDM(T = L − 1)`` once both use one denoiser, VDM's decoder and the
same levels (its z_l sits at t = l/L, VDM's z_{l−1} at (l − 1)/(L − 1): a linear γ maps one grid onto
the other); tests/test_continuum.py checks that every draw has the same log weight in both.  At a
given L the continuum's (d) point differs from the VDM point only by that decoder and level placement.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

import torch

from .continuum_page import key as _key, write_page
from .files import save_json

__all__ = ["FAMILIES", "PROFILES", "ContinuumProfile", "points", "run_continuum"]

#: family → (label, registered model, model options, the option that sets the depth)
FAMILIES = {
    "hvae": ("(a) learned posterior, a network per layer", "hvae-td", {}, "layers"),
    "hvae-shared": ("(b) learned posterior, one shared network", "hvae-td", {"shared": True}, "layers"),
    "diffusion": ("(c) fixed diffusion posterior, Gaussian transitions", "hvae-td",
                  {"posterior": "diffusion"}, "layers"),
    "diffusion-denoiser": ("(d) fixed diffusion posterior, denoiser transitions (VDM, T = L − 1, learned decoder)",
                           "hvae-td", {"posterior": "diffusion", "transition": "denoiser"}, "layers"),
    "vdm": ("(e) VDM, T = L (and T = ∞)", "vdm", {}, "T"),
}


@dataclass
class ContinuumProfile:
    """One budget for every point."""

    name: str
    data: str = "mnist"
    epochs: int | None = 2
    steps: int | None = None
    batch_size: int = 128
    hidden: int = 256  # the HVAEs' MLP width and the VDM denoiser's
    depths: tuple = (1, 2, 4, 8, 16, 32)
    families: tuple = tuple(FAMILIES)
    K: int = 1000  # IWAE samples
    iwae_examples: int | None = 1000
    elbo_examples: int | None = None  # None: the whole test set
    pfode_examples: int | None = 1000
    threads: int = 2
    device: str = "cpu"
    extra: dict = field(default_factory=dict)  # model options for every point (the smoke profile's small nets)
    #: the learned-posterior families' KL warm-up, as a share of the budget's steps (their class recipe's
    #: 2,000 steps outlast a short budget: its β would never reach 1)
    kl_warmup_share: float = 0.25


PROFILES = {
    # ≤ 2 hours on 2 cores for 4 HVAE families × 6 depths + 7 VDM points.  A 2-epoch run at 1 thread (the
    # other core busy) took ≈ 10 min per learned-posterior family (training 11 s at L = 1 … 231 s at L = 32,
    # IWAE 5 … 93 s) and ≈ 15–25 min per fixed-posterior family: ≈ 1 hour for every point; 3 epochs at
    # 2 threads fit.  IWAE with K = 1,000 would add ≈ 1 hour; K = 200 is stated on the page beside each bound
    "cpu": ContinuumProfile("cpu", epochs=3, K=200),
    "smoke": ContinuumProfile("smoke", data="digits", epochs=None, steps=6, batch_size=32, hidden=16, depths=(1, 2),
                              K=4, iwae_examples=8, elbo_examples=16, pfode_examples=2, threads=1,
                              extra={"vdm": {"depth": 1}}),
}


def points(p: ContinuumProfile) -> list[tuple[str, int | None]]:
    """(family, L) of every point; L = None is the continuous-time VDM."""
    out = [(f, L) for f in p.families for L in p.depths]
    return out + ([("vdm", None)] if "vdm" in p.families else [])


def _config(p: ContinuumProfile, family: str, L: int | None, out: str, n_train: int = 60000):
    """The TrainConfig of one point: the family's options, the depth, the common width and budget,
    the class's training recipe fitted to the budget (:func:`_budget_recipe`); resuming ``out``'s
    checkpoint.  ``n_train``: the training images (the budget's steps when it is set in epochs)."""
    from ..data import default_binarization
    from ..registry import with_training_defaults
    from ..training import CHECKPOINT, TrainConfig

    _, model, options, depth_option = FAMILIES[family]
    width = {"hidden": p.hidden} if model == "hvae-td" else {"width": p.hidden}
    cfg = TrainConfig(model=model, data=p.data, binarize=default_binarization(p.data), epochs=p.epochs,
                      steps=p.steps, batch_size=p.batch_size, device=p.device, out=out, progress=False,
                      resume=os.path.exists(os.path.join(out, CHECKPOINT)), eval_examples=500,
                      model_kwargs={**options, **width, **p.extra.get(model, {})}, **{depth_option: L})
    return _budget_recipe(with_training_defaults(cfg), options.get("posterior") == "diffusion",
                          cfg.total_steps(n_train), p.kl_warmup_share)


def _budget_recipe(cfg, fixed_posterior: bool, steps: int, share: float):
    """The class recipe's remedies for posterior collapse, fitted to a short budget: a fixed posterior
    cannot collapse, so families (c) and (d) train on the ELBO itself (no KL warm-up, no free bits: with
    q fixed, a down-weighted KL only starves the transitions of their gradient); the learned-posterior
    families warm the KL up over ``share`` of the ``steps``, not the recipe's 2,000 (tuned for 50 epochs)."""
    from dataclasses import replace

    if fixed_posterior:
        return replace(cfg, kl_warmup=0, free_bits=0.0)
    if cfg.kl_warmup:
        return replace(cfg, kl_warmup=min(cfg.kl_warmup, max(1, round(share * steps))))
    return cfg


def _point(p: ContinuumProfile, data, family: str, L: int | None, runs: str, stem: str, log) -> dict:
    """Train and score one point; its entry of ``continuum.json`` (its per-image values beside it)."""
    from ..eval import score
    from ..training import Trainer
    from .per_image import save_row_values

    cfg = _config(p, family, L, os.path.join(runs, p.name, _key(family, L)), len(data.train))
    log(f"== {_key(family, L)}: {cfg.model} {cfg.model_kwargs}, {cfg.epochs or cfg.steps} "
        f"{'epochs' if cfg.epochs else 'steps'}{' — resuming' if cfg.resume else ''}")
    start = time.perf_counter()
    trainer = Trainer(cfg, data)
    result = trainer.fit()
    train_seconds = time.perf_counter() - start
    model, x = trainer.model, data.test.to(trainer.device, trainer.dtype)
    K = 0 if family == "vdm" else p.K  # a discrete VDM's IWAE runs a T-step chain per sample: its ELBO is its point
    with trainer.ema_weights():
        s = score(model, x, trainer.bound_estimator, seed=0, eval_examples=p.elbo_examples, K=K,
                  iwae_examples=p.iwae_examples, iwae_batch=max(1, 20000 // max(K, 1)),
                  pfode_examples=p.pfode_examples, per_example=True)
    ev, iw, pf = s.evaluation, s.iwae, s.pfode
    bound_type, bound, se, n = (("iwae", iw["iwae"], iw["iwae_se"], iw["n_examples"]) if iw else
                                ("pfode", pf["pfode"], pf["pfode_se"], pf["n_examples"]) if pf else
                                ("elbo", ev["elbo"], ev["nats_se"], ev["n_examples"]))
    entry = {"family": family, "L": L, "bound": bound, "bound_type": bound_type, "se": se, "n_bound": n,
             "elbo": ev["elbo"], "elbo_se": ev["nats_se"], "n_elbo": ev["n_examples"],
             "K": iw.get("K"), "khat_frac_gt_0.7": iw.get("khat_frac_gt_0.7"),
             "params": sum(q.numel() for q in model.parameters()), "epochs": result["steps"] / trainer.steps_per_epoch,
             "steps": result["steps"], "seconds": train_seconds + s.seconds, "train_seconds": train_seconds,
             "eval_seconds": s.seconds, "options": {"model": cfg.model, **cfg.model_kwargs, "layers": cfg.layers,
                                                    "T": cfg.T},
             "recipe": {k: getattr(cfg, k) for k in ("kl_warmup", "free_bits", "grad_clip", "ema")}}
    entry["per_image"] = os.path.relpath(save_row_values(stem, _key(family, L), s.per_example), os.path.dirname(stem))
    log(f"   {_key(family, L)}: {bound_type} {bound:.2f} ± {se:.2f}, ELBO {ev['elbo']:.2f} "
        f"({train_seconds:.0f} s training, {s.seconds:.0f} s evaluation)")
    return entry


def run_continuum(profile: str = "cpu", out: str = "docs", runs: str = "runs/continuum", threads: int | None = None,
                  log=print) -> dict:
    """Every point of :func:`points` not yet in ``out/continuum[-profile].json``, each saved as it
    finishes; then the page and the figure.  The JSON's ``settings`` are the profile's: a point
    measured under other settings is not reused (a changed profile starts afresh)."""
    from ..data import load_dataset

    if profile not in PROFILES:
        raise ValueError(f"unknown continuum profile {profile!r}; expected one of {sorted(PROFILES)}")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    p = PROFILES[profile]
    torch.set_num_threads(threads or p.threads)
    stem = os.path.join(out, f"continuum{'' if profile == 'cpu' else '-' + profile}")
    os.makedirs(out, exist_ok=True)
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(p).items()}
    done = json.load(open(stem + ".json")) if os.path.exists(stem + ".json") else {}
    if done.get("settings") != settings:
        done = {"settings": settings, "points": []}
    data = load_dataset(p.data)
    have = {_key(e["family"], e["L"]) for e in done["points"]}
    for family, L in points(p):
        if _key(family, L) in have:
            log(f"== {_key(family, L)}: already in {stem}.json, skipped")
            continue
        done["points"].append(_point(p, data, family, L, runs, stem, log))
        done["threads"] = torch.get_num_threads()
        save_json(stem + ".json", done)
        write_page(done, stem, FAMILIES)
    write_page(done, stem, FAMILIES)
    return done
