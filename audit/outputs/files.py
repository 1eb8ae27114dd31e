"""Writing the files users asked for: whole or not at all, never a half-written report in place."""

from __future__ import annotations

import os
from pathlib import Path

from audit.errors import AuditError


def write_text(path: str | os.PathLike, text: str, example: str = "out.html") -> Path:
    """Write to a temporary sibling and rename it over `path`, so a reader sees the old file or the new."""
    p = Path(path)
    if p.is_dir():
        raise AuditError(f"{p} is a directory; pass a file name such as {example}")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".tmp-{p.name}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(p)
    return p
