"""Test ELBO after a fixed number of epochs: hlvm's VAE against a stock-Pyro baseline VAE.

The baseline is the VAE of Pyro's tutorial written in plain Pyro style — ``pyro.module`` +
``Trace_ELBO`` + ``pyro.optim.Adam({"lr": 1e-3})``, 784-400-50 MLPs with softplus hidden units,
exp scale and a Bernoulli(sigmoid) decoder.  hlvm's ``VAE(latent_dim=50, hidden=400)`` trains with
the same estimator config (``Trace_ELBO``, same optimizer, learning rate, batch size, epochs and
batch order), and once more with its default ``TraceMeanField_ELBO``.  All on the same
``hlvm.data.load_dataset(--data)`` split, statically binarized (mnist5k: 4,000 train / 1,000 test;
mnist: 60,000 / 10,000).

The ``hlvm-train`` row is hlvm's *default* VAE as ``hlvm train vae`` trains it — the zoo's default
constructor (its family's search winner, docs/results.md), hlvm's estimator rule and optimizer
(:class:`hlvm.training.Trainer`) — at the same batch size, epochs and learning rate: the comparison a
user who knows Pyro's example makes (``--data mnist --epochs 20 --kinds baseline,hlvm-train``).

Test ELBO: ``TraceMeanField_ELBO`` (exact Gaussian KL, one-sample reconstruction; both models'
q and p(z) are diagonal Gaussians) averaged over ``--eval-passes`` passes of the test set, in nats
per image (higher is better) and bits/dim = −ELBO / (784 ln 2); mean ± sd over ``--seeds``.  The
``hlvm-train`` row of another zoo model is scored by the ELBO the results page scores it with
(:func:`hlvm.eval.scores.scoring_elbo`: for the VAE the same ``TraceMeanField_ELBO``; for a VDM the
diffusion ELBO with stratified times — a Pyro trace ELBO of a diffusion program is not its bound).

``--split validation`` trains on the first 50,000 training images and scores the last 10,000
(:func:`hlvm.data.validation_split`): the place to choose a setting, e.g. a trainer option for the
``hlvm-train`` row given with ``--train-options ema=0.999`` (the row is then evaluated at the weights
``hlvm train`` keeps for evaluation: the EMA's when one is kept).

    .venv/bin/python benchmarks/baseline_elbo.py [--epochs 10] [--seeds 3] [--threads 2] [--data mnist5k]
        [--kinds baseline,hlvm-trace,hlvm-meanfield,hlvm-train] [--split test|validation]
        [--train-options KEY=VALUE,...]
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time

import _common as C  # noqa: I001
import pyro
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

from hlvm.data import batches, load_dataset, validation_split
from hlvm.eval.scores import scoring_elbo
from hlvm.registry import load_class
from hlvm.zoo import VAE


# ------------------------------------------------------------------------------ the stock baseline
def BaselineVAE(z_dim=50, hidden_dim=400):
    """Pyro's tutorial VAE (https://pyro.ai/examples/vae.html) as the tutorial writes it: the gallery's
    examples/gallery/tutorial_vae.py, loaded as ``hlvm train FILE:Class`` loads a user's file."""
    path = C.ROOT + "/examples/gallery/tutorial_vae.py"
    return load_class(f"{path}:VAE")(z_dim=z_dim, hidden_dim=hidden_dim)


# ------------------------------------------------------------------------------ train / evaluate
def make(kind):
    if kind == "baseline":
        return BaselineVAE(50, 400), Trace_ELBO()
    m = VAE(latent_dim=50, hidden=400)
    return m, (Trace_ELBO() if kind == "hlvm-trace" else TraceMeanField_ELBO())


LABELS = {"baseline": "stock Pyro baseline VAE (tutorial), Trace_ELBO",
          "hlvm-trace": "hlvm VAE 784-400-50, Trace_ELBO (same config)",
          "hlvm-meanfield": "hlvm VAE 784-400-50, TraceMeanField_ELBO (hlvm default)",
          "hlvm-train": "hlvm default VAE, as `hlvm train vae` trains it"}


