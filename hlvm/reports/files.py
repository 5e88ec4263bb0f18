"""Links from a report to every file written beside it (``hlvm compare``'s ``report.md``)."""

from __future__ import annotations

import os
from urllib.parse import quote

__all__ = ["files_written", "files_section"]


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
