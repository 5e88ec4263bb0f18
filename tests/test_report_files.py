"""`hlvm compare`'s report.md links every file it wrote."""

import os
import re
from urllib.parse import unquote

import pytest

from hlvm.reports.compare import run_compare
from hlvm.reports.files import files_section, files_written
from hlvm.training import TrainConfig

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _links(markdown: str) -> set:
    return {unquote(target) for target in re.findall(r"\]\(([^)\s]+)\)", markdown)}


def test_files_section_links_every_file_with_relative_quoted_paths(tmp_path):
    (tmp_path / "sub dir").mkdir()
    for rel in ("a.png", "sub dir/b c.json", "report.md"):
        (tmp_path / rel).write_text("x")
    section = files_section(str(tmp_path), also=("later.json",))
    assert files_written(str(tmp_path)) == ["a.png", "sub dir/b c.json"]
    assert "(sub%20dir/b%20c.json)" in section
    assert _links(section) == {"a.png", "sub dir/b c.json", "later.json"}


def test_compare_report_links_every_file_it_wrote(tmp_path):
    out = tmp_path / "report"
    base = TrainConfig(data="digits", binarize="static", steps=2, batch_size=32, progress=False)
    run_compare(["vae", "hvae-td"], base, str(out), K=30, iwae_examples=4, eval_examples=16, pfode_examples=0,
                log=lambda *a: None)
    report = (out / "report.md").read_text()
    written = files_written(str(out))
    kinds = {os.path.basename(f).split("_")[0].split(".")[0] for f in written}
    assert {"samples", "reconstructions", "diagram", "elbo", "breakdown", "report", "checkpoint", "metrics"} <= kinds
    assert set(written) <= _links(report), sorted(set(written) - _links(report))
    assert all((out / target).is_file() for target in _links(report))  # and no dead link
