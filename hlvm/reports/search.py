"""The validation search of ``make results``: each family at its best under one stated budget.

The benchmark protocol (DESIGN.md) chooses settings on a validation split — the last 10,000 of
MNIST's 60,000 training images (:func:`hlvm.data.validation_split`) — never on the test set.  Each
family has a declared space of at most eight configurations (:data:`SPACES`); every configuration
trains on the split's 50,000 training images for the profile's short search budget and is scored
by its ELBO on the 10,000 held-out images (:func:`hlvm.eval.score`, one seed for all).

**The rule.** The configuration with the highest mean validation ELBO wins; an exact tie goes to
the one declared first.  Beside the winner the search records its margin over the runner-up with
the standard error √(SE₁² + SE₂²) of that difference (unpaired, so conservative: every
configuration is scored on the same images) and whether the margin exceeds two such SEs; a
margin within noise still picks the higher mean, stated on the page.  A configuration whose
training diverges is recorded with its error and takes no part.

**Resumable.** Each finished configuration is written to the search's JSON at once and is not
trained again while its declared options are unchanged; an unfinished one resumes from its run
folder's checkpoint.  The final row then trains the winner on all 60,000 training images.

Each space varies one factor at a time around a base configuration (the first, or the one named
``base``), plus a combination of the factors expected to help.  Model options are the zoo
constructors' (``models/*.py``); trainer options are :class:`~hlvm.training.TrainConfig` fields
(``kl_warmup``, ``free_bits``, ``estimator_kwargs`` …).
"""

from __future__ import annotations

import json
import math
import os

__all__ = ["SPACES", "SHARED", "config", "space_of", "run_search", "pick_winner", "final_options", "score_config",
           "search_lines"]


def config(name: str, model: dict | None = None, **trainer) -> dict:
    """One configuration of a search: its name, model (constructor) options and trainer options."""
    return _plain({"name": name, "model": dict(model or {}), "trainer": trainer})


def _plain(value):
    """``value`` as JSON gives it back (tuples as lists), so that options read from a search's JSON
    and options declared here compare equal and make the same run."""
    return json.loads(json.dumps(value))


_VARIANCE = {"schedule_objective": "variance"}  # VDM App. I.1: a learned interior minimises the loss variance
_DENSITY = {"schedule": "learned-density"}

#: per results row, the configurations searched (at most eight each).
#:
#: * VAE — latent size (Pyro's examples/vae uses 50) and hidden width (Kingma & Welling 2014).
#: * bottom-up HVAE — latent sizes and layers, width, depth, KL warm-up (Bowman et al. 2016;
#:   Sønderby et al. 2016); no free bits: its guide is not mean-field (free bits need analytic KLs).
#: * top-down HVAE — around the configuration that won on full MNIST at 10 epochs (residual merge,
#:   32-d layers, hidden 400, warm-up 2,000 steps, free bits 0.5 (Kingma et al. 2016)): the
#:   merge, latent size, layers, warm-up and free bits each varied once.
#: * VDM — around the learned-density schedule trained on the variance objective (the project's
#:   schedule benchmark, docs/schedule_variance.json: cosine −112.74, learned density −111.88,
#:   linear −118.59): the schedule (cosine, learned net), Fourier features (VDM App. C), width
#:   and the t-sampler (importance sampling of t) each varied once, and Fourier + width 1024.
#: * every family: the learning rate's cosine decay over the run (NVAE, VDVAE;
#:   :mod:`hlvm.training.lr_schedule`) on its base configuration.
SPACES = {
    "vae": [config("latent-20"), config("latent-32", {"latent_dim": 32}), config("latent-50", {"latent_dim": 50}),
            config("latent-100", {"latent_dim": 100}), config("latent-50-cosine", {"latent_dim": 50}, lr_schedule="cosine"),
            config("latent-50-hidden-600", {"latent_dim": 50, "hidden": 600}),
            config("latent-50-hidden-1000", {"latent_dim": 50, "hidden": 1000}),
            config("latent-50-depth-2", {"latent_dim": 50, "depth": 2})],
    "hvae-bu": [config("latents-32-16"), config("hidden-400", {"hidden": 400}),
                config("hidden-400-cosine", {"hidden": 400}, lr_schedule="cosine"),
                config("latents-64-32", {"latent_dims": (64, 32), "hidden": 400}),
                config("latents-32x3", {"latent_dims": (32, 32, 32), "hidden": 400}),
                config("depth-2", {"hidden": 400, "depth": 2}),
                config("warmup", {"hidden": 400}, kl_warmup=2000),
                config("latents-64-32-warmup", {"latent_dims": (64, 32), "hidden": 400}, kl_warmup=2000)],
    "hvae-td": [config("base", {"merge": "residual", "latent_dim": 32, "hidden": 400}, kl_warmup=2000, free_bits=0.5),
                config("precision-merge", {"merge": "precision", "latent_dim": 32, "hidden": 400}, kl_warmup=2000,
                       free_bits=0.5),
                config("cosine", {"merge": "residual", "latent_dim": 32, "hidden": 400}, kl_warmup=2000, free_bits=0.5,
                       lr_schedule="cosine"),
                config("latent-64", {"merge": "residual", "latent_dim": 64, "hidden": 400}, kl_warmup=2000, free_bits=0.5),
                config("layers-2", {"merge": "residual", "latent_dim": 32, "hidden": 400, "layers": 2}, kl_warmup=2000,
                       free_bits=0.5),
                config("layers-5", {"merge": "residual", "latent_dim": 32, "hidden": 400, "layers": 5}, kl_warmup=2000,
                       free_bits=0.5),
                # switched off explicitly: a configuration's options are set on top of the row's own (which has both)
                config("no-warmup", {"merge": "residual", "latent_dim": 32, "hidden": 400}, kl_warmup=0, free_bits=0.5),
                config("no-free-bits", {"merge": "residual", "latent_dim": 32, "hidden": 400}, kl_warmup=2000,
                       free_bits=0.0)],
    "vdm": [config("cosine", {"schedule": "cosine"}),
            config("base", _DENSITY, estimator_kwargs=_VARIANCE),
            config("learned-net", {"schedule": "learned-net"}, estimator_kwargs=_VARIANCE),
            config("fourier", {**_DENSITY, "fourier": (6, 8)}, estimator_kwargs=_VARIANCE),
            config("width-1024", {**_DENSITY, "width": 1024}, estimator_kwargs=_VARIANCE),
            config("cosine-lr", _DENSITY, estimator_kwargs=_VARIANCE, lr_schedule="cosine"),
            config("importance-t", _DENSITY, estimator_kwargs={**_VARIANCE, "sampler": "importance"}),
            config("fourier-width-1024", {**_DENSITY, "fourier": (6, 8), "width": 1024}, estimator_kwargs=_VARIANCE)],
}

