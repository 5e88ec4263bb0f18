"""``hlvm evaluate RUN``: score a trained run on its data set's test split, as the results page does.

    hlvm evaluate runs/vae                       # ELBO, IWAE (K = 5000) and k̂ on every test image
    hlvm evaluate runs/vdm --examples 1000       # ELBO and PF-ODE bound on the first 1000
    hlvm evaluate runs/vae/checkpoint.pt --K 500 --out eval/vae

RUN is a run folder or a checkpoint file written by ``hlvm train`` / ``hlvm compare``. The model
is rebuilt from the checkpoint (its model name or ``file.py:Class``, its options, the EMA weights
when the run kept them) and scored by :func:`hlvm.eval.score` — the scorer behind ``hlvm
compare`` and ``make results`` — with the ELBO estimator the run trained with:

* the **ELBO** with its breakdown and active units;
* the **IWAE bound** (Burda, Grosse & Salakhutdinov 2016, eq. 8) at ``--K`` importance samples
  (default 5,000, the published protocol the results page follows) with its Pareto k̂ (Vehtari
  et al. 2024), for a model whose program has its own IWAE bound;
* the **probability-flow ODE bound** (Song et al. 2021) for a continuous-time diffusion chain
  over the data, in the IWAE's place.

Before the work starts, a pilot on a few images times each bound and one line gives the estimated
time. ``--out`` (default ``RUN/evaluation``) receives ``evaluation.json`` (the summary) and
``per_image.npz`` (one float64 array per bound, value i on test image i: the per-image values
that :func:`hlvm.eval.paired.paired_difference` compares between runs). Bad input exits 2 with
one line before any work.
"""

from __future__ import annotations

import json
import math
import os
import time

from hlvm.limits import DATASETS

__all__ = ["register", "run", "PROTOCOL_K", "JSON_NAME", "NPZ_NAME", "plan", "estimate_seconds", "summary"]

#: importance samples of the IWAE bound by default: the published protocol (Burda et al. 2016, §5),
#: which ``make results`` follows
PROTOCOL_K = 5000
#: the files written in ``--out``
JSON_NAME, NPZ_NAME = "evaluation.json", "per_image.npz"


