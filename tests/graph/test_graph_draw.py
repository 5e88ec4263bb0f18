"""Drawing (:mod:`hlvm.graph.draw`) and ``hlvm render``, checked on the dot source.

A T = 1000 diffusion draws a bounded figure (De Sousa Ribeiro & Glocker, Fig. 5); sites, plates
and parameter nodes are styled as in Figures 2 and 5; and a missing ``dot`` fails with an
installation hint while the source is still written.
"""

import re
import shutil
import subprocess
import sys

import pytest

import hlvm
from hlvm.cli import main
from hlvm.graph.draw import _BLUE, GraphvizNotFoundError, render_module
from hlvm.graph.extract import example_input
from hlvm.zoo import VDM

from conftest import ROOT
from graph_cases import D, small

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` not installed")


def nodes(source):
    """The node statements of a dot source (not edges, not graph attributes)."""
    return re.findall(r"^\s*((?:model|guide)\d+) \[", source, flags=re.M)


def test_vdm_with_1000_steps_renders_a_bounded_figure():
    sources = {T: hlvm.render(VDM((D,), T=T, schedule="linear", width=8, depth=1)).source for T in (4, 1000)}
    assert len(nodes(sources[1000])) == len(nodes(sources[4])) == 15  # 6 chain + x + denoiser | 6 chain + x
    source = sources[1000]
    assert "VDM  (z: T = 1000)" in source
    assert source.count("⋯") == 4  # two ellipses in each panel
    for label in ("z<SUB>1</SUB>", "z<SUB>t</SUB>", "z<SUB>s</SUB>", "z<SUB>0</SUB>"):
        assert source.count(label) == 2
    # the shared denoiser: one node, with a blue edge to every step it serves (…, z_t, z_s, …, z_0)
    assert source.count(">denoiser<") + source.count("label=denoiser") == 1
    assert source.count(f'color="{_BLUE}" penwidth') == 5


def test_short_or_full_chains_draw_every_site():
    g = hlvm.render(small("vdm"))  # T = 3 < COMPACT_MIN_STEPS
    assert "⋯" not in g.source and g.source.count("z<SUB>3</SUB>") == 2
    m = VDM((D,), T=6, schedule="linear", width=8, depth=1)
    full = render_module(m, compact=False).source
    assert "⋯" not in full and len(nodes(full)) == 2 * 7 + 2 + 1  # z_6..z_0 and x twice, the denoiser


def test_drawing_styles():
    source = hlvm.render(small("hvae-td"), distributions=True).source
    assert "subgraph cluster_model" in source and "subgraph cluster_guide" in source
    assert source.count("label=data") == 2  # the plate, as a box in each panel
    assert source.count("style=dashed") == 3  # d_1, d_2, d_3
    assert source.count('fillcolor="#c8c8c8"') == 2  # x, observed in both panels
    assert "Bernoulli" in source and "Normal" in source
    for module in ("up[0]", "up[1]", "up[2]", "q_top", "messages[0]", "decoder"):
        assert source.count(f"label=\"{module}\"") + source.count(f"label={module} ") == 1, module
    assert source.count('label="transitions[0]"') == 2  # used by the model and by the guide


# ---------------------------------------------------------------------------- files and Graphviz
def test_dot_source_is_written(tmp_path):
    m = small("vae")
    g = hlvm.render(m.model, m.guide, example_input(m), filename=tmp_path / "vae.dot")  # hlvm.render(model, guide, *args)
    assert (tmp_path / "vae.dot").read_text() == g.source and g.source.startswith("digraph")
    render_module(m, filename=tmp_path / "vae.txt", format="dot")
    assert (tmp_path / "vae.txt").read_text().startswith("digraph")


@needs_dot
@pytest.mark.parametrize("fmt, magic", [("svg", b"<?xml"), ("png", b"\x89PNG"), ("pdf", b"%PDF")])
def test_images_are_rendered_with_dot(tmp_path, fmt, magic):
    render_module(small("vdm"), filename=tmp_path / f"vdm.{fmt}")
    assert (tmp_path / f"vdm.{fmt}").read_bytes().startswith(magic)
    assert not list(tmp_path.glob("*.gv"))  # the intermediate source is cleaned up


def test_without_dot_an_image_fails_clearly_and_the_source_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert shutil.which("dot") is None
    with pytest.raises(GraphvizNotFoundError, match="apt-get install graphviz") as info:
        render_module(small("vae"), filename=tmp_path / "vae.png")
    assert isinstance(info.value, ValueError) and "Graphviz" in str(info.value)
    assert (tmp_path / "vae.png.gv").read_text().startswith("digraph")
    assert not (tmp_path / "vae.png").exists()


def test_cli_without_dot_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["render", "vae", "--out", str(tmp_path), "--format", "png"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "apt-get install graphviz" in err
    assert (tmp_path / "vae.png.gv").exists()


def test_unknown_format_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown format"):
        render_module(small("vae"), filename=tmp_path / "vae.jpg")


# ---------------------------------------------------------------------------- CLI
def test_cli_renders_all_four_zoo_models(tmp_path, capsys):
    assert main(["render", "all", "--out", str(tmp_path / "docs"), "--format", "dot", "--T", "1000"]) == 0
    written = sorted(p.name for p in (tmp_path / "docs").iterdir())
    assert written == ["hvae-bu.dot", "hvae-td.dot", "vae.dot", "vdm.dot"]
    assert capsys.readouterr().out.count(".dot") == 4
    vdm = (tmp_path / "docs" / "vdm.dot").read_text()
    # the chain's 7 compact sites and x in model and guide, the denoiser, and the default learned schedule's
    # network node in each graph: 15 for a fixed schedule (test_vdm_with_1000_steps_renders_a_bounded_figure), 17 here
    assert "T = 1000" in vdm and len(nodes(vdm)) == 17


def test_cli_renders_a_user_file_and_the_layers_flag(tmp_path):
    target = f"{ROOT / 'examples' / 'user_hierarchy.py'}:LatentDiffusionVAE"
    assert main(["render", target, "--T", "inf", "--out", str(tmp_path), "--format", "dot", "--distributions"]) == 0
    source = (tmp_path / "LatentDiffusionVAE.dot").read_text()
    assert "continuous time" in source and "u<SUB>t</SUB>" in source and "Bernoulli" in source
    assert main(["render", "hvae-bu", "--layers", "4", "--out", str(tmp_path), "--format", "dot"]) == 0
    assert "z<SUB>4</SUB>" in (tmp_path / "hvae-bu.dot").read_text()


@pytest.mark.parametrize("argv, message", [
    (["render", "nope"], "unknown model"),
    (["render", "vdm", "--T", "0"], "--T must be"),
    (["render", "missing.py:Model"], "does not exist"),
    (["render", f"{ROOT / 'examples' / 'user_hierarchy.py'}:Nope"], "defines no"),
])
def test_cli_bad_input_exits_2(argv, message, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path), "--format", "dot"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_cli_subprocess_smoke(tmp_path):
    done = subprocess.run([sys.executable, "-m", "hlvm.cli", "render", "vae", "--out", str(tmp_path), "--format", "dot"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "vae.dot").exists()
