"""Bad input to ``hlvm render`` and ``hlvm sample`` and errors in a user's model file: exit code 2,
ONE line on stderr naming the problem, no traceback, nothing written."""

import os
import subprocess
import sys
import textwrap

import pytest

from test_cli import ROOT, hlvm


def assert_one_line_error(r, command, *words):
    """Exit 2, one stderr line ``hlvm <command>: error: ...`` holding every one of ``words``."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hlvm {command}: error: "), r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "vae"
    r = hlvm("train", "vae", "--data", "digits", "--steps", "1", "--batch-size", "8", "--eval-examples", "8",
             "--no-progress", "--out", out)
    assert r.returncode == 0, r.stderr
    return out


# ---------------------------------------------------------------------------------------- sample
@pytest.mark.parametrize("args,words", [
    (["--steps", "0"], ["--steps must be an integer >= 1", "got 0"]),
    (["--steps", "-1"], ["--steps must be an integer >= 1", "got -1"]),
    (["--n", "0"], ["--n must be an integer >= 1", "got 0"]),
    (["--n", "-3"], ["--n must be an integer >= 1", "got -3"]),
    (["--out", "grid.foo"], ["--out", "unknown image file extension '.foo'"]),
    (["--device", "tpu"], ["--device must be cpu, cuda or cuda:N"]),
    (["--seed", "-1"], ["--seed must be an integer in [0, 4294967295], got -1"]),
])
def test_sample_refuses_bad_options(checkpoint, tmp_path, args, words):
    r = hlvm("sample", "vae", "--checkpoint", checkpoint, *args, cwd=tmp_path)
    assert_one_line_error(r, "sample", *words)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_sample_device_cuda_without_cuda_says_so(checkpoint, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")  # no GPU visible
    r = subprocess.run([sys.executable, "-m", "hlvm.cli", "sample", "vae", "--checkpoint", str(checkpoint),
                        "--device", "cuda"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    line = assert_one_line_error(r, "sample", "--device cuda", "CUDA is not available")
    assert "checkpoint" not in line


def test_sample_out_directory_gets_default_name(checkpoint, tmp_path):
    r = hlvm("sample", "vae", "--checkpoint", checkpoint, "--n", "4", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------- render
def test_render_full_refuses_huge_T_at_once(tmp_path):
    r = hlvm("render", "vdm", "--T", "100000", "--full", "--format", "dot", "--out", tmp_path, timeout=60)
    assert_one_line_error(r, "render", "--full", "--T <= 100", "100000")
    assert list(tmp_path.iterdir()) == []
    # the compact figure of the same chain is drawn
    r = hlvm("render", "vdm", "--T", "100000", "--format", "dot", "--out", tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr and (tmp_path / "vdm.dot").exists()


@pytest.mark.parametrize("below,words", [("", ["is a file, not a folder", "name a folder for the diagrams"]),
                                         ("sub", ["is not a writable folder"])])
def test_render_out_an_existing_file_is_refused_at_once(tmp_path, below, words):
    """``--out`` naming an existing file (or a folder under one) once ended in a FileExistsError
    traceback after the model was built; now one line before any work, the file untouched."""
    existing = tmp_path / "figs"
    existing.write_text("keep me")
    out = existing / below if below else existing
    r = hlvm("render", "vae", "--format", "dot", "--out", out, timeout=60)
    assert_one_line_error(r, "render", f"--out {str(out)!r}", *words)
    assert existing.read_text() == "keep me" and sorted(os.listdir(tmp_path)) == ["figs"]


def test_render_layers_bounded(tmp_path):
    r = hlvm("render", "hvae-bu", "--layers", "1000", "--format", "dot", "--out", tmp_path, timeout=60)
    assert_one_line_error(r, "render", "--layers must be an integer in [1, 100], got 1000")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ a user's broken model file
BROKEN = {
    "syntax": ("x = 1\ndef f(:\n", 2, "SyntaxError"),
    "import": ("import os\nimport no_such_module_hlvm\n", 2, "ModuleNotFoundError"),
    "constructor": ("""\
        from pyro.nn import PyroModule
        class Model(PyroModule):
            def __init__(self, data_shape=(4,)):
                super().__init__()
                raise RuntimeError("constructor blew up")
            def model(self, x): pass
            def guide(self, x): pass
        """, 5, "RuntimeError: constructor blew up"),
    "program": ("""\
        from pyro.nn import PyroModule
        class Model(PyroModule):
            def __init__(self, data_shape=(4,)):
                super().__init__()
                self.data_shape = data_shape
            def model(self, x):
                return {}["missing key"]
            def guide(self, x): pass
        """, 7, "KeyError"),
}


# every kind of error under render; under the other commands, the kinds each reaches first
# (sample reads the checkpoint's config before it builds the model: the import errors come first)
CASES = [("render", case) for case in sorted(BROKEN)] + [
    ("sample", "syntax"), ("sample", "import"), ("train", "constructor"), ("train", "program"),
    ("compare", "constructor"), ("compare", "program")]


@pytest.mark.parametrize("command,case", CASES)
def test_broken_model_file_named_with_its_line(tmp_path, command, case):
    source, line, what = BROKEN[case]
    path = tmp_path / "mymodel.py"
    path.write_text(textwrap.dedent(source))
    spec = f"{path}:Model"
    args = {"render": ["render", spec, "--out", tmp_path / "figs"],
            "sample": ["sample", spec, "--checkpoint", tmp_path / "none.pt"],
            "train": ["train", spec, "--data", "five-clusters", "--steps", "1", "--out", tmp_path / "run"],
            "compare": ["compare", "--models", spec, "--data", "five-clusters", "--steps", "1", "--out", tmp_path / "cmp"]}
    r = hlvm(*args[command])
    assert_one_line_error(r, command, f"mymodel.py:{line}", what)
    if command != "compare":  # compare makes its --out folder first (hlvm/reports/compare.py: another part of issue 14)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["mymodel.py"]


def test_sample_names_a_torch_file_that_is_not_a_checkpoint(tmp_path):
    import torch

    path = tmp_path / "weights.pt"
    torch.save({"model": {}}, path)
    r = hlvm("sample", "vae", "--checkpoint", str(path), "--out", str(tmp_path / "s.png"))
    assert_one_line_error(r, "sample", "is not an hlvm training checkpoint")