def train_hlvm(data, epochs, seed, device, batch_size, options=None, model="vae"):
    """``hlvm train vae`` with its defaults (and ``options``, trainer fields) at this batch size and number
    of epochs: (trainer, seconds, steps, loss)."""
    from hlvm.registry import with_training_defaults
    from hlvm.training import Trainer, TrainConfig

    cfg = TrainConfig(model=model, data=data.name, epochs=epochs, batch_size=batch_size, seed=seed, device=device,
                      out=tempfile.mkdtemp(prefix="hlvm-baseline-"), progress=False, eval_examples=1000,
                      **(options or {}))
    cfg = with_training_defaults(cfg, fixed=set(options or {}))  # the model's recipe, as `hlvm train` applies it
    t0 = time.perf_counter()
    trainer = Trainer(cfg, data)
    result = trainer.fit()
    return trainer, time.perf_counter() - t0, result["steps"], trainer.history[-1]["train_elbo"]


def parse_options(text: str) -> dict:
    """``"ema=0.999,lr_schedule=cosine"`` → TrainConfig fields (numbers where they parse)."""
    from hlvm.training import TrainConfig

    out = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in TrainConfig.__dataclass_fields__:
            raise SystemExit(f"error: --train-options {item!r}: expected KEY=VALUE with KEY a TrainConfig field")
        try:
            out[key] = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            out[key] = value
    return out


def train_eval(kind, data, epochs, seed, device, batch_size, eval_passes, options=None, model="vae"):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    if kind == "hlvm-train":
        trainer, seconds, steps, last = train_hlvm(data, epochs, seed, device, batch_size, options, model)
        with trainer.ema_weights() as model:  # the weights hlvm evaluates and samples with
            elbo = scoring_elbo(model, trainer.bound_estimator)  # the results page's ELBO of this model
            return {**evaluate(model, data, device, seed, eval_passes, elbo), "train_loss": last, "seconds": seconds,
                    "steps": steps}
    model, elbo = make(kind)
    model = model.to(device)
    svi = SVI(model.model, model.guide, pyro.optim.Adam({"lr": 1e-3}), elbo)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    steps, last = 0, float("nan")
    for _ in range(epochs):
        for xb in batches(data, batch_size, "train", shuffle=True, generator=gen, drop_last=True):
            last = svi.step(xb.to(device)) / xb.shape[0]
            steps += 1
    seconds = time.perf_counter() - t0
    return {**evaluate(model, data, device, seed, eval_passes), "train_loss": last, "seconds": seconds, "steps": steps}


def evaluate(model, data, device, seed, eval_passes, elbo=None) -> dict:
    """The test ELBO (``elbo``, default TraceMeanField_ELBO; ``eval_passes`` passes of the test set)
    in nats and bits/dim."""
    test = data.test.to(device)
    ev = elbo if elbo is not None else TraceMeanField_ELBO()
    torch.manual_seed(seed + 10_000)
    total = 0.0
    with torch.no_grad():
        for _ in range(eval_passes):
            for i in range(0, test.shape[0], 500):
                total += ev.loss(model.model, model.guide, test[i:i + 500])
    elbo_nats = -total / (eval_passes * test.shape[0])
    return {"elbo": elbo_nats, "bpd": -elbo_nats / (784 * math.log(2))}