#: rows that take another row's winner instead of a search of their own: the T = 1000 VDM is the
#: continuous VDM's family (same denoiser and schedule, its own discrete chain)
SHARED = {"vdm-T1000": "vdm"}


def space_of(row: str) -> tuple[str, list[dict]] | None:
    """(the searched row whose winner ``row`` trains, its configurations), or None without a space."""
    source = SHARED.get(row, row)
    return (source, SPACES[source]) if source in SPACES else None


def score_config(trainer, held_out, eval_examples: int | None = None) -> dict:
    """The validation ELBO of a trained configuration (its EMA weights when EMA is on): mean ± SE
    over the held-out images, no other bound (the search chooses by the ELBO, which every row has)."""
    from ..eval.scores import score

    with trainer.ema_weights():
        s = score(trainer.model, held_out.to(trainer.device, trainer.dtype), trainer.bound_estimator, seed=0,
                  eval_examples=eval_examples, K=0, pfode_examples=0)
    ev = s.evaluation
    return {"elbo": ev["elbo"], "elbo_se": ev["nats_se"], "n_valid": ev["n_examples"], "eval_seconds": s.seconds}


def _read(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _write(path: str, payload: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, default=float)
    os.replace(tmp, path)


def _finished(record: dict | None, c: dict) -> bool:
    """A record that answers configuration ``c`` as declared now (a changed declaration is run again)."""
    return record is not None and record["model"] == c["model"] and record["trainer"] == c["trainer"]


def run_search(row: str, configs: list[dict], path: str, fit, budget: str, log=print, base: dict | None = None) -> dict:
    """Train and score each configuration (``fit(config) -> dict`` of :func:`score_config`'s fields
    plus ``steps`` and ``train_seconds``); write each result to ``path`` (a JSON of every search,
    by row) as soon as it is done; return the search with its winner (:func:`pick_winner`).

    Configurations already in ``path`` with the same options are not trained again.  ``base``
    (the row's own model and trainer options, under every configuration's) is recorded with the search.
    """
    from ..training import TrainingDiverged

    everything = _read(path)
    done = {r["name"]: r for r in everything.get(row, {}).get("configs", [])}
    search = {"row": row, "budget": budget, "base": _plain(base or {"model": {}, "trainer": {}}), "configs": []}
    for c in configs:
        if _finished(done.get(c["name"]), c):
            log(f"== search {row}/{c['name']}: already in {path}, skipped")
            search["configs"].append(done[c["name"]])
            continue
        try:
            record = {**c, **fit(c)}
        except TrainingDiverged as e:
            record = {**c, "elbo": None, "error": f"diverged: {e}"}
        search["configs"].append(record)
        everything[row] = search
        _write(path, everything)
    search["winner"] = pick_winner(search["configs"])
    everything[row] = search
    _write(path, everything)
    log(f"== search {row}: winner {search['winner']['name']} (validation ELBO {search['winner']['elbo']:.2f})")
    return search


def pick_winner(configs: list[dict]) -> dict:
    """The module's rule: the highest mean validation ELBO (an exact tie: the one declared first),
    with its margin over the runner-up, that margin's SE and whether it exceeds two SEs."""
    ok = [c for c in configs if c.get("elbo") is not None and math.isfinite(c["elbo"])]
    if not ok:
        raise RuntimeError("every configuration of the search failed: " + "; ".join(c.get("error", "?") for c in configs))
    best = max(ok, key=lambda c: c["elbo"])  # max keeps the first of equal keys: the declared order
    rest = [c for c in ok if c is not best]
    win = {"name": best["name"], "elbo": best["elbo"], "elbo_se": best["elbo_se"], "model": best["model"],
           "trainer": best["trainer"]}
    if rest:
        runner = max(rest, key=lambda c: c["elbo"])
        margin, se = best["elbo"] - runner["elbo"], math.hypot(best["elbo_se"], runner["elbo_se"])
        win.update(runner_up=runner["name"], margin=margin, margin_se=se, separated=margin > 2 * se)
    return win


def final_options(winner: dict, options: dict, trainer_options: dict) -> tuple[dict, dict]:
    """A final row's (model options, trainer options): the row's own, overridden by the winner's.

    A discrete-time row (``T`` set) trains its schedule's interior on the ELBO: the variance
    objective is continuous-time only (VDM App. I.1; :func:`hlvm.diffusion.bound.diffusion_loss`
    refuses it for a finite T).
    """
    model = {**options, **winner["model"]}
    trainer = {**trainer_options, **winner["trainer"]}
    kwargs = dict(trainer.get("estimator_kwargs", {}))
    if model.get("T") is not None and kwargs.pop("schedule_objective", None) is not None:
        trainer = {**trainer, "estimator_kwargs": kwargs}
        if not kwargs:
            del trainer["estimator_kwargs"]
    return model, trainer


def _options_text(c: dict) -> str:
    items = {**c["model"], **c["trainer"]}
    return ", ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in items.items()) or "the base"


def search_lines(searches: dict) -> list[str]:
    """The page's section on the searches: the rule, then per searched row a table of its
    configurations (the winner in bold) and a line naming the winner and its margin."""
    if not searches:
        return []
    lines = ["", "## Validation search (settings chosen on held-out training images, never on the test set)", "",
             "Each configuration trains on the validation split's training part (full MNIST: the first 50,000 "
             "training images) for the search budget and is scored by its ELBO on the held-out part (the last 10,000, "
             "binarized once, seed `VALIDATION_SEED`); the highest mean wins (an exact tie: the one declared first), "
             "and the final row trains the winner on every training image. "
             "Δ: the winner's margin over the runner-up ± its SE √(SE₁² + SE₂²). "
             "A short budget favours what learns fastest: the cosine decay of the learning rate sums to half the "
             "constant rate's steps, so at this budget it measures an under-trained run, not the late-training "
             "benefit it is used for in long runs (NVAE, VDVAE).", ""]
    for row, s in searches.items():
        w = s["winner"]
        base = s.get("base") or {"model": {}, "trainer": {}}
        lines += [f"### {row} ({s['budget']})", "",
                  f"Base of every configuration: {_options_text(base) if base['model'] or base['trainer'] else 'the zoo defaults'}"
                  "; each sets its options on top.", "",
                  "| configuration | options | validation ELBO | steps | seconds |",
                  "|---|---|---|---|---|"]
        for c in s["configs"]:
            name = f"**{c['name']}**" if c["name"] == w["name"] else c["name"]
            value = f"{c['elbo']:.2f} ± {c['elbo_se']:.2f}" if c.get("elbo") is not None else c.get("error", "–")
            seconds = c.get("train_seconds", 0) + c.get("eval_seconds", 0)
            lines.append(f"| {name} | {_options_text(c)} | {value} | {c.get('steps', '–')} | {seconds:.0f} |")
        lines += ["", _winner_line(w), ""]
    return lines


def _winner_line(w: dict) -> str:
    if "runner_up" not in w:
        return f"Winner: **{w['name']}** (the only configuration that finished)."
    noise = "more than two SEs" if w["separated"] else "within two SEs: the higher mean chose, not a clear win"
    return (f"Winner: **{w['name']}**, Δ = {w['margin']:.2f} ± {w['margin_se']:.2f} nats over {w['runner_up']} "
            f"({noise}).")
