"""Dataset sources -> records (image_id, path, metadata).

An image folder (label = first-level sub-folder) or a manifest (CSV, Parquet, JSONL) with a path column.
Listing never opens images: whatever is wrong with a file is found by the loader and stored as an error row.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from audit.errors import AuditError
from audit.store.schema import IMAGES

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".jfif", ".ppm", ".pgm",
                    ".pbm", ".pnm", ".tga", ".ico"}
MANIFEST_SUFFIXES = {".csv", ".parquet", ".pq", ".jsonl", ".ndjson"}
BOX_COLUMNS = ("x0", "y0", "x1", "y1")


@dataclass(frozen=True)
class Record:
    image_id: str
    path: str  # as the OS needs it (may hold surrogate escapes from non-UTF-8 names)
    label: str | None = None
    box: tuple[float, float, float, float] | None = None
    meta: dict[str, str | None] = field(default_factory=dict)

    @property
    def display_path(self) -> str:
        return printable_path(self.path)


def printable_path(path: str) -> str:
    """Valid UTF-8 for any OS path: undecodable bytes become \\xNN escapes (stable, unique)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


@dataclass
class Source:
    kind: str  # "folder" or "manifest"
    root: str
    records: list[Record]
    meta_columns: list[str]


def open_source(location: str | os.PathLike, path_column: str = "path") -> Source:
    loc = Path(location)
    if not loc.exists():
        raise AuditError(f"dataset {printable_path(str(loc))} does not exist; pass an image folder or a manifest "
                         "(.csv, .parquet, .jsonl)")
    if loc.is_dir():
        return _folder(loc)
    if loc.suffix.lower() in MANIFEST_SUFFIXES:
        return _manifest(loc, path_column)
    raise AuditError(f"{printable_path(str(loc))} is neither a folder nor a manifest (.csv, .parquet, .jsonl)")


def _folder(root: Path) -> Source:
    records = []
    # os.walk does not follow directory symlinks (no loops); file symlinks, broken ones included, are
    # listed and a broken one becomes an error row when loaded.
    for dirpath, dirnames, filenames in os.walk(root, onerror=None):
        dirnames.sort()
        for name in sorted(filenames):
            if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            parts = Path(rel).parts
            label = printable_path(parts[0]) if len(parts) > 1 else None
            records.append(Record(printable_path(Path(rel).as_posix()), os.path.abspath(full), label))
    records.sort(key=lambda r: r.image_id)
    return Source("folder", str(root.resolve()), records, [])


def _read_manifest(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_json(path, lines=True, dtype=False)
    except Exception as e:  # noqa: BLE001 - any parse failure is the user's file
        raise AuditError(f"could not read manifest {printable_path(str(path))}: {str(e).splitlines()[0][:200]}") from e


def _text(value) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def _number(value) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.nan
    return x


def _manifest(path: Path, path_column: str) -> Source:
    df = _read_manifest(path)
    if path_column not in df.columns:
        cols = ", ".join(map(str, df.columns[:12]))
        raise AuditError(f"manifest {printable_path(str(path))} has no column {path_column!r} (columns: {cols}); "
                         "pass --path-column NAME")
    df.columns = [str(c) for c in df.columns]
    present = [c for c in BOX_COLUMNS if c in df.columns]
    if present and len(present) < len(BOX_COLUMNS):
        raise AuditError(f"manifest {printable_path(str(path))} has box column(s) {', '.join(present)} but a box "
                         "needs all of x0, y0, x1, y1 (pixels); add the others or rename these")
    reserved = set(IMAGES.names) - {"label", *BOX_COLUMNS}
    clash = [str(c) for c in df.columns if str(c) in reserved and str(c) != path_column]
    if clash:
        raise AuditError(f"manifest column(s) {', '.join(clash)} clash with audit's own image columns; rename them")
    base = path.resolve().parent
    has_box = all(c in df.columns for c in BOX_COLUMNS)
    meta_cols = [c for c in df.columns if c not in (path_column, "label", *BOX_COLUMNS)]
    records = []
    seen: set[str] = set()
    for row in df.to_dict("records"):
        raw = _text(row[path_column])
        if raw is None or raw.strip() == "":
            continue
        image_id = raw
        if image_id in seen:
            raise AuditError(f"manifest {printable_path(str(path))} lists {image_id!r} twice; image ids must be unique")
        seen.add(image_id)
        full = raw if os.path.isabs(raw) else os.path.join(base, raw)
        box = None
        if has_box:
            vals = tuple(_number(row[c]) for c in BOX_COLUMNS)
            if not any(math.isnan(v) for v in vals):
                box = vals
        meta = {c: _text(row[c]) for c in meta_cols}
        records.append(Record(image_id, os.path.normpath(full), _text(row.get("label")), box, meta))
    records.sort(key=lambda r: r.image_id)
    return Source("manifest", str(path.resolve()), records, meta_cols)
