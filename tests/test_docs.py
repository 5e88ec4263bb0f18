"""Every command and code block of README.md and examples/README.md runs as written, at smoke size.

The blocks are read from the two files (fenced ``bash``/``python`` blocks; the indented command
lines of examples/README.md), so a changed README is tested as changed.  Each block runs in a
fresh folder (``examples``, ``benchmarks`` and ``models`` linked in), its commands in order, each
as written plus the smoke overrides of :data:`SMOKE` appended (argparse keeps the last value of an
option, so every documented option is still parsed and must still exist).  ``make TARGET`` runs
the target's recipe from the Makefile; ``make test`` is this suite itself, so only its recipe is
checked.  Without CUDA, ``--device cuda`` must be refused in one line (exit 2), and the command then
runs with ``--device cpu``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

TIMEOUT = 600
TRAIN = ["--steps", "2", "--batch-size", "16", "--eval-examples", "16", "--no-progress"]
#: what each kind of command gets appended to run at smoke size (the first word, or `hlvm <cmd>`)
SMOKE = {
    "hlvm train": TRAIN,
    "hlvm compare": [*TRAIN, "--K", "30", "--iwae-examples", "2", "--pfode-examples", "1"],
    "hlvm demo": [*TRAIN, "--K", "30", "--iwae-examples", "2", "--pfode-examples", "1"],
    "hlvm sample": ["--n", "4"],
    "hlvm evaluate": ["--K", "30", "--examples", "2", "--no-progress"],
    "hlvm render": [],
    "examples/hole_problem.py": ["--steps", "20"],
    "examples/user_hierarchy.py": ["--steps", "2"],
    "examples/train_": ["--steps", "2", "--dataset", "digits", "--log-every", "1"],
    "benchmarks/run_all.py": ["--quick", "--only", "sampling", "--repeats", "1", "--out", "bench.md", "--results", "bench"],
}
RESUMED = ["--steps", "4"]  # a resumed run continues past the first one's smoke budget


# -- reading the documents -------------------------------------------------------------------
def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return [(m[1], m[2]) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)]


def indented_commands(text: str) -> list[str]:
    """The 4-space-indented command lines (Markdown code blocks) of a document."""
    return [ln[4:].rstrip() for ln in text.splitlines() if re.match(r"^    (python|hlvm|make) ", ln)]


def shell_lines(body: str) -> list[str]:
    """The commands of a shell block, comments removed."""
    out = []
    for line in body.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(shlex.join(words))
    return out


def doc_blocks() -> list[tuple[str, str, object]]:
    """(id, kind, content) of every block to run: ``("bash", [commands])`` or ``("python", source)``."""
    blocks = []
    for i, (lang, body) in enumerate(fenced_blocks((ROOT / "README.md").read_text())):
        if lang == "bash":
            blocks.append((f"README-{i}-bash", "bash", shell_lines(body)))
        elif lang == "python":
            blocks.append((f"README-{i}-python", "python", body))
        else:
            raise AssertionError(f"README.md block {i}: no test runs a ```{lang} block")
    for j, cmd in enumerate(indented_commands((ROOT / "examples" / "README.md").read_text())):
        blocks.append((f"examples-{j}-{cmd.split()[1].split('/')[-1]}", "bash", [cmd]))
    return blocks


def make_recipe(target: str) -> list[str]:
    """The command lines of a Makefile target (prerequisites are the installation: already done)."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if re.match(rf"^{re.escape(target)}:", ln))
    recipe = []
    for ln in lines[start + 1:]:
        if not ln.startswith("\t"):
            break
        if not ln.strip().startswith(("#", "@")):
            recipe.append(ln.strip())
    return recipe


# -- turning a documented command into a smoke run -------------------------------------------
def expand(command: str) -> list[list[str]]:
    """A documented command as argument vectors for this interpreter (``make`` → its recipe)."""
    words = shlex.split(command)
    if words[0] == "make":
        assert len(words) == 2, command
        if words[1] == "test":  # this suite: only the recipe can be checked here
            assert make_recipe("test") == ["$(PY) -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS)"]
            return []
        return [argv for line in make_recipe(words[1]) for argv in expand(
            line.replace("$(VENV)/bin/hlvm", "hlvm").replace("$(PY)", "python").replace("$(DEMO_ARGS)", ""))]
    if words[0] == "torchrun":
        return [[sys.executable, "-m", "torch.distributed.run", *words[1:]]]
    if words[0] in ("python", ".venv/bin/python"):
        return [[sys.executable, *words[1:]]]
    if words[0] == "hlvm":
        return [[sys.executable, "-m", "hlvm.cli", *words[1:]]]
    raise AssertionError(f"no rule to run {command!r}")


def smoke(argv: list[str]) -> list[str]:
    """``argv`` with the smoke overrides of its kind appended."""
    text = " ".join(argv)
    key = next((k for k in SMOKE if f"hlvm.cli {k.split()[-1]}" in text or k in text), None)
    assert key is not None, f"no smoke size for {text!r}"
    extra = RESUMED if "--resume" in argv else SMOKE[key]
    return [*argv, *extra]


