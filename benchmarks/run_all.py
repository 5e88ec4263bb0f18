"""Run every hlvm benchmark and write the tables to docs/benchmarks.md (``make bench``).

    .venv/bin/python benchmarks/run_all.py                 # full run (~3 min on 2 idle cores), writes docs/benchmarks.md
    .venv/bin/python benchmarks/run_all.py --quick         # smoke run (< 1 min), writes benchmarks/results/quick.md
    .venv/bin/python benchmarks/run_all.py --device cuda --cuda-tests   # on a GPU machine

Each benchmark runs in its own process (``benchmarks/<name>.py --json ...``), so thread settings
and Pyro's global state never leak between them; the tables are rebuilt from the JSON files.
The step-overhead benchmark runs three times in a full run: with ``--threads`` (default 2, the
goal's setting), with 1 thread (CPU-time ratios least sensitive to other load on a shared machine),
and on the library as it was at ``--before REV`` (default: the commit before the overhead work;
its ``hlvm/`` and ``models/`` are exported with ``git archive`` and measured by today's harness), so
the before/after table comes from one command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import _common as C  # noqa: E402


BEFORE = "da9d9b1"
SCHEDULE_JSON = "docs/schedule_variance.json"  # the schedule-variance benchmark's own run (long; not re-run here)  # the last commit before the step-overhead work (hlvm.training.optim, hoisted registration)


def export_library(rev: str, dest: str) -> str:
    """``hlvm/`` and ``models/`` as they were at ``rev``, extracted under ``dest``."""
    archive = subprocess.run(["git", "archive", rev, "hlvm", "models"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", dest], input=archive.stdout, check=True)
    return dest


def bench(name, extra, args, tag=None, timeout=None, env=None):
    """Run benchmarks/<name>.py with --json; returns (result dict or None, seconds, command)."""
    tag = tag or name
    out = os.path.join(args.results, f"{tag}{'-quick' if args.quick else ''}.json")
    cmd = [sys.executable, os.path.join("benchmarks", f"{name}.py"), "--device", args.device, "--json", out] + extra
    if args.quick:
        cmd.append("--quick")
    shown = ".venv/bin/python " + " ".join(c for c in cmd[1:] if not c.startswith(args.results) and c != "--json")
    print(f"\n=== {shown}", flush=True)
    t0 = time.perf_counter()
    if env:
        shown = " ".join(f"{k}={v}" for k, v in env.items() if k == "HLVM_BENCH_LIBRARY_REV") + " " + shown
    proc = subprocess.run(cmd, cwd=ROOT, timeout=timeout, env=dict(os.environ, **(env or {})))
    sec = time.perf_counter() - t0
    if proc.returncode != 0 or not os.path.exists(out):
        print(f"!!! {name} failed with exit code {proc.returncode}", flush=True)
        return None, sec, shown
    with open(out) as f:
        return json.load(f), sec, shown


def cuda_tests(args):
    env = dict(os.environ, HLVM_DEVICE="cuda")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"]
    print("\n=== HLVM_DEVICE=cuda " + " ".join(cmd[1:]), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    tail = [line for line in proc.stdout.strip().splitlines() if line.strip()][-1:] or ["(no output)"]
    print(proc.stdout[-2000:])
    return {"returncode": proc.returncode, "summary": tail[0]}


def goal_lines(res) -> list:
    out = []
    so = res.get("step_overhead")
    if so:
        before = (res.get("step_overhead_before") or {}).get("models", {})
        for name, m in so["models"].items():
            r = m["rows"][m["headline_row"]]
            was = before.get(name)
            was = f"; before: {was['headline']:.3f}×" if was else ""
            out.append((f"{m['label']}: SVI step ≤ {m['goal']:.2f}× plain PyTorch", r["ratio"] <= m["goal"],
                        f"{r['ratio']:.3f}× (IQR {r['iqr'][0]:.2f}–{r['iqr'][1]:.2f}; CPU-time {r['ratio_cpu']:.3f}×; "
                        f"validation off {m['rows']['svi, validation off']['ratio']:.3f}×{was})"))
    for key, label in (("step_overhead", ""), ("step_overhead_1thread", ", 1 thread")):
        for name, m in (res.get(key) or {}).get("models", {}).items():
            if "compiled" in m:
                r = m["rows"]["compiled"]
                note = f"; fell back to Pyro: {m['compiled_fallback']}" if m.get("compiled_fallback") else ""
                out.append((f"{m['label']}: compiled step (`--compile`) ≤ {m['compiled_goal']:.2f}× plain PyTorch{label}",
                            m["compiled_met"], f"{r['ratio']:.3f}× (IQR {r['iqr'][0]:.2f}–{r['iqr'][1]:.2f}; CPU-time "
                            f"{r['ratio_cpu']:.3f}×; Python calls {r['calls']:.0f} vs plain "
                            f"{m['rows']['plain']['calls']:.0f}, SVI {m['rows'][m['headline_row']]['calls']:.0f}){note}"))
    st = res.get("startup")
    if st:
        out.append(("`hlvm --help` ≤ 0.5 s wall", st["met"]["help"], f"{st['help']:.2f} s"))
        out.append(("time to the first training step ≤ 2 s after start (mnist5k)", st["met"]["first_step"],
                    f"{st['first_step']:.2f} s"))
    so1 = res.get("step_overhead_1thread")
    if so1:
        for name, m in so1["models"].items():
            r = m["rows"][m["headline_row"]]
            out.append((f"  same, 1 thread (cross-check, CPU-time ratio)", r["ratio_cpu"] <= m["goal"],
                        f"{name}: {r['ratio_cpu']:.3f}× CPU-time, {r['ratio']:.3f}× wall"))
    dt = res.get("diffusion_T")
    if dt:
        out.append(("DiffusionELBO step time at T = 10, 100, 1000, ∞ within 1.05× of each other", dt["met_time"],
                    f"max/min {dt['spread_time']:.3f}×"))
        out.append(("DiffusionELBO peak memory at T = 10, 100, 1000, ∞ within 1.05× of each other", dt["met_memory"],
                    f"max/min {dt['spread_memory']:.3f}×"))
    l8 = res.get("likelihood_8bit")
    if l8:
        for n, v in l8["threads"].items():
            r = v["rows"].get("vae 8bit")
            if r:
                grid = v["rows"].get("vae 8bit, grid softmax", {}).get("ratio")
                out.append((f"8-bit VAE step ≤ {l8['goal']:.0f}× the binary VAE step ({n} thread(s))", r["ratio"] <= l8["goal"],
                            f"{r['ratio']:.2f}× (CPU-time {r['ratio_cpu']:.2f}×)" + (f"; grid softmax {grid:.1f}×" if grid else "")))
    sv = res.get("schedule_variance")
    if sv:
        import schedule_variance

        ok, figures = schedule_variance.goal(sv)
        out.append(("VDM's variance-minimised schedule: per-batch loss variance below linear and cosine, no worse ELBO "
                    f"(from `{SCHEDULE_JSON}`)", ok, figures))
    be = res.get("baseline_elbo")
    if be:
        d = be["hlvm_minus_baseline"]
        sd = max(be["rows"]["baseline"]["elbo_sd"], be["rows"]["hlvm-trace"]["elbo_sd"])
        out.append(("hlvm VAE test ELBO not worse than the stock-Pyro baseline (same config, same split, same epochs)",
                    d >= -max(2 * sd, 0.5),
                    f"{be['rows']['hlvm-trace']['elbo']:.2f} vs {be['rows']['baseline']['elbo']:.2f} nats ({d:+.2f})"))
    pe = res.get("pyro_example_vae")
    if pe:
        d = pe["hlvm_minus_baseline"]
        out.append((f"hlvm's default VAE (`hlvm train vae`) at least matches Pyro's example VAE ({pe['data']}, "
                    f"{pe['epochs']} epochs, static binarization, batch {pe['batch']})", d >= 0,
                    f"{pe['rows']['hlvm-train']['elbo']:.2f} vs {pe['rows']['baseline']['elbo']:.2f} nats ({d:+.2f})"))
    return out


def write_markdown(path, res, cmds, args, seconds, tests):
    info = None
    for v in res.values():
        if isinstance(v, dict) and "info" in v:
            info = v["info"]
            break
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    L = ["# hlvm benchmarks", "",
         f"Generated by `{'.venv/bin/python benchmarks/run_all.py' + (' --quick' if args.quick else '')}` "
         f"(`make bench`) on {now}, in {seconds / 60:.1f} min. " + (C.describe(info) + "." if info else ""),
         "", "How to read these numbers: every ratio is measured **in one run, side by side** — contenders are "
         "interleaved in blocks, each repeat measures every contender, and a ratio is the median over repeats of the "
         "per-repeat ratio (IQR given). Wall-clock ratios are the headline; the process-CPU-time ratio is given too. "
         "Threads are pinned with `torch.set_num_threads(n)`; n is stated with each table. On a shared machine, "
         "other processes inflate 2-thread wall-clock times erratically (an OpenMP parallel region waits for its "
         "slowest thread), so the 1-thread CPU-time ratios are the most load-robust figures.", ""]
    if args.quick:
        L += ["> **Smoke run (`--quick`)**: few repeats and tiny sizes; these numbers are not the reference.", ""]
    L += ["## Goals", "", C.md_table(["goal", "status", "measured"],
                                      [[g, "met" if ok else "**missed**", m] for g, ok, m in goal_lines(res)]), ""]
    sections = [
        ("step_overhead", "Training step: Pyro vs plain PyTorch", "step_overhead",
         "Same model instance, same batch of 128 binarized MNIST images, same loss (the plain step reproduces the "
         "Pyro loss to rounding at the same seed), Adam 1e-3. `svi` = `pyro.infer.SVI` + `hlvm.training.optim.Adam` (one "
         "torch Adam over all parameters; what `hlvm train` uses) with Pyro's defaults (validation on); "
         "`svi, pyro.optim.Adam` = the same with Pyro's stock optimizer (one torch Adam per tensor); `ELBOModule` = `elbo(model.model, model.guide)` with "
         "`pyro.settings.set(module_local_params=True)` and `torch.optim.Adam`. The reference row: stock "
         "`Trace_ELBO` vs a plain step with the same single-sample KL."),
        ("step_overhead_1thread", "Training step, 1 thread (load-robust cross-check)", "step_overhead", ""),
        ("step_overhead_before", f"Training step before the overhead work (hlvm at {args.before})", "step_overhead",
         "The same harness on the library as it was before profiling: `pyro.optim.Adam` only (one torch Adam per "
         "parameter tensor), every network re-registered with Pyro on each attribute access (inside the plate), the "
         "VDM guide touching the collapsed chain, and value checks run whatever the validation setting. "
         "The changes, each found with cProfile's per-step Python call counts: `hlvm.training.optim.Adam` (one torch "
         "optimizer over all parameters, gradients freed after the step), each network fetched once per program "
         "run outside the plate, the collapsed VDM guide returning before it touches the chain, and data/time "
         "value checks gated by `pyro.enable_validation` like torch's `validate_args`."),
        ("diffusion_T", "DiffusionELBO against the number of steps", "diffusion_T", ""),
        ("sampling", "Sampling throughput", "sampling", ""),
        ("baseline_elbo", "Test ELBO against a stock-Pyro baseline VAE", "baseline_elbo", ""),
        ("pyro_example_vae", "hlvm's default VAE against Pyro's example VAE on full MNIST", "baseline_elbo",
         "Pyro's examples/vae model and loop (784-400-50, softplus, Trace_ELBO, Adam 1e-3) against `hlvm train vae` "
         "with no option but the shared protocol: full MNIST statically binarized, batch 128, 20 epochs, test "
         "ELBO on all 10,000 test images."),
        ("train_throughput", "Training throughput through hlvm's Trainer", "train_throughput", ""),
        ("likelihood_8bit", "8-bit against binary data: one SVI step", "likelihood_8bit", ""),
        ("iwae", "IWAE: seconds per 1,000 images", "iwae", ""),
        ("startup", "Start-up: the command line and the first step", "startup", ""),
        ("schedule_variance", "VDM's variance-minimising schedule (issue 13)", "schedule_variance",
         f"Not re-run by `make bench` (about 15 minutes of training): the tables come from `{SCHEDULE_JSON}`, written by "
         "the command below at the commit it names."),
    ]
    import importlib

    for key, title, module, note in sections:
        if key not in res:
            continue
        mod = importlib.import_module(module)
        L += [f"## {title}", ""]
        if note:
            L += [note, ""]
        L += [mod.markdown(res[key], cmds[key]), ""]
        if hasattr(mod, "analysis"):
            L += [mod.analysis(res[key]), ""]
    L += ["## GPU", ""]
    if args.device.startswith("cuda"):
        dev = (res.get("train_throughput") or {}).get("info", {}).get("gpu", args.device)
        L += [f"Measured on **{dev}** (`--device {args.device}`): the tables above. "]
        if tests:
            L += [f"`HLVM_DEVICE=cuda .venv/bin/python -m pytest -q`: {tests['summary']} (exit code {tests['returncode']}).", ""]
        else:
            L += ["The test suite was not run on CUDA in this run (pass `--cuda-tests`).", ""]
    else:
        L += ["**No GPU measurement was made in this run**: it ran on CPU only (no CUDA device in this session). "
              "On a CUDA machine, `.venv/bin/python benchmarks/run_all.py --device cuda --cuda-tests` runs the test "
              "suite with `HLVM_DEVICE=cuda` and records every table above — training throughput per model in "
              "images/s included — with the GPU named.", ""]
    extra = getattr(args, "appendix", None)
    if extra and os.path.exists(extra):
        with open(extra) as f:
            L += [f.read().rstrip(), ""]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(L))
    print(f"\nwrote {os.path.relpath(path, ROOT)}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run (< 1 min); writes benchmarks/results/quick.md")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=None, help="override every benchmark's repeats")
    p.add_argument("--out", default=None, help="markdown output (default docs/benchmarks.md; quick: benchmarks/results/quick.md)")
    p.add_argument("--results", default=os.path.join(HERE, "results"), help="folder for the JSON results")
    p.add_argument("--only", default=None, help="comma-separated subset of benchmarks")
    p.add_argument("--cuda-tests", action="store_true", help="with --device cuda: run pytest with HLVM_DEVICE=cuda")
    p.add_argument("--before", default=BEFORE, help=f"library commit for the 'before' step timings (default {BEFORE}; "
                   "'none' skips them)")
    p.add_argument("--appendix", default=None, help="markdown appended to the report")
    args = p.parse_args(argv)
    os.makedirs(args.results, exist_ok=True)
    out = args.out or (os.path.join(args.results, "quick.md") if args.quick else os.path.join(ROOT, "docs", "benchmarks.md"))
    common = ["--threads", str(args.threads)] + (["--repeats", str(args.repeats)] if args.repeats else [])
    plan = [
        ("step_overhead", "step_overhead", []),
        ("step_overhead_1thread", "step_overhead", ["--threads", "1"]),
        ("step_overhead_before", "step_overhead", []),
        ("diffusion_T", "diffusion_T", ["--stock"] if not args.quick else []),
        ("sampling", "sampling", []),
        ("baseline_elbo", "baseline_elbo", []),
        ("pyro_example_vae", "baseline_elbo", ["--data", "mnist", "--epochs", "20", "--seeds", "1",
                                               "--kinds", "baseline,hlvm-train"]),
        ("train_throughput", "train_throughput", []),
        ("likelihood_8bit", "likelihood_8bit", ["--thread-list", "1,2"]),
        ("iwae", "iwae", []),
        ("startup", "startup", []),
    ]
    if args.quick or args.threads == 1:
        plan = [x for x in plan if x[0] != "step_overhead_1thread"]
    if args.quick or args.before == "none":
        plan = [x for x in plan if x[0] != "step_overhead_before"]
    if args.only:
        keep = set(args.only.split(","))
        plan = [x for x in plan if x[0] in keep]
    t0 = time.perf_counter()
    res, cmds, failed = {}, {}, []
    tmp = tempfile.TemporaryDirectory(prefix="hlvm-before-")
    for key, module, extra in plan:
        env = None
        if key == "step_overhead_before":
            env = {"HLVM_BENCH_LIBRARY": export_library(args.before, tmp.name), "HLVM_BENCH_LIBRARY_REV": args.before}
        base = common if "--threads" not in extra else common[2:]  # the 1-thread pass sets its own
        r, sec, shown = bench(module, base + extra, args, tag=key, env=env)
        cmds[key] = shown
        if r is None:
            failed.append(key)
        else:
            res[key] = r
            print(f"--- {key}: {sec:.0f} s", flush=True)
    tmp.cleanup()
    if os.path.exists(os.path.join(ROOT, SCHEDULE_JSON)) and (not args.only or "schedule_variance" in args.only):
        with open(os.path.join(ROOT, SCHEDULE_JSON)) as f:
            res["schedule_variance"] = json.load(f)
        cmds["schedule_variance"] = f"python benchmarks/schedule_variance.py --json {SCHEDULE_JSON}"
    tests = cuda_tests(args) if (args.cuda_tests and args.device.startswith("cuda")) else None
    write_markdown(out, res, cmds, args, time.perf_counter() - t0, tests)
    if failed:
        print(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
