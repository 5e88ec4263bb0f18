"""The GPU check's two Python halves (benchmarks/device_check.sh runs them).

``probe``: which modules hlvm needs are importable, the torch version and the device, before anything
runs — so a missing piece is named, not met as a traceback halfway through.  ``report``: the check's
pieces (the test subset's summary, step_overhead.py's JSON, the training runs' metrics) gathered into
``device_check.json`` and a markdown table that names the device (docs/gpu.md is this table, committed).

    python benchmarks/device_report.py probe  --out DIR
    python benchmarks/device_report.py report --out DIR --mode cuda
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform

#: modules hlvm imports on the paths the check runs (the data, the CLI, evaluation, rendering, tests)
NEEDED = ("torch", "pyro", "numpy", "networkx", "tqdm", "graphviz", "torchdiffeq", "arviz_stats",
          "mlxtend", "sklearn", "PIL", "pytest", "hypothesis", "hlvm", "hlvm.zoo", "hlvm.cli")
#: modules hlvm imports only off the check's paths (figures: the check draws none), reported, not required
OPTIONAL = ("matplotlib",)


#: the batch size device_check.sh trains with
BATCH = 128


def device_name(mode: str) -> str:
    import torch

    if mode == "cuda" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}, torch {torch.__version__})"
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores (torch {importlib.import_module('torch').__version__})"


def probe(out: str) -> dict:
    found, missing = {}, {}
    for name in NEEDED:
        try:
            module = importlib.import_module(name)
            found[name] = getattr(module, "__version__", "")
        except Exception as e:  # noqa: BLE001 - any failure to import is what the probe reports
            missing[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    absent = [name for name in OPTIONAL if importlib.util.find_spec(name) is None]
    result = {"python": platform.python_version(), "found": found, "missing": missing, "optional_absent": absent}
    with open(os.path.join(out, "probe.json"), "w") as f:
        json.dump(result, f, indent=1)
    print("probe: " + ("all present" if not missing else "MISSING " + "; ".join(f"{k} ({v})" for k, v in missing.items()))
          + (f" (absent, not needed by the check: {', '.join(absent)})" if absent else ""))
    return result


def _throughput(run: str) -> dict | None:
    """images/s of a run folder: its training steps' examples over their summed step seconds."""
    path = os.path.join(run, "metrics.jsonl")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        steps = [json.loads(line) for line in f if line.strip()]
    train = [r for r in steps if r.get("kind") == "train"][3:]  # the first steps warm up (allocation, recording)
    seconds = sum(r.get("step_seconds", 0.0) for r in train)
    images = BATCH * len(train)
    return {"steps": len(train), "images_per_s": images / seconds if seconds else None}


def report(out: str, mode: str) -> dict:
    result = {"device": device_name(mode), "mode": mode}
    for name in ("probe.json", "step_overhead.json"):
        path = os.path.join(out, name)
        if os.path.isfile(path):
            with open(path) as f:
                result[name.removesuffix(".json")] = json.load(f)
    tests = os.path.join(out, "tests.txt")
    if os.path.isfile(tests):
        with open(tests) as f:
            lines = [line.strip() for line in f if line.strip()]
        result["tests"] = lines[-1] if lines else "no output"
    runs = os.path.join(out, "runs")
    result["training"] = {r: _throughput(os.path.join(runs, r)) for r in sorted(os.listdir(runs))} if os.path.isdir(runs) else {}
    with open(os.path.join(out, "device_check.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out, "gpu.md"), "w") as f:
        f.write(markdown(result))
    print(markdown(result))
    return result


def markdown(r: dict) -> str:
    lines = [f"# Device check: {r['device']}", "", f"CUDA test subset (`HLVM_DEVICE={r['mode']}`): {r.get('tests', 'not run')}", ""]
    missing = r.get("probe", {}).get("missing")
    if missing:
        lines += ["Missing on this image: " + ", ".join(missing), ""]
    so = r.get("step_overhead", {}).get("models", {})
    if so:
        lines += ["| model | step | ms/step | ratio to plain PyTorch |", "|---|---|---|---|"]
        for name, m in so.items():
            for k, row in m["rows"].items():
                lines.append(f"| {name} | {k} | {row['ms']:.2f} | {row['ratio']:.3f} |")
        lines.append("")
    if r.get("training"):
        lines += ["| training run (full MNIST) | steps timed | images/s |", "|---|---|---|"]
        for name, t in r["training"].items():
            ips = f"{t['images_per_s']:.0f}" if t and t.get("images_per_s") else "–"
            lines.append(f"| {name} | {t['steps'] if t else 0} | {ips} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("probe", "report"))
    p.add_argument("--out", required=True)
    p.add_argument("--mode", default="cuda", choices=("cuda", "cpu"))
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    probe(args.out) if args.what == "probe" else report(args.out, args.mode)


if __name__ == "__main__":
    main()