def run(argv, cwd):
    # PET_STANDALONE: torchrun's --standalone (a free port, not 29500, which parallel runs share)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MPLBACKEND="Agg", PET_STANDALONE="1")
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def run_command(argv, cwd) -> None:
    """Run one smoke command; without CUDA, a ``cuda`` device is refused first, then replaced."""
    if "cuda" in argv and not torch.cuda.is_available() and "hlvm.cli" in argv:
        r = run(argv, cwd)
        assert r.returncode == 2 and "CUDA" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    argv = ["cpu" if (a == "cuda" and not torch.cuda.is_available()) else a for a in argv]
    r = run(argv, cwd)
    assert r.returncode == 0, f"{shlex.join(argv)}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"


@pytest.fixture
def workdir(tmp_path):
    for name in ("examples", "benchmarks", "models"):
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


BLOCKS = doc_blocks()


def test_every_block_is_found():
    kinds = [kind for _, kind, _ in BLOCKS]
    assert kinds.count("python") >= 4 and kinds.count("bash") >= 8
    commands = [c for _, kind, body in BLOCKS if kind == "bash" for c in body]
    assert "make demo" in commands and any(c.startswith("hlvm train") for c in commands)


@pytest.mark.parametrize("kind, body", [(k, b) for _, k, b in BLOCKS], ids=[i for i, _, _ in BLOCKS])
def test_documented_block_runs(workdir, kind, body):
    if kind == "python":
        (workdir / "snippet.py").write_text(body)
        run_command([sys.executable, "snippet.py"], workdir)
        return
    for command in body:
        for argv in expand(command):
            run_command(smoke(argv), workdir)


# -- README numbers come from the pages the runs wrote ---------------------------------------
NUMBER = re.compile(r"(?<![\w.])[-−]?\d[\d,]*(?:\.\d+)?")


def numbers(text: str) -> list[str]:
    """The numbers of a text, without inline code and code blocks (commands, not results)."""
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"\[[^\]]*\]\([^)]*\)", " ", text)  # links: file names
    return [m.replace("−", "-").replace(",", "") for m in NUMBER.findall(text)]


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:end if end > 0 else None]


def _unmatched(quoted: list[str], source: list[str]) -> list[str]:
    """The quoted numbers that no number of the source equals, sign included, at the quoted precision."""
    values = [float(s) for s in source]
    out = []
    for q in quoted:
        half = 0.5 * 10 ** -(len(q.split(".")[1]) if "." in q else 0) + 1e-9
        if not any(abs(v - float(q)) <= half for v in values):
            out.append(q)
    return out


def test_unmatched_keeps_sign_and_precision():
    assert _unmatched(["-101.07", "0.26"], ["-101.07", "0.261"]) == []
    assert _unmatched(["101.07"], ["-101.07"]) == ["101.07"]  # a bound quoted with the wrong sign
    assert _unmatched(["-101.1"], ["-101.07"]) == [] and _unmatched(["-101.10"], ["-101.07"]) == ["-101.10"]


def _table_rows(text: str) -> list[list[str]]:
    """The cells of every body row of the Markdown tables of ``text`` (header and rule rows left out)."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    rows = []
    for i, ln in enumerate(lines):
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if set(ln) <= set("|-: ") or (i + 1 < len(lines) and set(lines[i + 1]) <= set("|-: ")):
            continue
        rows.append(cells)
    return rows


def _row_not_on_one_line(cells: list[str], page: str) -> bool:
    """Whether no single line of ``page`` holds every number of a README row's result cells
    (the first cell, the row's name, may hold settings such as "T = 1000")."""
    quoted = numbers(" | ".join(cells[1:]))
    return bool(quoted) and all(_unmatched(quoted, numbers(line)) for line in page.splitlines())


def test_results_rows_stay_in_their_rows():
    """A number of the README's results table is found in the same row of docs/results.md: the
    bounds of one model are never quoted in another model's row."""
    page = (ROOT / "docs/results.md").read_text()
    rows = _table_rows(_section((ROOT / "README.md").read_text(), "## Results at scale"))
    assert len(rows) >= 4
    assert [r[0] for r in rows if _row_not_on_one_line(r, page)] == []
    # the check can fail: one model's ELBO beside another model's IWAE is on no single line
    assert _row_not_on_one_line([rows[0][0], rows[0][1], rows[1][2]], page)


#: numbers of a section that are not results: (number, why)
NOT_RESULTS = {"## Results at scale": {"32": "a model setting (32-d layers)", "5": "the literature's gap, cited"},
               "## Performance": {"41": "the carried wheels' size (MB)", "2.11": "the GPU image's torch version"},
               "## The continuum: `make continuum`": {"784": "the data's dimension", "10000": "the test set's size"}}


@pytest.mark.parametrize("heading, page", [("## Results at scale", "docs/results.md"),
                                           ("## Performance", "docs/benchmarks.md"),
                                           ("## The continuum: `make continuum`", "docs/continuum.md")])
def test_readme_numbers_are_the_generated_pages(heading, page):
    """Every number of the README section is one of the page the run (`make results`, `make bench`)
    wrote, at the precision quoted."""
    quoted = [q for q in numbers(_section((ROOT / "README.md").read_text(), heading)) if q not in NOT_RESULTS[heading]]
    assert len(quoted) > 10
    source = numbers((ROOT / page).read_text()) + NUMBER.findall((ROOT / page).read_text())
    missing = _unmatched(quoted, [s.replace("−", "-").replace(",", "") for s in source])
    assert not missing, f"README.md {heading!r} quotes numbers that {page} does not hold: {missing}"
