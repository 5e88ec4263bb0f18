"""`hlvm demo` and `make demo` are the same job: the comparison of the four zoo models; the earlier
tour of the Gaussian oracle is an example, `python examples/oracle_tour.py`."""

import os
import re
import shlex
import subprocess
import sys

from conftest import ROOT
from hlvm.cli import build_parser


def _recipe(target: str) -> list[str]:
    """The command lines of a Makefile target's recipe."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if re.match(rf"^{target}:", ln))
    recipe = []
    for ln in lines[start + 1:]:
        if not ln.startswith("\t"):
            break
        recipe.append(ln.strip())
    return recipe


def _parsed(argv):
    ns = vars(build_parser().parse_args(argv))
    return {k: v for k, v in ns.items() if k not in ("command", "func")}, ns["func"]


def test_make_demo_runs_hlvm_demo():
    assert _recipe("demo") == ["$(VENV)/bin/hlvm demo $(DEMO_ARGS)"]


def test_hlvm_demo_is_the_documented_comparison():
    demo, demo_func = _parsed(["demo"])
    compare, compare_func = _parsed(shlex.split(
        "compare --models vae,hvae-bu,hvae-td,vdm --data mnist --steps 2000 --out reports/demo"))
    assert demo == compare and demo_func is compare_func
    # options pass through as for compare
    assert _parsed(["demo", "--steps", "7", "--K", "3"])[0] == {**compare, "steps": 7, "K": 3}


def test_demo_help_states_its_defaults():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "hlvm.cli", "demo", "--help"], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert "hlvm compare --models vae,hvae-bu,hvae-td,vdm --data mnist --steps 2000 --out reports/demo" in text
    assert "python examples/oracle_tour.py" in text  # the other "demo" is named where one looks for it


def test_oracle_tour_runs():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "examples/oracle_tour.py", "--batch-size", "8"], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "diffusion loss L_T, T =     ∞" in r.stdout
    bad = subprocess.run([sys.executable, "examples/oracle_tour.py", "--batch-size", "0"], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "--batch-size must be >= 1" in bad.stderr and "Traceback" not in bad.stderr
