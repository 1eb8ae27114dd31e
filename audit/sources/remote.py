"""Locations through fsspec (s3://, gs://, https://, memory://, file://) and the optional packages sources need."""

from __future__ import annotations

import importlib

from audit.errors import AuditError

EXTRAS = {"fsspec": "remote", "datasets": "hf", "ray": "ray"}


def require(module: str, what: str):
    """Import an optional package, or say in one line which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(module.split(".")[0], module)
        raise AuditError(f"{what} needs the optional package {module.split('.')[0]}: "
                         f"pip install 'clip-audit[{extra}]'") from None


def is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def local_path(location: str) -> str:
    """file:// URLs are local paths."""
    return location[len("file://"):] if location.startswith("file://") else location


def open_binary(location: str):
    """A binary file object for a local path or an fsspec URL."""
    if not is_url(location):
        return open(local_path(location), "rb")
    fsspec = require("fsspec", f"reading {location}")
    return fsspec.open(location, "rb").open()


def read_bytes(location: str) -> bytes:
    with open_binary(location) as f:
        return f.read()


def exists(location: str) -> bool:
    if not is_url(location):
        import os

        return os.path.exists(local_path(location))
    fsspec = require("fsspec", f"reading {location}")
    fs, path = fsspec.core.url_to_fs(location)
    return fs.exists(path)


def expand(location: str) -> list[str]:
    """Brace patterns (shards/{00000..00099}.tar, {a,b}.tar) into the locations they name, in order."""
    import re

    m = re.search(r"\{([^{}]*)\}", location)
    if not m:
        return [location]
    head, tail, body = location[:m.start()], location[m.end():], m.group(1)
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
        step = 1 if int(hi) >= int(lo) else -1
        items = [str(i).zfill(width) for i in range(int(lo), int(hi) + step, step)]
    else:
        items = body.split(",")
    return [x for item in items for x in expand(head + item + tail)]
