"""Property: random invalid values of ``hlvm sample`` and ``hlvm render`` options never end in a
traceback — exit code 2 and one line on stderr, before any work (run in-process through
:func:`hlvm.cli.main`, where an uncaught exception would fail the test)."""

import contextlib
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hlvm.cli import main

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

NON_POSITIVE = st.integers(max_value=0).map(str)
JUNK = st.text(min_size=1, max_size=12).filter(lambda s: not s.strip().lstrip("+").isdigit())
SEEDS = st.one_of(st.integers(max_value=-1), st.integers(min_value=2**32)).map(str)


def run(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's own errors (Parser.error: one line, exit 2)
            code = e.code
    return code, err.getvalue()


def assert_refused(argv, command):
    code, err = run(argv)
    lines = err.strip().splitlines()
    assert code == 2, (argv, code, err)
    assert len(lines) == 1 and "Traceback" not in err, (argv, err)
    assert lines[0].startswith(f"hlvm {command}: error: "), (argv, err)


@settings(max_examples=60, deadline=None, database=None)
@given(option=st.sampled_from(["--n", "--steps", "--seed", "--device", "--out"]), data=st.data())
def test_sample_invalid_values_refused(option, data):
    value = data.draw({"--n": st.one_of(NON_POSITIVE, JUNK), "--steps": st.one_of(NON_POSITIVE, JUNK),
                       "--seed": st.one_of(SEEDS, JUNK), "--device": JUNK.filter(lambda s: s not in ("cpu", "cuda")),
                       "--out": JUNK.map(lambda s: s + ".nosuchformat")}[option])
    assert_refused(["sample", "vae", "--checkpoint", "no-such-checkpoint.pt", f"{option}={value}"], "sample")


@settings(max_examples=60, deadline=None, database=None)
@given(option=st.sampled_from(["--T", "--layers", "--format"]), data=st.data())
def test_render_invalid_values_refused(option, data):
    value = data.draw({"--T": st.one_of(NON_POSITIVE, JUNK.filter(lambda s: s.lower() not in ("inf", "none", "continuous"))),
                       "--layers": st.one_of(NON_POSITIVE, st.integers(min_value=101).map(str), JUNK),
                       "--format": JUNK.filter(lambda s: s not in ("svg", "png", "pdf", "dot"))}[option])
    assert_refused(["render", "vdm", "--out", "/nonexistent-dir-never-written", f"{option}={value}"], "render")
