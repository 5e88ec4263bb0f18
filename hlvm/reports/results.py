"""``make results``: the zoo trained on full binarized MNIST, set beside the published numbers.

A long job (only its ``smoke`` profile runs in the tests), resumable: each model trains through
:class:`~hlvm.training.Trainer` with a checkpoint per epoch, and each finished row is saved to
``results.json`` at once, so rerunning continues from the models and rows already done.  One
progress line per model per epoch.

Protocol: train on the 60,000 training images with dynamic binarization, test on the 10,000 test
images binarized once (seed :data:`hlvm.data.MNIST_TEST_SEED`); test ELBO, the IWAE bound (Burda
et al. 2016) with K importance samples, the probability-flow ODE bound for diffusion models,
bits/dim = nats / (784 ln 2), PSIS k̂ and active units, all from :func:`hlvm.eval.score`.  Every
number is a lower bound on log p(x) of its row's model, in nats per image; the page shows
NLL = −bound beside the published NLLs.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from dataclasses import dataclass, field

import torch

from ..eval.scores import score
from ..training.monitor import run_step_seconds
from .page import write_page
from .per_image import load_row_values, paired_entries, save_row_values
from .files import save_json
from .search import final_options, run_search, score_config, space_of
from .studies import study_entries, study_options

__all__ = ["Profile", "PROFILES", "ROWS", "CONFIG_FIELDS", "run_results", "train_config"]

#: (row name, registered model, model options, trainer options) — the rows of the results table.  A row's
#: options are the base of its search's configurations (:data:`hlvm.reports.search.SPACES`: each sets its
#: own on top), spelled out in full so that they do not move with the zoo's defaults (which follow the
#: winners): the zoo's defaults when the searches were declared.
ROWS = [
    ("vae", "vae", {"latent_dim": 20, "hidden": 400}, {}),
    ("hvae-bu", "hvae-bu", {"latent_dims": (32, 16), "hidden": 256}, {}),
    # the top-down HVAE with the remedies that won on full MNIST at 10 epochs (IWAE_500 on 1,000 test images:
    # 16-d layers, hidden 256: −98.9 (residual merge + warm-up) … −98.2 (+ free bits); 32-d layers, hidden 400
    # as the VAE's: −94.5, against the VAE's −97.3)
    # gradients clipped at a global norm of 20,000 (the median is ≈ 8,500 at batch 128 after the first 100
    # steps): without clipping this configuration diverged at epoch 19 (test ELBO −100.1 → −2,858 nats).
    # (Update skipping at 50,000 skipped every update: the first steps' norms are larger still.)
    ("hvae-td", "hvae-td", {"merge": "residual", "latent_dim": 32, "hidden": 400},
     {"kl_warmup": 2000, "free_bits": 0.5, "grad_clip": 20000.0}),
    ("vdm", "vdm", {"T": None, "schedule": "linear", "width": 512, "depth": 3}, {}),
    ("vdm-T1000", "vdm", {"T": 1000, "schedule": "linear", "width": 512, "depth": 3}, {}),
]



@dataclass
class Profile:
    """One stated budget for every row."""

    name: str
    data: str = "mnist"
    epochs: int = 20
    steps: int | None = None
    batch_size: int = 128
    K: int = 5000
    iwae_examples: int | None = None  # None: the whole test set
    iwae_examples_chain: int = 100  # rows whose IWAE runs a T-step chain per sample (VDM T = 1000)
    K_chain: int = 10
    eval_examples: int | None = None
    pfode_examples: int | None = None
    device: str = "cpu"
    threads: int = 2
    #: train with the recorded step (``--compile``, :mod:`hlvm.training.compile`) wherever it holds;
    #: it checks itself against Pyro's step and falls back with a notice where it does not
    compile: bool = True
    model_options: dict = field(default_factory=dict)
    #: the validation search (:mod:`hlvm.reports.search`): its budget per configuration (epochs, or
    #: steps), the rows searched (None: every row with a space), the first configurations of each
    #: space (None: all) and the held-out images scored (None: all)
    search_epochs: int | None = 6
    search_steps: int | None = None
    search_rows: tuple | None = None
    search_configs: int | None = None
    search_eval_examples: int | None = None
    #: rows train with their recipe studies' options (:mod:`hlvm.reports.studies`: full-size models on MNIST)
    studies: bool = True

    def searches(self, row: str) -> bool:
        """Whether this profile searches the space of ``row`` (:data:`hlvm.reports.search.SPACES`)."""
        return self.search_rows is None or row in self.search_rows

    def search_budget(self) -> str:
        return f"{self.search_epochs} epochs" if self.search_epochs else f"{self.search_steps} steps"


PROFILES = {
    # the published protocol on the whole test set (Burda et al. 2016: IWAE K = 5,000 on all 10,000
    # images; the PF-ODE bound on all of them too).  Epochs from the 3-hour budget on 2 cores, measured
    # on the 20-epoch page (41 s per epoch for all five rows, 55 min of evaluation at this protocol)
    # and allowing for winners up to twice the default networks' cost: search ≈ 35 min, evaluation
    # ≈ 60–80 min, leaving ≈ 70 min of training.
    "cpu": Profile("cpu", epochs=50, K=5000, iwae_examples=None, pfode_examples=None, threads=2),
    "gpu": Profile("gpu", epochs=200, K=5000, device="cuda", threads=4, iwae_examples_chain=1000, K_chain=50,
                   search_epochs=20),
    "smoke": Profile("smoke", data="digits", epochs=None, steps=20, batch_size=64, K=30, iwae_examples=32,
                     iwae_examples_chain=4, K_chain=2, eval_examples=64, pfode_examples=8, threads=1,
                     model_options={"vdm": {"width": 32, "depth": 1}}, search_epochs=None, search_steps=5,
                     search_rows=("vae",), search_configs=2, search_eval_examples=64, studies=False),
}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(__file__), timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_results(profile: str = "cpu", out: str = "docs", runs: str = "runs/results", device: str | None = None,
                threads: int | None = None, log=print) -> dict:
    """Train and evaluate every row of :data:`ROWS` under ``profile``; write ``out/results.{json,md}``.

    First every row's validation search (:mod:`hlvm.reports.search`, each configuration saved to
    ``out/results[-profile]-search.json`` as it finishes; a row sharing another's search reads it
    back), so that every winner is known before the long runs; then each row is one
    :func:`_run_row`: train its winner on the whole training set (resuming the run folder's
    checkpoint), score the trained model
    by its own bounds (:func:`hlvm.eval.score`), draw its figures; the row is saved at once.  A row
    saved without a ``search`` field (written before the search phase) is run again.
    """
    from ..data import load_dataset, validation_split

    if profile not in PROFILES:
        raise ValueError(f"unknown results profile {profile!r}; expected one of {sorted(PROFILES)}")
    p = PROFILES[profile]
    data = load_dataset(p.data)
    stem = os.path.join(out, f"results{'' if profile == 'cpu' else '-' + profile}")
    job = _Job(profile, p, data, device or p.device, threads or p.threads, out, runs, log, validation_split(data),
               stem + "-search.json", stem)
    torch.set_num_threads(job.threads)
    os.makedirs(out, exist_ok=True)
    done = json.load(open(stem + ".json")) if os.path.exists(stem + ".json") else {"rows": []}
    finished = {r["row"] for r in done["rows"] if r.get("profile") == profile and "search" in r}
    todo = [row for row in ROWS if row[0] not in finished]
    # each row's recipe studies, read before any training (a missing study file stops the job here)
    studies = {row[0]: study_entries(row[1], out) if p.studies else [] for row in todo}
    searches = {row[0]: _search_row(job, *row) for row in todo}  # every search before any final row
    for row in ROWS:
        if row[0] in finished:
            log(f"== {row[0]}: already in {stem}.json, skipped")
            continue
        entry = _run_row(job, *row, search=searches[row[0]], studies=studies[row[0]])
        done["rows"] = [r for r in done["rows"] if not (r.get("row") == row[0] and r.get("profile") == profile)] + [entry]
        save_json(stem + ".json", done)
    mine = [r["row"] for r in done["rows"] if r.get("profile") == profile]
    done["paired"] = paired_entries(load_row_values(stem, mine))  # every pair of rows, on the same images
    save_json(stem + ".json", done)
    write_page(done, profile, stem + ".md", [name for name, *_ in ROWS])
    return done


@dataclass
class _Job:
    """What every row of one ``run_results`` call shares."""

    profile: str
    p: Profile
    data: object  # hlvm.data.DataSplit
    device: str
    threads: int
    out: str
    runs: str
    log: object
    valid: object  # the validation split (hlvm.data.validation_split) the searches train and score on
    search_path: str  # the searches' JSON, written as each configuration finishes
    stem: str  # out/results[-profile]: the JSON, the page and the per-image values share it


def _run_row(job: _Job, row: str, model: str, options: dict, trainer_options: dict, search: dict | None,
             studies: list) -> dict:
    """Train (the ``search``'s winner, with the options its recipe ``studies`` chose:
    :func:`~hlvm.reports.studies.study_entries`), score and draw one row of :data:`ROWS`; its entry
    of ``results.json``."""
    if search is not None:
        options, trainer_options = final_options(search["winner"], options, trainer_options)
    trainer_options = {**trainer_options, **(study_options(model) if studies else {})}
    trainer, cfg, result, train_seconds = _train_row(job, row, model, options, trainer_options)
    train_seconds = run_step_seconds(cfg.out) or train_seconds  # every segment of a resumed run, not the last
    with trainer.ema_weights():  # the EMA weights when EMA is on; the live ones are back afterwards
        entry = _scored_row(job, row, model, trainer, cfg, result, train_seconds, trainer_options)
    entry["search"] = search
    entry["studies"] = studies
    return entry


def _search_row(job: _Job, row: str, model: str, options: dict, trainer_options: dict) -> dict | None:
    """The validation search whose winner ``row`` trains (:func:`hlvm.reports.search.run_search`),
    or None when the row has no space or the profile does not search it."""
    found = space_of(row)
    if found is None or not job.p.searches(found[0]):
        return None
    source, configs = found
    p = job.p
    _, model, options, trainer_options = next(r for r in ROWS if r[0] == source)  # the searched row's own

    def fit(c: dict) -> dict:
        opts, trainer_opts = final_options(c, options, trainer_options)
        trainer, _, result, seconds = _train_row(job, f"{source}/{c['name']}", model, opts, trainer_opts, search=True)
        return {**score_config(trainer, job.valid.test, p.search_eval_examples), "steps": result["steps"],
                "train_seconds": seconds}

    return run_search(source, configs[:p.search_configs], job.search_path, fit,
                      f"{p.search_budget()} on {job.valid.train.shape[0]:,} images", job.log,
                      base={"model": options, "trainer": trainer_options})


def _scored_row(job: _Job, row: str, model: str, trainer, cfg, result: dict, train_seconds: float,
                trainer_options: dict) -> dict:
    """The ``results.json`` entry of a trained row: its bounds, figures and what produced them."""
    m, x = trainer.model, job.data.test.to(trainer.device, trainer.dtype)
    K, n_iw = _iwae_budget(job.p, m, x.shape[0])
    s = score(m, x, trainer.bound_estimator, seed=0, eval_examples=job.p.eval_examples, K=K, iwae_examples=n_iw,
              iwae_batch=max(1, 20000 // K), pfode_examples=job.p.pfode_examples or None,
              per_example=True)  # k̂ warnings: k̂ is in the row
    ev, iw, pf = s.evaluation, s.iwae, s.pfode
    entry = {
        "row": row, "model": model, "options": {"model": _recorded(cfg), "trainer": trainer_options},
        "profile": job.profile,
        "dataset": job.data.name, "n_train": int(job.data.train.shape[0]), "n_test": int(job.data.test.shape[0]),
        "n_test_elbo": ev["n_examples"], "test_elbo_nats": ev["elbo"], "test_elbo_se": ev["nats_se"],
        "bits_per_dim": ev["bpd"], "iwae_nats": iw.get("iwae"), "iwae_se": iw.get("iwae_se"), "iwae_k": iw.get("K"),
        "n_test_iwae": n_iw if iw else None, "khat_max": iw.get("khat_max"), "khat_mean": iw.get("khat_mean"),
        "khat_frac_gt_0.7": iw.get("khat_frac_gt_0.7"),
        "pfode_bound_nats": pf.get("pfode"), "pfode_se": pf.get("pfode_se"), "pfode_nfe": pf.get("pfode_nfe"),
        "n_test_pfode": pf.get("n_examples"),
        "active_units": ev.get("active_units_total"), "steps": result["steps"],
        "epochs": result["steps"] / trainer.steps_per_epoch, "train_seconds": train_seconds,
        "eval_seconds": s.seconds, "threads": job.threads, "device": _device_name(job.device),
        "git_commit": _commit(), "seed": cfg.seed, "estimator": type(trainer.estimator).__name__,
        "skipped_updates": trainer.optim.skipped,
    }
    entry["figures"] = _row_figures(job, row, trainer)
    entry["per_image"] = os.path.relpath(save_row_values(job.stem, row, s.per_example), job.out)
    job.log(f"   {row}: ELBO {ev['elbo']:.2f} ± {ev['nats_se']:.2f} nats"
            + (f", IWAE(K={K}) {iw['iwae']:.2f}" if iw else "") + (f", PF-ODE {pf['pfode']:.2f}" if pf else "")
            + f" ({train_seconds:.0f} s training, {s.seconds:.0f} s evaluation)")
    return entry


def _run_dir(job: _Job, row: str, options: dict, trainer_options: dict) -> str:
    """A run's folder: the row's name and a digest of its options, so that a run with other options
    (a new winner, a changed row) starts afresh instead of meeting a checkpoint it cannot resume."""
    digest = hashlib.sha1(json.dumps([options, trainer_options], sort_keys=True).encode()).hexdigest()[:8]
    return os.path.join(job.runs, job.profile, f"{row}-{digest}")


#: model options that are TrainConfig fields of their own (``--T``, ``--layers``), not constructor keywords
CONFIG_FIELDS = ("T", "layers")


def train_config(p: Profile, model: str, options: dict, trainer_options: dict, out: str, search: bool = False,
                 device: str = "cpu", eval_examples: int = 2000):
    """The :class:`~hlvm.training.TrainConfig` of a row (or, with ``search``, of one search
    configuration at the search budget) under profile ``p``: ``options`` as model options (``T`` and
    ``layers`` to their own fields), the profile's ``model_options`` (the smoke profile's small
    networks) on top, ``trainer_options`` as TrainConfig fields; resuming ``out``'s checkpoint."""
    from ..data import default_binarization
    from ..training import CHECKPOINT, TrainConfig

    opts = {**options, **p.model_options.get(model, {})}
    fields = {k: opts.pop(k, None) for k in CONFIG_FIELDS}
    epochs, steps = (p.search_epochs, p.search_steps) if search else (p.epochs, p.steps)
    return TrainConfig(model=model, data=p.data, binarize=default_binarization(p.data), epochs=epochs, steps=steps,
                       batch_size=p.batch_size, device=device, out=out, progress=False, compile=p.compile,
                       resume=os.path.exists(os.path.join(out, CHECKPOINT)), model_kwargs=opts,
                       eval_examples=eval_examples, **fields, **trainer_options)