def register(sub):
    p = sub.add_parser("evaluate", help="score a trained run on its test split (ELBO, IWAE, k̂, PF-ODE)")
    p.add_argument("run", help="run folder or checkpoint file written by hlvm train / compare")
    p.add_argument("--data", default=None, choices=DATASETS, help="data set whose test split is scored (default: the run's)")
    p.add_argument("--data-dir", default=None, help="folder of the data set's files (default: the run's)")
    p.add_argument("--K", type=int, default=None, help=f"importance samples of the IWAE bound, 0: none (default "
                   f"{PROTOCOL_K} where the model has its own IWAE bound)")
    p.add_argument("--examples", type=int, default=None, help="score the first N test images (default: all)")
    p.add_argument("--pfode-samples", type=int, default=1, help="draws of z_0 per image for the PF-ODE bound (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of every evaluation (default 0, as the results page)")
    p.add_argument("--out", default=None, help=f"folder for {JSON_NAME} and {NPZ_NAME} (default RUN/evaluation)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: the free cores)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=run)


def _check_options(args) -> None:
    """The options that need no file: ranges, the device, ``--out`` not a file (ValueError)."""
    from hlvm.validate import check_device, check_int

    check_int("--K", args.K, 0, optional=True, note=" (0: no IWAE bound)")
    check_int("--examples", args.examples, 1, optional=True)
    check_int("--pfode-samples", args.pfode_samples, 1)
    check_int("--seed", args.seed, 0, 2**32 - 1)
    check_int("--threads", args.threads, 1, optional=True)
    check_device("--device", args.device)
    if args.out is not None and os.path.isfile(args.out):
        raise ValueError(f"--out {args.out!r} is a file; give a folder")


def plan(args) -> dict:
    """Everything the evaluation needs, checked before any work: the checkpoint (an hlvm run), the
    rebuilt model and its ELBO estimator, the test images and the settings of :func:`hlvm.eval.score`."""
    import torch

    from hlvm.training.checkpoints import load_run_checkpoint

    from .sample import rebuild

    _check_options(args)
    if not os.path.exists(args.run):
        raise ValueError(f"{args.run!r} does not exist: give a run folder or a checkpoint file")
    ck = load_run_checkpoint(args.run, map_location=args.device)
    model = rebuild(ck, args.device)
    test = _test_split(ck, args).to(args.device, next(model.parameters()).dtype)
    n = test.shape[0] if args.examples is None else args.examples
    if n > test.shape[0]:
        raise ValueError(f"--examples {n}: the test split has {test.shape[0]} images")
    torch.set_num_threads(args.threads or _threads())
    return {"ck": ck, "model": model, "elbo": _estimator(ck, model), "test": test[:n],
            "settings": _settings(model, args, n)}


def _threads() -> int:
    from hlvm.limits import default_threads

    return default_threads()


def _test_split(ck: dict, args):
    """The test images of ``--data`` (default: the run's data set, binarized as the run was)."""
    from hlvm.data import load_dataset

    cfg = ck["config"]
    name = args.data or cfg["data"]
    data = load_dataset(name, cfg.get("binarize"), args.data_dir or cfg.get("data_dir"))
    if tuple(data.shape) != tuple(ck["data"]["shape"]):
        raise ValueError(f"--data {name}: images of shape {tuple(data.shape)}, but the run's model takes "
                         f"{tuple(ck['data']['shape'])} ({ck['data']['name']})")
    return data.test


def _estimator(ck: dict, model):
    """The ELBO estimator the run trained with (its time samplers' state restored when kept)."""
    from hlvm.estimators import make_estimator

    cfg = ck["config"]
    elbo = make_estimator(cfg.get("estimator", "auto"), model)
    if ck.get("estimator") and cfg.get("free_bits", 0) <= 0 and hasattr(elbo, "load_state_dict"):
        elbo.load_state_dict(ck["estimator"])
    return elbo


def _settings(model, args, n: int) -> dict:
    """The arguments of :func:`hlvm.eval.score`: every bound on the first ``n`` images; K by the
    results page's rule (:data:`PROTOCOL_K` where the model has its own IWAE bound)."""
    from hlvm.eval import own_bounds

    own = own_bounds(model)
    if args.K and not own["iwae"]:
        raise ValueError(f"--K {args.K}: {type(model).__name__} has a continuous-time diffusion chain, whose own bound "
                         "is the PF-ODE bound (reported without --K); its IWAE would score a discretization")
    K = args.K if args.K is not None else (PROTOCOL_K if own["iwae"] else 0)
    return {"seed": args.seed, "eval_examples": n, "K": K, "iwae_examples": n if K else 0,
            "iwae_batch": max(1, 20000 // K) if K else 100, "pfode_examples": n if own["pfode"] else 0,
            "pfode_samples": args.pfode_samples}


def estimate_seconds(p: dict) -> tuple[float, dict]:
    """The estimated seconds of the whole evaluation, and the pilot sizes: each bound, after a
    warm-up pass on two images, is timed on one batch of the real run (the batch sizes
    :func:`hlvm.eval.score` uses) and that time multiplied by the number of batches."""
    import inspect

    from hlvm.eval import evaluate

    s, x, n = p["settings"], p["test"], p["test"].shape[0]
    common, batch = dict(elbo=p["elbo"], seed=s["seed"]), inspect.signature(evaluate).parameters
    runs = {"elbo": (batch["batch_size"].default, {})}
    if s["K"]:
        runs["iwae"] = (s["iwae_batch"], dict(K=s["K"], breakdown=False, iwae_batch=s["iwae_batch"]))
    if s["pfode_examples"]:
        runs["pfode"] = (batch["pfode_batch"].default, dict(breakdown=False, pfode=True, pfode_samples=s["pfode_samples"]))
    total, sizes = 0.0, {}
    for name, (size, options) in runs.items():
        sizes[name] = min(size, n)
        _quiet(evaluate, p["model"], x[:2], **common, **options)  # warm-up: first calls pay one-off costs
        start = time.perf_counter()
        _quiet(evaluate, p["model"], x[:sizes[name]], **common, **options)
        total += (time.perf_counter() - start) * math.ceil(n / sizes[name])
    return total, sizes


def _quiet(fn, *args, **kwargs):
    """``fn`` with k̂ warnings silenced (a pilot's few images say nothing about the tail)."""
    import warnings

    from hlvm.eval import ParetoKWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ParetoKWarning)
        return fn(*args, **kwargs)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _estimate_line(p: dict, seconds: float, sizes: dict) -> str:
    s, n = p["settings"], p["test"].shape[0]
    parts = [f"ELBO on {n} images"] + ([f"IWAE (K = {s['K']}) on {n}"] if s["K"] else []) \
        + ([f"PF-ODE bound on {n}"] if s["pfode_examples"] else [])
    pilot = ", ".join(f"{k} {v}" for k, v in sizes.items())
    return f"estimated time: about {_duration(seconds)} for {', '.join(parts)} (pilot images: {pilot})"


class _Bars:
    """Progress of :func:`hlvm.eval.score`: one tqdm bar per pass over the images (stderr)."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar, self.stage = enabled, None, None

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm.auto import tqdm

        if self.bar is None or stage != self.stage or done < self.bar.n:
            self.close()
            self.bar = tqdm(total=total, desc=stage, unit="img", disable=not self.enabled, dynamic_ncols=True)
            self.stage = stage
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def summary(p: dict, scores, estimated: float) -> dict:
    """The ``evaluation.json`` record: what was scored, how, and every number :func:`hlvm.eval.score` found."""
    ck, s = p["ck"], p["settings"]
    cfg = ck["config"]
    return {"run": os.path.abspath(p["path"]), "model": cfg["model"], "options": {"T": cfg["T"], "layers": cfg["layers"],
            **cfg.get("model_kwargs", {})}, "step": ck["step"], "ema": bool(ck.get("ema")),
            "dataset": p["dataset"], "split": "test", "n_examples": int(p["test"].shape[0]),
            "estimator": type(p["elbo"]).__name__, **{k: s[k] for k in ("seed", "K", "pfode_samples")},
            "evaluation": scores.evaluation, "iwae": scores.iwae, "pfode": scores.pfode,
            "khat_warnings": scores.khat_warnings, "seconds": scores.seconds, "estimated_seconds": estimated,
            "per_image": {"file": NPZ_NAME, "arrays": sorted(scores.per_example)}}


def _write(out: str, record: dict, values: dict) -> None:
    """``evaluation.json`` and ``per_image.npz`` (float64 arrays named by bound) in ``out``."""
    import numpy as np

    os.makedirs(out, exist_ok=True)
    np.savez_compressed(os.path.join(out, NPZ_NAME), **{k: v.numpy() for k, v in values.items()})
    with open(os.path.join(out, JSON_NAME), "w") as f:
        json.dump(record, f, indent=1)


def _report_lines(record: dict) -> list[str]:
    """The numbers on the terminal: each bound ± its SE; k̂ and what it implies."""
    ev, iw, pf, n = record["evaluation"], record["iwae"], record["pfode"], record["n_examples"]
    lines = [f"ELBO {ev['elbo']:.2f} ± {ev['nats_se']:.2f} nats ({ev['bpd']:.4f} bits/dim) on {n} test images"]
    if iw:
        lines.append(f"IWAE (K = {iw['K']}) {iw['iwae']:.2f} ± {iw['iwae_se']:.2f} nats")
        if "khat_max" in iw:
            lines.append(f"k̂ mean {iw['khat_mean']:.2f}, max {iw['khat_max']:.2f}; {100 * iw['khat_frac_gt_0.7']:.1f}% of "
                         f"images above 0.7, where the IWAE estimate is unreliable (Vehtari et al. 2024)")
    if pf:
        lines.append(f"PF-ODE bound {pf['pfode']:.2f} ± {pf['pfode_se']:.2f} nats")
    return lines


def run(args):
    from hlvm.eval import score

    p = plan(args)
    p["path"], p["dataset"] = args.run, args.data or p["ck"]["config"]["data"]
    out = args.out or os.path.join(args.run if os.path.isdir(args.run) else os.path.dirname(os.path.abspath(args.run)),
                                   "evaluation")
    estimated, sizes = estimate_seconds(p)
    print(_estimate_line(p, estimated, sizes), flush=True)
    bars = _Bars(args.progress)
    try:
        s = score(p["model"], p["test"], p["elbo"], per_example=True, progress=bars, **p["settings"])
    finally:
        bars.close()
    record = summary(p, s, estimated)
    _write(out, record, s.per_example)
    for line in _report_lines(record):
        print(line)
    print(f"wrote {os.path.join(out, JSON_NAME)} and {NPZ_NAME} ({s.seconds:.0f} s)")
