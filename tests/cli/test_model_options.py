"""A model's constructor options from the command line: ``hlvm train --set KEY=VALUE ...`` and
``hlvm compare --models 'vae,vdm(schedule=cosine,width=512)'`` — parsed as Python literals,
checked against the constructor (an unknown name or a refused value: exit 2, one line, nothing
written), recorded in the checkpoint, refused when changed on ``--resume``, shown in the start
line and in compare's report, and rebuilt by ``hlvm sample``."""

import contextlib
import io
import json
import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hlvm.cli import main
from hlvm.cli.sample import load_trained
from hlvm.limits import (format_value, model_label, parse_assignment, parse_model, parse_options, parse_value,
                         split_models)
from hlvm.registry import build_model, check_model_options, model_options
from hlvm.training import load_run_checkpoint

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

TINY = ["--data", "digits", "--steps", "1", "--batch-size", "16", "--eval-examples", "8", "--no-progress"]
COMPARE = [*TINY, "--K", "0", "--iwae-examples", "2", "--pfode-examples", "0", "--no-render"]


def run(argv):
    """(exit code, stdout, stderr) of ``hlvm argv`` in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's own errors
            code = e.code
    return code, out.getvalue(), err.getvalue()


def refused(argv) -> str:
    """The one error line of ``hlvm argv``, which must exit 2 without a traceback."""
    code, _, err = run(argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (argv, code, err)
    assert lines[0].startswith(f"hlvm {argv[0]}: error: "), lines
    return lines[0]


# ------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize("text,value", [
    ("3", 3), ("-2", -2), ("1e-3", 1e-3), ("0.5", 0.5), ("true", True), ("FALSE", False), ("None", None),
    ("(16,8)", (16, 8)), ("(16, 8)", (16, 8)), ("[1,2]", [1, 2]), ("(true,none)", (True, None)), ("(4,)", (4,)),
    ("cosine", "cosine"), ("learned-density", "learned-density"), ("'a b'", "a b"), ("'3'", "3"), ("inf", math.inf),
    ("-INF", -math.inf), ("", ""), ("print(1)", "print(1)"), ("(" * 500, "(" * 500),
])
def test_values_are_python_literals_else_strings(text, value):
    got = parse_value(text)
    assert got == value and type(got) is type(value), (text, got)


def test_nan_is_a_float():
    assert math.isnan(parse_value("nan"))


@pytest.mark.parametrize("text", ["width", "=3", "2x=1", "a b=1", ""])
def test_an_item_without_a_name_and_value_is_refused(text):
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_assignment(text)


def test_a_name_given_twice_is_refused():
    assert parse_options([("a", 1), ("b", 2)]) == {"a": 1, "b": 2}
    with pytest.raises(ValueError, match="'a' is given twice"):
        parse_options([("a", 1), ("a", 2)])


def test_models_split_at_commas_outside_brackets():
    text = "vae, vdm(schedule=cosine,width=512) ,hvae-bu(latent_dims=(32,16)),x.py:C(name='a,b')"
    assert split_models(text) == ["vae", "vdm(schedule=cosine,width=512)", "hvae-bu(latent_dims=(32,16))",
                                  "x.py:C(name='a,b')"]
    assert [parse_model(m) for m in split_models(text)] == [
        ("vae", {}), ("vdm", {"schedule": "cosine", "width": 512}), ("hvae-bu", {"latent_dims": (32, 16)}),
        ("x.py:C", {"name": "a,b"})]


@pytest.mark.parametrize("text,message", [("vae,vdm(width=3", "unclosed '('"), ("vae)", "unbalanced ')'"),
                                          ("vdm(width=(3])", "unbalanced ']'"), ("vdm(name='a)", "unclosed"),
                                          ("(width=3)", "names no model"), ("vdm(3)", "expected KEY=VALUE"),
                                          ("vdm(a=1,a=2)", "given twice")])
def test_malformed_model_entries_are_refused(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        [parse_model(m) for m in split_models(text)]


NAMES = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
SCALARS = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.none(), st.text(max_size=10))
VALUES = st.one_of(SCALARS, st.tuples(SCALARS, SCALARS), st.lists(st.integers(), max_size=3),
                   st.tuples(st.integers()))


def test_inf_inside_a_tuple_reads_back_as_a_float():
    """Found by the property below: ``(None, inf)`` was written ``(None,inf)`` and read back as text."""
    for value in [(None, float("inf")), (float("-inf"), 1), [float("inf")]]:
        assert parse_value(format_value(value)) == value
    assert parse_value("(1,NaN)")[1] != parse_value("(1,NaN)")[1]  # nan, not the text


@settings(max_examples=200, deadline=None, derandomize=True)
@given(value=VALUES)
def test_a_formatted_value_reads_back_as_itself(value):
    got = parse_value(format_value(value))
    assert got == value and type(got) is type(value), (value, format_value(value), got)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(specs=st.lists(st.sampled_from(["vae", "vdm", "hvae-td", "dir/m.py:Net"]), min_size=1, max_size=4),
       options=st.lists(st.dictionaries(NAMES, VALUES, max_size=3), min_size=4, max_size=4))
def test_a_models_list_of_labels_reads_back_as_its_models(specs, options):
    models = [(s, o) for s, o in zip(specs, options)]
    text = ",".join(model_label(s, o) for s, o in models)
    assert [parse_model(m) for m in split_models(text)] == models, text


# ------------------------------------------------------------------------------ the constructor's names
def test_the_options_are_the_constructor_arguments_less_those_other_options_set():
    assert model_options("vae") == ["latent_dim", "hidden", "depth", "encoder", "decoder"]
    assert {"schedule", "width", "fourier"} <= set(model_options("vdm")) and "T" not in model_options("vdm")
    with pytest.raises(ValueError, match="'vae' has no option 'width'; its options: latent_dim, hidden, depth"):
        check_model_options("vae", {"hidden": 8, "width": 3})
    with pytest.raises(ValueError, match="'T' is set by --T"):
        check_model_options("vdm", {"T": 4})


def test_build_model_names_the_option_whose_value_is_refused():
    with pytest.raises(ValueError, match=r"^model 'vdm': option fourier=True refused: fourier must be None"):
        build_model("vdm", (1, 8, 8), width=16, depth=1, fourier=True)
    with pytest.raises(ValueError, match="'vdm' has no option 'widht'"):  # no longer dropped silently
        build_model("vdm", (1, 8, 8), widht=16)
    model = build_model("vdm", (1, 8, 8), width=16, depth=1, fourier=(7, 8))  # a legal value builds
    scales = [f.scales.tolist() for f in model.modules() if type(f).__name__ == "FourierFeatures"]
    assert scales == [[2**7 * math.pi, 2**8 * math.pi]]


# ------------------------------------------------------------------------------ train, resume, sample
@pytest.mark.parametrize("items,message", [
    (["widht=64"], "model 'vdm' has no option 'widht'; its options: schedule, gamma_min, gamma_max"),
    (["width=0"], "model 'vdm': option width=0 refused: width must be an integer >= 1"),
    (["depth=1", "schedule=cosinus"], "option schedule=cosinus refused: unknown schedule 'cosinus'"),
    (["T=4"], "model option 'T' is set by --T"),
    (["width=64", "width=32"], "model option 'width' is given twice"),
    (["width"], "argument --set: expected KEY=VALUE"),
])
def test_train_refuses_a_bad_option_in_one_line_and_writes_nothing(tmp_path, items, message):
    out = tmp_path / "run"
    line = refused(["train", "vdm", *TINY, "--out", str(out), "--set", *items])
    assert message in line, line
    assert not out.exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-step VAE run with options given in two --set groups: (run folder, stdout)."""
    out = tmp_path_factory.mktemp("opts") / "run"
    code, stdout, err = run(["train", "vae", *TINY, "--out", str(out), "--set", "hidden=24", "--set", "latent_dim=3"])
    assert code == 0, err
    return out, stdout


