"""VDM's variance-minimising noise schedule: per-batch variance of the continuous diffusion loss.

Kingma et al. (2021, §5, App. I.1): with fixed endpoints γ(0), γ(1) the expected continuous-time
loss does not depend on the schedule's interior, but its Monte Carlo variance does.  Three VDMs
train side by side with the same data order, steps and endpoints (γ ∈ [−13.3, 5]):

* ``linear``  — fixed linear schedule;
* ``cosine``  — fixed cosine schedule;
* ``variance`` — VDM's learned monotone network, its interior trained to minimise E[L²]
  (``DiffusionELBO(schedule_objective="variance")``; endpoints fixed here, so only the interior learns);
* ``variance-from-cosine`` — the same network acting on the cosine schedule's shape, so that it
  starts as cosine (``MonotoneNetSchedule(base="cosine")``).

Then, for each trained model, on the same fixed batch: the variance of the per-batch diffusion-loss
estimate over repeated draws of (t, ε) (antithetic time sampling, as in training), and the test
ELBO (exact continuous-time evaluation, 1,000 nodes in γ per example).

    .venv/bin/python benchmarks/schedule_variance.py [--steps 1500] [--quick] [--json out.json]
"""

from __future__ import annotations

import math

import _common as C  # noqa: I001
import pyro
import torch

import hlvm
from hlvm.data import load_dataset
from hlvm.diffusion.schedules import MonotoneNetSchedule
from hlvm.diffusion.bound import diffusion_bound
from hlvm.programs.chain import chains_of
from models import VDM

VARIANTS = {"linear": ("linear", "elbo"), "cosine": ("cosine", "elbo"), "variance": ("learned-net", "variance"),
            "variance-from-cosine": ("learned-net-cosine", "variance")}


def train(schedule, objective, data, steps, batch, width, device, seed, schedule_lr):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    if schedule == "learned-net-cosine":  # VDM's monotone net on top of the cosine shape
        schedule = MonotoneNetSchedule(-13.3, 5.0, base="cosine")
    vdm = VDM(schedule=schedule, width=width, depth=2).to(device)
    # the learned schedule's parameters get their own learning rate (the others: 2e-3)
    optim = pyro.optim.Adam(lambda name: {"lr": schedule_lr if ".schedule." in f".{name}" else 2e-3})  # chain.schedule.*
    svi = pyro.infer.SVI(vdm.model, vdm.guide, optim, hlvm.DiffusionELBO(schedule_objective=objective))
    g = torch.Generator().manual_seed(seed)  # the same data order for every variant
    for _ in range(steps):
        idx = torch.randint(0, data.train.shape[0], (batch,), generator=g)
        svi.step(data.train[idx].to(device))
    return vdm


@torch.no_grad()
def loss_variance(vdm, x, draws):
    """Variance over ``draws`` of the per-batch mean diffusion term (nats per image)."""
    chain = chains_of(vdm)[0]
    sampler = hlvm.TimestepSampler("antithetic", None)
    values = torch.stack([diffusion_bound(chain.denoiser, chain.schedule, chain.likelihood, None, x, sampler=sampler).diffusion.mean()
                          for _ in range(draws)])
    return float(values.var()), float(values.mean())


def run(args) -> dict:
    device = C.setup(args)
    data = load_dataset("mnist5k")
    x = data.test[: args.batch].to(device)
    rows = {}
    for name, (schedule, objective) in VARIANTS.items():
        vdm = train(schedule, objective, data, args.steps, args.batch, args.width, device, args.seed, args.schedule_lr)
        var, mean = loss_variance(vdm, x, args.draws)
        ev = hlvm.evaluate(vdm, data.test[: args.eval_examples].to(device), elbo=hlvm.DiffusionELBO(exact=True), seed=0)
        rows[name] = {"schedule": schedule, "objective": objective, "loss_variance": var, "loss_std": math.sqrt(var),
                      "diffusion_mean": mean, "test_elbo": ev["elbo"], "test_elbo_se": ev["nats_se"],
                      "bpd": ev["bpd"], "diffusion_mc_se": ev.get("diffusion_mc_se")}
        print(f"{name:9s} var {var:10.3f}  std {math.sqrt(var):7.3f}  ELBO {ev['elbo']:.2f} ± {ev['nats_se']:.2f}", flush=True)
    return {"info": C.machine_info(device), "steps": args.steps, "batch": args.batch, "width": args.width,
            "schedule_lr": args.schedule_lr,
            "draws": args.draws, "eval_examples": args.eval_examples, "rows": rows}


def markdown(res: dict, command: str = "python benchmarks/schedule_variance.py") -> str:
    rows = [[k, r["schedule"], r["objective"], f"{r['loss_variance']:.3f}", f"{r['loss_std']:.3f}",
             f"{r['test_elbo']:.2f} ± {r['test_elbo_se']:.2f}", f"{r['bpd']:.4f}"] for k, r in res["rows"].items()]
    head = ["variant", "schedule", "schedule objective", "per-batch loss variance", "std", "test ELBO (nats)", "bits/dim"]
    return (f"`{command}` — {C.describe(res['info'])}; VDM MLP width {res['width']}, {res['steps']} steps, batch "
            f"{res['batch']}, the same data order (Adam 2e-3; the learned schedule's parameters {res['schedule_lr']}); variance over {res['draws']} draws of (t, ε) on one batch of "
            f"{res['batch']} test images; ELBO exact (1,000 nodes in γ) on {res['eval_examples']} test images.\n\n"
            + C.md_table(head, rows))


def main(argv=None):
    p = C.base_parser(__doc__.splitlines()[0], repeats=1)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--eval-examples", type=int, default=500)
    p.add_argument("--schedule-lr", type=float, default=0.05,
                   help="Adam lr of the learned schedule's parameters (its monotone net starts with weights "
                        "≈ softplus(−12): at 2e-3 it barely moves in a short run)")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.draws, args.eval_examples = 50, 20, 64
    res = run(args)
    print(markdown(res))
    C.dump_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