def _train_row(job: _Job, row: str, model: str, options: dict, trainer_options: dict, search: bool = False):
    """Train one row (resuming its run folder's checkpoint) — or, with ``search``, one configuration
    of a search on the validation split for the search budget: the trainer, its config, its result
    and the seconds taken."""
    from ..training import Trainer

    data = job.valid if search else job.data
    run_dir = _run_dir(job, os.path.join("search", row) if search else row,
                       {**options, **job.p.model_options.get(model, {})}, trainer_options)
    cfg = train_config(job.p, model, options, trainer_options, run_dir, search, job.device,
                       min(2000, data.test.shape[0]))
    job.log(f"== {row}: {model} {_recorded(cfg)} {trainer_options or ''}, {cfg.epochs or cfg.steps} "
            f"{'epochs' if cfg.epochs else 'steps'} on {data.name} ({job.device}, {job.threads} threads)"
            f"{' — resuming' if cfg.resume else ''}")
    start = time.perf_counter()
    trainer = Trainer(cfg, data)
    result = trainer.fit()
    return trainer, cfg, result, time.perf_counter() - start


def _recorded(cfg) -> dict:
    """A run's model options as the page records them: ``T`` always, ``layers`` when set, then the
    constructor's."""
    return {"T": cfg.T, **({"layers": cfg.layers} if cfg.layers is not None else {}), **cfg.model_kwargs}


def _iwae_budget(p: Profile, model, n_test: int) -> tuple[int, int]:
    """(K, test images) of a row's IWAE bound: a model whose IWAE runs a T-step chain per sample
    gets the profile's small chain budget."""
    from ..programs.chain import chains_of

    if any(c.T is not None for c in chains_of(model)):
        return p.K_chain, p.iwae_examples_chain
    return p.K, p.iwae_examples or n_test


def _row_figures(job: _Job, row: str, trainer) -> list[str]:
    """The row's test-ELBO curve and (image data) a grid of 64 samples drawn from seed 0; their file names."""
    from .plots import plot_curves, save_samples

    stem = os.path.join(job.out, f"results_{job.profile}_{row}")
    plot_curves({row: ([h["step"] for h in trainer.history], [h["test_elbo"] for h in trainer.history])},
                stem + "_curve.png")
    if len(job.data.shape) == 3:
        save_samples(trainer.model, stem + "_samples.png", job.data.shape, job.data.kind, seed=0)
    return [os.path.basename(stem + "_curve.png"), os.path.basename(stem + "_samples.png")]


def _device_name(device: str) -> str:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({os.cpu_count()} cores)"