def test_train_records_the_options_and_announces_them(trained):
    out, stdout = trained
    config = load_run_checkpoint(str(out / "checkpoint.pt"))["config"]
    assert config["model_kwargs"] == {"hidden": 24, "latent_dim": 3}
    assert stdout.startswith("vae(hidden=24,latent_dim=3): digits (binary)"), stdout


def test_resume_refuses_a_changed_option_and_keeps_the_runs_own(trained, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(trained[0], out)
    line = refused(["train", "vae", *TINY, "--steps", "2", "--out", str(out), "--resume", "--set", "hidden=32"])
    assert "other settings (model_kwargs.hidden 24 → 32)" in line, line
    line = refused(["train", "vae", *TINY, "--steps", "2", "--out", str(out), "--resume", "--set", "depth=2"])
    assert "model_kwargs.depth (default) → 2" in line, line
    code, stdout, err = run(["train", "vae", *TINY, "--steps", "2", "--out", str(out), "--resume", "--set", "latent_dim=3"])
    assert code == 0 and "vae(hidden=24,latent_dim=3): " in stdout, err
    ck = load_run_checkpoint(str(out / "checkpoint.pt"))
    assert ck["step"] == 2 and ck["config"]["model_kwargs"] == {"hidden": 24, "latent_dim": 3}


def test_sample_rebuilds_the_model_with_its_options(trained, tmp_path):
    out = trained[0]
    model, _ = load_trained("vae", str(out))
    assert model.latent_dim == 3 and model.decoder[0].in_features == 3 and model.decoder[0].out_features == 24
    png = tmp_path / "s.png"
    code, stdout, err = run(["sample", "vae", "--checkpoint", str(out), "--n", "4", "--out", str(png)])
    assert code == 0 and png.stat().st_size > 0, err
    assert stdout.strip() == f"wrote {png} (4 samples of vae(hidden=24,latent_dim=3))"


# ------------------------------------------------------------------------------ compare
@pytest.mark.parametrize("models,message", [
    ("vae(hidden=16),vdm(widht=16)", "model 'vdm' has no option 'widht'"),
    ("vae(hidden=16),vdm(width=16,depth=1,fourier=true)", "model 'vdm': option fourier=True refused"),
    ("vae(hidden=16),vdm(width=16", "unclosed '('"),
    ("vdm(width=16),vdm(width=16)", "--models names vdm(width=16) more than once"),
    ("vdm(layers=2)", "model option 'layers' is set by --layers"),
])
def test_compare_refuses_a_bad_option_before_any_training(tmp_path, models, message):
    out = tmp_path / "report"
    line = refused(["compare", "--models", models, *COMPARE, "--out", str(out)])
    assert message in line, line
    assert not out.exists()


def test_compare_names_each_row_with_its_options(tmp_path):
    out = tmp_path / "report"
    models = "vae(hidden=16,latent_dim=2),vdm(width=16,depth=1,fourier=(7,8)),vdm(width=16,depth=1,schedule=cosine)"
    code, stdout, err = run(["compare", "--models", models, *COMPARE, "--out", str(out)])
    assert code == 0, err
    labels = split_models(models)
    report = json.loads((out / "report.json").read_text())
    assert [r["model"] for r in report["rows"]] == labels
    assert [r["options"] for r in report["rows"]] == [{"hidden": 16, "latent_dim": 2},
                                                     {"width": 16, "depth": 1, "fourier": [7, 8]},
                                                     {"width": 16, "depth": 1, "schedule": "cosine"}]
    md = (out / "report.md").read_text()
    assert all(f"\n| {label} | " in md for label in labels), md
    assert all(f"== {label}: training" in stdout for label in labels), stdout
    ck = load_run_checkpoint(str(out / "runs" / "vdm_width-16_depth-1_fourier-7-8" / "checkpoint.pt"))
    assert ck["config"]["model"] == "vdm" and ck["config"]["model_kwargs"] == {"width": 16, "depth": 1, "fourier": (7, 8)}
    rebuilt, _ = load_trained("vdm", str(out / "runs" / "vdm_width-16_depth-1_schedule-cosine"))
    assert type(rebuilt.schedule).__name__ == "CosineSchedule"


def test_help_documents_the_syntax():
    code, stdout, _ = run(["train", "--help"])
    assert code == 0 and "--set KEY=VALUE [KEY=VALUE ...]" in stdout and "fourier=(7,8)" in stdout
    code, stdout, _ = run(["compare", "--help"])
    assert code == 0 and "vdm(schedule=cosine,width=512)" in stdout


def test_resume_keeps_the_runs_estimator_options(tmp_path):
    """A run trained with estimator options (``TrainConfig.estimator_kwargs``, as the results search
    sets them) resumes from the command line with the run's own, not refused as a change."""
    from hlvm.training import TrainConfig, Trainer

    out = tmp_path / "run"
    Trainer(TrainConfig(model="vae", data="digits", steps=1, batch_size=16, eval_examples=8, progress=False,
                        out=str(out), model_kwargs={"hidden": 8, "latent_dim": 2},
                        estimator_kwargs={"num_particles": 2})).fit()
    code, _, err = run(["train", "vae", *TINY, "--steps", "2", "--out", str(out), "--resume"])
    assert code in (0, None), err
    ck = load_run_checkpoint(str(out / "checkpoint.pt"))
    assert ck["step"] == 2 and ck["config"]["estimator_kwargs"] == {"num_particles": 2}
