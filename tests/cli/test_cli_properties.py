"""Property: a random value for any option of `hlvm train`, `compare`, `sample` or `render` never ends
in a traceback — the command exits 0, or 2 with one line `hlvm <cmd>: error: ...`.

The commands run in-process through :func:`hlvm.cli.main`.  Each example gives one option (read
from the parser itself, so options added later are covered) a random int, float or string on top
of a tiny valid command line.  Work runs only while it stays tiny: training (``Trainer.fit``) of at
most 2 steps and 64 evaluation examples, sampling (``draw``) of at most 16 images in at most 200
steps, plate diagrams (``render_module``), models of at most 16 layers and T ≤ 10,000; beyond
that, reaching the work raises :class:`Reached`, which means the value passed every check before
the work, as it should when it is legal.  ``compare`` always stops at training (its evaluations
scale with several options at once).
"""

import contextlib
import io
import os
import re
import warnings

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import hlvm.graph
import hlvm.programs.sample
import hlvm.registry
import hlvm.training.trainer
from hlvm.cli import build_parser, main
from hlvm.training import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

ZOO = ("vae", "hvae-bu", "hvae-td", "vdm")


class Reached(Exception):
    """The command got past its checks to the work itself."""


def _stop(*args, **kwargs):
    raise Reached


def _small_fit(real):
    def fit(trainer):
        if trainer.total_steps > 2 or trainer.cfg.eval_examples > 64:
            raise Reached
        return real(trainer)
    return fit


def _small_draw(real):
    def draw(model, n, *args, steps=None, **kwargs):
        if n > 16 or (steps is not None and steps > 200):
            raise Reached
        return real(model, n, *args, steps=steps, **kwargs)
    return draw


def _small_build(real):
    def build(name, *args, T=None, layers=None, **kwargs):
        if (isinstance(T, int) and T > 10_000) or (isinstance(layers, int) and layers > 16):
            raise Reached  # legal, perhaps, but not quick to build
        return real(name, *args, T=T, layers=layers, **kwargs)
    return build


def value_options(command: str) -> list[str]:
    """The options of ``hlvm <command>`` that take a value, from the parser."""
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    return [a.option_strings[-1] for a in sub._actions if a.option_strings and a.nargs != 0]


values = st.one_of(
    st.integers(min_value=-2**70, max_value=2**70).map(str),
    st.sampled_from(["0", "-1", "1", "2", "nan", "inf", "-inf", "1e308", "-0.0", "", " ", "cuda", "cuda:7", "all"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(st.characters(exclude_characters="/\\"), max_size=12),  # relative: lands in the work folder
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder to run in, with a 1-step VDM checkpoint (T = 4) for `sample`."""
    root = tmp_path_factory.mktemp("props")
    Trainer(TrainConfig(model="vdm", data="digits", steps=1, batch_size=16, eval_examples=8, T=4, progress=False,
                        out=str(root / "ckpt"))).fit()
    return root


def _base(command: str, root) -> list[str]:
    tiny = ["--data", "digits", "--steps", "1", "--batch-size", "8", "--eval-examples", "8", "--no-progress"]
    return {
        "train": ["train", "vae", *tiny, "--out", str(root / "run"), "--overwrite"],
        "compare": ["compare", "--models", "vae", *tiny, "--K", "0", "--iwae-examples", "2", "--pfode-examples", "0",
                    "--no-render", "--out", str(root / "report")],
        "sample": ["sample", "vdm", "--checkpoint", str(root / "ckpt"), "--n", "4", "--out", str(root / "s.png")],
        "render": ["render", "vae", "--format", "dot", "--out", str(root / "figs")],
    }[command]


def _run(argv, root, monkeypatch):
    """(return code, stderr) of ``hlvm argv`` with the work replaced by :class:`Reached`."""
    monkeypatch.setattr(hlvm.training.Trainer, "fit", _stop if argv[0] == "compare" else _small_fit(Trainer.fit))
    monkeypatch.setattr(hlvm.programs.sample, "draw", _small_draw(hlvm.programs.sample.draw))
    monkeypatch.setattr(hlvm.training.trainer, "build_model", _small_build(hlvm.registry.build_model))
    monkeypatch.setattr(hlvm.registry, "build_model", _small_build(hlvm.registry.build_model))
    err, cwd = io.StringIO(), os.getcwd()
    os.chdir(root)  # relative paths among the random values land here
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                code = main(argv)
            except SystemExit as e:  # argparse
                code = e.code
            except Reached:
                code = 0
    finally:
        os.chdir(cwd)
        monkeypatch.undo()
    return code, err.getvalue()


def _check(argv, root, monkeypatch):
    code, err = _run(argv, root, monkeypatch)
    assert code in (0, 2), (argv, code, err)
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and re.match(rf"hlvm {argv[0]}: error: \S", lines[0]), (argv, err)


@pytest.mark.parametrize("command", ["train", "compare", "sample", "render"])
def test_options_are_read_from_the_parser(command):
    opts = value_options(command)
    assert "--out" in opts and "--help" not in opts
    if command in ("train", "compare"):
        assert {"--steps", "--lr", "--T", "--log-every"} <= set(opts)


#: inputs that ended in a traceback or a diverged run once: always tried, besides the random ones
KNOWN = {
    "train": [("--free-bits", "inf"), ("--free-bits", "1e308"),  # trained, then "loss became nan" (exit 1)
              ("--set", "encoder=x"), ("--set", "hidden=1e308"), ("--set", "latent_dim=(1,2)"), ("--set", "=")],
    "compare": [("--models", "vae("), ("--models", "vae(hidden=)"), ("--models", "vae(encoder=x)"), ("--models", ",)")],
    "sample": [("--steps", "-1")],  # IndexError from the sampler
}


def _property(command):
    def test(workdir, monkeypatch, option, value):
        _check([*_base(command, workdir), option, value], workdir, monkeypatch)

    test = given(option=st.sampled_from(value_options(command)), value=values)(test)
    for option, value in KNOWN.get(command, ()):
        test = example(option=option, value=value)(test)
    return settings(max_examples=50, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])(test)


test_train_random_option_values = _property("train")
test_compare_random_option_values = _property("compare")
test_sample_random_option_values = _property("sample")
test_render_random_option_values = _property("render")


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(command=st.sampled_from(["train", "sample", "render"]),
       model=st.one_of(st.sampled_from(ZOO), st.text(max_size=12), st.text(max_size=6).map(lambda s: f"{s}.py:{s}")))
def test_random_model_names(workdir, monkeypatch, command, model):
    argv = _base(command, workdir)
    argv[1] = model
    _check(argv, workdir, monkeypatch)