def run(args) -> dict:
    device = C.setup(args)
    data = load_dataset(args.data, binarize="static")
    if args.split == "validation":
        data = validation_split(data)
    options = parse_options(args.train_options)
    kinds = args.kinds.split(",")
    if args.model != "vae":  # a validation study of another zoo model: its row says which
        LABELS["hlvm-train"] = f"hlvm default {args.model}, as `hlvm train {args.model}` trains it"
    if unknown := [k for k in kinds if k not in LABELS]:
        raise SystemExit(f"error: unknown --kinds {unknown}; expected some of {list(LABELS)}")
    runs = {k: [] for k in kinds}
    for s in range(args.seeds):
        for k in kinds:
            r = train_eval(k, data, args.epochs, args.seed + s, device, args.batch, args.eval_passes, options,
                           args.model)
            runs[k].append(r)
            print(f"  seed {args.seed + s}  {LABELS[k]:58s} test ELBO {r['elbo']:9.2f} nats  {r['bpd']:.4f} bpd  "
                  f"({r['seconds']:.1f} s)")
    rows = {}
    for k in kinds:
        e = [r["elbo"] for r in runs[k]]
        rows[k] = {"label": LABELS[k], "elbo": statistics.mean(e), "elbo_sd": statistics.stdev(e) if len(e) > 1 else 0.0,
                   "bpd": statistics.mean(r["bpd"] for r in runs[k]),
                   "seconds": statistics.mean(r["seconds"] for r in runs[k]), "runs": runs[k]}
    other = next(k for k in ("hlvm-trace", "hlvm-train", "hlvm-meanfield") if k in rows)
    diff = rows[other]["elbo"] - rows["baseline"]["elbo"] if "baseline" in rows else None
    res = {"info": C.machine_info(device), "data": data.name, "split": args.split, "train_options": options, "model": args.model, "n_test": int(data.test.shape[0]), "compared": other,
           "epochs": args.epochs, "seeds": args.seeds, "batch": args.batch,
           "steps": runs[kinds[0]][0]["steps"], "eval_passes": args.eval_passes, "rows": rows,
           "hlvm_minus_baseline": diff}
    print(f"\nTest ELBO after {args.epochs} epochs ({res['steps']} steps, batch {args.batch}), mean ± sd over {args.seeds} seed(s):")
    for k, r in rows.items():
        print(f"  {r['label']:58s} {r['elbo']:9.2f} ± {r['elbo_sd']:.2f} nats   {r['bpd']:.4f} bits/dim")
    if diff is not None:
        print(f"  {LABELS[other]} − baseline: {diff:+.2f} nats")
    return res


def markdown(res: dict, command: str) -> str:
    rows = [[r["label"], f"**{r['elbo']:.2f}** ± {r['elbo_sd']:.2f}", f"{r['bpd']:.4f}", f"{r['seconds']:.1f}"]
            for r in res["rows"].values()]
    return (f"`{command}` — {C.describe(res['info'])}; {res['epochs']} epochs = {res['steps']} steps at batch "
            f"{res['batch']}, Adam 1e-3, mean ± sd over {res['seeds']} seed(s); test ELBO on the "
            f"{res.get('n_test', 1000):,} test images of {res.get('data', 'mnist5k')} (static binarization; "
            f"TraceMeanField_ELBO, {res['eval_passes']} passes).\n\n"
            + C.md_table(["model", "test ELBO (nats/image)", "bits/dim", "train s"], rows)
            + f"\n\n{LABELS[res.get('compared', 'hlvm-trace')]} − stock baseline: "
              f"**{res['hlvm_minus_baseline']:+.2f} nats**.")


def main(argv=None):
    p = C.base_parser(__doc__.splitlines()[0], repeats=1)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--eval-passes", type=int, default=5)
    p.add_argument("--data", default="mnist5k", help="mnist5k (default) or mnist (full, 60,000 / 10,000)")
    p.add_argument("--split", choices=("test", "validation"), default="test",
                   help="score the test set (default) or train on the first 5/6 and score the held-out last 1/6")
    p.add_argument("--train-options", default="", help="TrainConfig fields for the hlvm-train row, KEY=VALUE,...")
    p.add_argument("--model", default="vae", help="the zoo model of the hlvm-train row (default vae; another is "
                   "a validation study of a trainer option for it, e.g. --model hvae-td --train-options ema=0.999)")
    p.add_argument("--kinds", default="baseline,hlvm-trace,hlvm-meanfield",
                   help=f"comma-separated rows, baseline first: {', '.join(LABELS)}")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.seeds, args.eval_passes, args.data = 1, 1, 1, "mnist5k"  # smoke: the small split
    res = run(args)
    C.dump_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
