"""``hlvm compare``: train several models under one budget and report their bounds in the same units.

Every model bounds the same discrete log-likelihood of the same test split, so the table's ELBO,
IWAE bound, PF-ODE bound and bits/dim are directly comparable (De Sousa Ribeiro & Glocker 2024, §2;
VDM §5).  Every number in a row belongs to that row's model: a discrete-time VDM's IWAE bound comes
from its own T-step chain; a continuous-time VDM has no importance-weighted bound of the same model,
and its place is taken by the probability-flow ODE bound (:mod:`hlvm.diffusion.ode`).
The report folder holds ``report.md``, ``report.json``, PNG plots (test-ELBO curves, per-layer KL
or diffusion-term breakdown, sample grids, reconstructions) and the plate diagrams.

A model may carry constructor options (``vdm(schedule=cosine,width=512)``): its row, figures and
details are named by that label (:func:`hlvm.limits.model_label`), its row records them under
``options``, and its run's checkpoint records them in ``model_kwargs``.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import fields, replace

import torch

from ..data import load_dataset
from ..eval.psis import MIN_KHAT_SAMPLES
from ..eval.scores import own_bounds, score
from ..training.checks import check_compare_options, writable_folder
from ..training.preflight import preflight
from ..training import EvaluationFailed, TrainConfig, Trainer, WARMUP_STEPS
from ..limits import model_label, parse_model
from ..registry import accepts, check_model_options, with_training_defaults
from .files import files_section
from .per_image import paired_entries, paired_lines

__all__ = ["run_compare", "format_table", "training_options"]

COLUMNS = [("model", "{}"), ("elbo", "{:.2f}"), ("elbo_se", "±{:.2f}"), ("bpd", "{:.4f}"), ("iwae", "{:.2f}"),
           ("iwae_bpd", "{:.4f}"), ("khat_max", "{:.2f}"), ("pfode", "{:.2f}"), ("pfode_bpd", "{:.4f}"),
           ("pfode_nfe", "{:.0f}"), ("pfode_s_per_image", "{:.3f}"), ("params", "{:,}"), ("sec_per_epoch", "{:.2f}")]


def format_table(rows: list[dict]) -> str:
    """A Markdown table of the comparison rows."""
    head = "| " + " | ".join(c for c, _ in COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for c, fmt in COLUMNS:
            v = r.get(c)
            cells.append("–" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_compare(models: list, base: TrainConfig, out: str, K: int = 50, iwae_examples: int = 100,
                eval_examples: int = 1000, pfode_examples: int = 100, pfode_samples: int = 1, render: bool = True,
                log=print, fixed=None) -> dict:
    """Train each model with the same budget and data, evaluate, and write the report to ``out``
    (rewritten after each model, so a late failure keeps the rows already done; a failure after a
    model's training names its checkpoint).  The runs of an earlier report in ``out`` are replaced.

    ``models`` holds names (``"vae"``), names with options (``"vdm(schedule=cosine)"``) or
    ``(name, options)`` pairs.  Every model is checked before any training and before anything is
    written (:func:`hlvm.training.preflight.preflight`: built with its options, fitted to the data,
    one gradient of its objective), so a broken model fails first (ValueError naming it).

    ``sec_per_epoch`` is the training throughput after warm-up: the first
    :data:`~hlvm.training.WARMUP_STEPS` steps (allocation, caches, compilation) and the periodic
    evaluations are left out.
    """
    models = [_entry(m) for m in models]
    check_options(models, base, out, K, iwae_examples, eval_examples, pfode_examples, pfode_samples)
    data = load_dataset(base.data, base.binarize, base.data_dir)
    configs = [_run_config(base, spec, options, out, eval_examples, fixed) for spec, options in models]
    for cfg in configs:  # every model tried before the first training, and before anything is written
        preflight(cfg, data)
    os.makedirs(out, exist_ok=True)
    report = {"rows": [], "details": {}, "curves": {}, "breakdowns": {}, "files": {}, "per_image": {}}
    settings = dict(K=K, iwae_examples=iwae_examples, eval_examples=eval_examples, pfode_examples=pfode_examples,
                    pfode_samples=pfode_samples)
    for cfg in configs:
        name, tag = model_label(cfg.model, cfg.model_kwargs), _tag(cfg.model, cfg.model_kwargs)
        log(f"== {name}: training on {data.name} ({data.kind}, {tuple(data.shape)}) for {cfg.steps or cfg.epochs} "
            f"{'steps' if cfg.steps else 'epochs'}")
        trainer = Trainer(cfg, data)
        result = trainer.fit()
        try:
            with trainer.ema_weights():  # evaluate the EMA weights when EMA is on
                _report_model(report, name, tag, trainer, result, data, base, settings, out, render, log)
        except Exception as e:
            msg = str(e).splitlines()[0] if str(e) else ""
            raise EvaluationFailed(f"{name}: evaluating or reporting failed after training ({type(e).__name__}: {msg}); "
                                   f"its trained checkpoint is kept at {trainer.ckpt_path}") from e
    table = format_table(report["rows"])
    log("\n" + table)
    log(f"\nreport written to {out}/report.md")
    return {"rows": report["rows"], "details": report["details"]}


def check_options(models: list[tuple], base: TrainConfig, out: str, K: int, iwae_examples: int, eval_examples: int,
                  pfode_examples: int, pfode_samples: int) -> None:
    """Every option of a comparison, checked before any data is read (ValueError naming the option);
    ``models`` as ``(name, options)`` pairs."""
    if not models:
        raise ValueError("--models is empty: name at least one model")
    tags = [_tag(*m) for m in models]
    twice = sorted({model_label(*m) for m, t in zip(models, tags) if tags.count(t) > 1})
    if twice:
        raise ValueError(f"--models names {', '.join(twice)} more than once (each model gets one run folder)")
    base.validate()
    for spec, options in models:  # unknown names, broken model files and unknown options fail before any training
        check_model_options(spec, options)
    T = base.T if any(accepts(spec, "T") for spec, _ in models) else None
    check_compare_options(K, iwae_examples, eval_examples, pfode_examples, pfode_samples, MIN_KHAT_SAMPLES, T)
    writable_folder(out, "the report")


def _entry(model) -> tuple:
    """``(name, options)`` of one entry of ``models``: a name, ``name(KEY=VALUE,...)`` or a pair."""
    if isinstance(model, str):
        return parse_model(model)
    spec, options = model
    return spec, dict(options or {})


def _run_config(base: TrainConfig, spec: str, options: dict, out: str, eval_examples: int,
                fixed=None) -> TrainConfig:
    """The training config of one model of the comparison: ``base`` with the model, its options,
    its training defaults (:func:`hlvm.registry.training_defaults`) for the fields not in ``fixed``
    (those the user set; None: the fields ``base`` holds at TrainConfig's defaults) and run folder;
    ``--T`` and ``--layers`` apply to the models that have them."""
    if fixed is None:
        plain = TrainConfig()
        fixed = {f.name for f in fields(TrainConfig) if getattr(base, f.name) != getattr(plain, f.name)}
    return replace(with_training_defaults(replace(base, model=spec), fixed), model=spec, model_kwargs=dict(options), out=os.path.join(out, "runs", _tag(spec, options)),
                   eval_examples=min(eval_examples, 500), resume=False, overwrite=True,
                   T=base.T if accepts(spec, "T") else None, layers=base.layers if accepts(spec, "layers") else None)


#: the trainer options a model's recipe may set (:func:`hlvm.registry.training_defaults`), shown per row
RECIPE_FIELDS = ("kl_warmup", "free_bits", "grad_clip", "skip_norm", "lr_schedule", "lr_warmup", "ema", "estimator_kwargs")


def training_options(cfg: TrainConfig) -> dict:
    """The :data:`RECIPE_FIELDS` of ``cfg`` that differ from TrainConfig's defaults."""
    plain = TrainConfig()
    return {k: getattr(cfg, k) for k in RECIPE_FIELDS if getattr(cfg, k) != getattr(plain, k)}


def _tag(name: str, options: dict | None = None) -> str:
    """The file-name tag of a model in the report (its run folder, figure names): the name, then
    each option as ``_key-value`` with characters other than letters, digits, ``.``, ``+``, ``-``
    dropped (``vdm(schedule=cosine,fourier=(7,8))`` → ``vdm_schedule-cosine_fourier-7-8``)."""
    tag = os.path.basename(name).replace(":", "-").replace(".py", "")
    for key, value in (options or {}).items():
        tag += f"_{key}-" + "-".join(filter(None, re.split(r"[^A-Za-z0-9.+-]+", str(value))))
    return tag


def _report_model(report, name, tag, trainer, result, data, base, settings, out, render, log) -> None:
    """Evaluate one trained model, add its row, figures and breakdown, and rewrite the report."""
    row, detail = _evaluate_row(name, trainer, result, data, base.seed, settings, log)
    report["per_image"][name] = {k: v.numpy() for k, v in detail.pop("per_image").items()}
    report["rows"].append(row)
    report["details"][name] = detail
    report["curves"][name] = ([h["step"] for h in trainer.history], [h["test_elbo"] for h in trainer.history])
    ev = detail["evaluation"]
    if "kl" in ev:
        report["breakdowns"][name] = {**{f"KL {k}": v for k, v in ev["kl"].items()}, "recon": ev["reconstruction"]}
    elif "diffusion" in ev:
        report["breakdowns"][name] = {"recon": ev["reconstruction"], "prior": ev["prior"], "diffusion": ev["diffusion"]}
    report["files"][name] = _figures(trainer.model, tag, data, trainer, base.seed, out, render, log)
    _write_report(report, data, base, settings, out)


def _evaluate_row(name, trainer, result, data, seed, settings, log):
    """Score one trained model (:func:`hlvm.eval.score`) and make its table row and its details."""
    model, test = trainer.model, data.test.to(trainer.device, trainer.dtype)
    K = settings["K"]
    s = score(model, test, trainer.bound_estimator, seed=seed, eval_examples=settings["eval_examples"], K=K,
              iwae_examples=settings["iwae_examples"], pfode_examples=settings["pfode_examples"],
              pfode_samples=settings["pfode_samples"], per_example=True)  # every model on the same first images
    for message in s.khat_warnings:
        log(f"   warning ({name}): {message}")
    ev, iw, pf = s.evaluation, s.iwae, s.pfode
    row = {"model": name, "options": dict(trainer.cfg.model_kwargs), "training": training_options(trainer.cfg), "elbo": ev["elbo"], "elbo_se": ev["nats_se"], "bpd": ev["bpd"],
           "iwae": iw.get("iwae"), "iwae_se": iw.get("iwae_se"), "iwae_bpd": iw.get("iwae_bpd"),
           "khat_max": iw.get("khat_max"), "khat_mean": iw.get("khat_mean"),
           "pfode": pf.get("pfode"), "pfode_se": pf.get("pfode_se"), "pfode_bpd": pf.get("pfode_bpd"),
           "pfode_nfe": pf.get("pfode_nfe"),
           "pfode_s_per_image": pf["pfode_seconds"] / pf["n_examples"] if pf else None,
           "params": sum(p.numel() for p in model.parameters()), "sec_per_epoch": result["seconds_per_epoch"],
           "steps": result["steps"], "estimator": type(trainer.estimator).__name__,
           "iwae_note": ("no importance-weighted bound of the continuous-time model (a discretized chain would be "
                         "another model): the PF-ODE bound takes its place") if not own_bounds(model)["iwae"] else None}
    log(f"   ELBO {ev['elbo']:.2f} ± {ev['nats_se']:.2f} nats ({ev['bpd']:.4f} bits/dim)"
        + (f", IWAE(K={K}) {iw['iwae']:.2f} nats, k̂max {iw.get('khat_max', float('nan')):.2f}" if iw else "")
        + (f", PF-ODE bound {pf['pfode']:.2f} nats ({pf['pfode_nfe']:.0f} NFE)" if pf else ""))
    return row, {"evaluation": ev, "iwae": iw, "pfode": pf, "history": result["history"], "per_image": s.per_example}


def _figures(model, tag, data, trainer, seed, out, render, log) -> list[str]:
    """Sample grid, reconstructions and plate diagram of one model; the file names written."""
    from .plots import save_grid, save_samples

    files = []
    if len(data.shape) == 3:
        files.append(save_samples(model, os.path.join(out, f"samples_{tag}.png"), data.shape, data.kind, seed))
        with torch.no_grad():
            x = data.test[:32].to(trainer.device, trainer.dtype)
            rec = model.reconstruct(x) if callable(getattr(model, "reconstruct", None)) else None
            if rec is not None:
                pair = torch.cat([x.cpu(), rec.reshape(x.shape).cpu()])  # originals, then reconstructions
                files.append(save_grid(pair, os.path.join(out, f"reconstructions_{tag}.png"), data.kind, nrow=16))
    if render:
        try:
            from ..graph import render_module

            path = os.path.join(out, f"diagram_{tag}.png")
            render_module(model, path)
            files.append(path)
        except Exception as e:  # rendering is optional in a report (e.g. no Graphviz)
            log(f"   (no plate diagram for {tag}: {str(e).splitlines()[0]})")
    return [os.path.basename(f) for f in files]


def _write_report(report, data, base, settings, out):
    from .plots import plot_bars, plot_curves

    plot_curves(report["curves"], os.path.join(out, "elbo_curves.png"))
    if report["breakdowns"]:
        plot_bars(report["breakdowns"], os.path.join(out, "breakdown.png"), ylabel="nats per image")
    rows = report["rows"]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(f"# hlvm compare on {data.name}\n\n")
        f.write(f"Same budget per model ({base.steps or base.epochs} {'steps' if base.steps else 'epochs'}, batch "
                f"{base.batch_size}, lr {base.lr}, seed {base.seed}); test ELBO (± its standard error over examples) "
                f"on {min(settings['eval_examples'], data.test.shape[0])} test images, IWAE with K = {settings['K']} on "
                f"{settings['iwae_examples']}, probability-flow ODE bound (diffusion chains over the data; "
                f"{settings['pfode_samples']} draw(s) of z_0 per image, dopri5) on {settings['pfode_examples']}. "
                "Every column is a lower bound on log p(x) of the row's model, in nats per image (higher is better), "
                "and bits/dim (lower is better). sec_per_epoch: training steps only, after the first "
                f"{WARMUP_STEPS} steps of warm-up (allocation, caches, compilation); evaluations excluded.\n\n")
        f.write(format_table(rows) + "\n\n")
        for r in rows:
            if r.get("training"):  # trainer options beyond the shared budget (a model's recipe, or given)
                f.write(f"* {r['model']} trained with " + ", ".join(f"{k}={v}" for k, v in r["training"].items()) + ".\n")
            if r.get("iwae_note"):
                f.write(f"* {r['model']}: {r['iwae_note']}.\n")
        paired = paired_entries(report["per_image"]) if len(report["per_image"]) > 1 else []
        f.write("\n".join(paired_lines(paired)) + "\n" if paired else "")
        f.write("\n![test ELBO](elbo_curves.png)\n\n")
        if report["breakdowns"]:
            f.write("![breakdown](breakdown.png)\n\n")
        for name, files in report["files"].items():
            if files:
                f.write(f"**{name}**: " + " · ".join(f"[{fn}]({fn})" for fn in files) + "\n\n")
        f.write(files_section(out, also=("report.json",)))  # every file: runs, checkpoints, metrics, JSON
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump({"data": data.name, "rows": rows, "paired": paired, "details": report["details"], "config": base.__dict__,
                   "settings": settings}, f, indent=1, default=str)
