"""Links from a report to every file written beside it (``hlvm compare``'s ``report.md``), and the
atomic JSON write every long job saves its progress with."""

from __future__ import annotations

import json
import os
from urllib.parse import quote

__all__ = ["files_written", "files_section", "save_json"]


def save_json(path: str, payload: dict) -> None:
    """Write ``payload`` to ``path`` atomically (a temporary file, then ``os.replace``): an
    interrupted job leaves the previous file whole."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, default=float)
    os.replace(tmp, path)


def files_written(folder: str, exclude: tuple[str, ...] = ("report.md",)) -> list[str]:
    """Every file under ``folder`` as a sorted relative POSIX path, without ``exclude`` (relative paths)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
            if rel not in exclude:
                found.append(rel)
    return sorted(found)


def files_section(folder: str, exclude: tuple[str, ...] = ("report.md",), also: tuple[str, ...] = ()) -> str:
    """A Markdown section linking every file under ``folder`` and the relative paths ``also`` (files
    written after the report), as relative, URL-quoted links."""
    lines = ["## Files", ""]
    lines += [f"* [{rel}]({quote(rel)})" for rel in sorted(set(files_written(folder, exclude)) | set(also))]
    return "\n".join(lines) + "\n"
