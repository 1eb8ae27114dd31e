"""A manifest: CSV, Parquet or JSONL with a path column (local paths, relative to the manifest, or URLs); other
columns are kept as metadata, x0,y0,x1,y1 (pixels) as the object box. Read in chunks, never whole."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

from audit.errors import AuditError
from audit.sources.base import BOX_COLUMNS, Record, Shard, Source, box_of, printable_path, text
from audit.sources.location import Location
from audit.sources.remote import exists, is_url, local_path, open_binary
from audit.store.schema import IMAGES

MANIFEST_SUFFIXES = {".csv", ".parquet", ".pq", ".jsonl", ".ndjson"}
CHUNK = 10_000


def _suffix(location: str) -> str:
    return os.path.splitext(location.split("?")[0])[1].lower()


def read_chunks(location: str, columns: list[str] | None = None) -> Iterator:
    """The manifest's rows as pandas DataFrames of CHUNK rows (strings for CSV)."""
    import pandas as pd

    suffix = _suffix(location)
    try:
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            with open_binary(location) as f:
                for batch in pq.ParquetFile(f).iter_batches(CHUNK, columns=columns):
                    yield batch.to_pandas()
            return
        with open_binary(location) as f:
            if suffix == ".csv":
                reader = pd.read_csv(f, dtype=str, keep_default_na=False, na_values=[""], chunksize=CHUNK,
                                     usecols=columns)
            else:
                reader = pd.read_json(f, lines=True, dtype=False, chunksize=CHUNK)
            for chunk in reader:
                yield chunk if columns is None or suffix == ".csv" else chunk[columns]
    except AuditError:
        raise
    except Exception as e:  # noqa: BLE001 - any parse failure is the user's file
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise AuditError(f"could not read manifest {printable_path(location)}: {first}") from e


def image_ids(location: str, path_column: str) -> Iterator[str]:
    """The manifest's image ids (its non-empty paths, as written), reading the path column alone."""
    for chunk in read_chunks(location, [path_column]):
        for raw in chunk[path_column].tolist():
            raw = text(raw)
            if raw is not None and raw.strip() != "":
                yield raw


def _columns(location: str) -> list[str]:
    if _suffix(location) in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            with open_binary(location) as f:
                return [str(n) for n in pq.ParquetFile(f).schema_arrow.names]
        except Exception as e:  # noqa: BLE001
            raise AuditError(f"could not read manifest {printable_path(location)}: {str(e)[:200]}") from e
    for chunk in read_chunks(location):
        return [str(c) for c in chunk.columns]
    return []


@dataclass
class ManifestShard(Shard):
    location: str
    path_column: str
    meta_columns: list[str]
    has_box: bool
    name: str = "manifest"

    def ids(self) -> Iterator[str]:
        return image_ids(self.location, self.path_column)

    def records(self) -> Iterator[Record]:
        if is_url(self.location):
            base = self.location.rsplit("/", 1)[0]
            join = lambda p: p if "://" in p else posixpath.join(base, p)  # noqa: E731
        else:
            base = os.path.dirname(os.path.abspath(local_path(self.location)))
            join = lambda p: p if "://" in p else os.path.normpath(p if os.path.isabs(p) else os.path.join(base, p))  # noqa: E731
        for chunk in read_chunks(self.location):
            chunk.columns = [str(c) for c in chunk.columns]
            for row in chunk.to_dict("records"):
                raw = text(row[self.path_column])
                if raw is None or raw.strip() == "":
                    continue
                box = box_of(row) if self.has_box else None
                meta = {c: text(row.get(c)) for c in self.meta_columns}
                yield Record(raw, join(raw), text(row.get("label")), box, meta)


def open_manifest(location: str, path_column: str = "path") -> Source:
    columns = _columns(location)
    if path_column not in columns:
        raise AuditError(f"manifest {printable_path(location)} has no column {path_column!r} (columns: "
                         f"{', '.join(columns[:12])}); pass --path-column NAME")
    present = [c for c in BOX_COLUMNS if c in columns]
    if present and len(present) < len(BOX_COLUMNS):
        raise AuditError(f"manifest {printable_path(location)} has box column(s) {', '.join(present)} but a box "
                         "needs all of x0, y0, x1, y1 (pixels); add the others or rename these")
    reserved = set(IMAGES.names) - {"label", *BOX_COLUMNS}
    clash = [c for c in columns if c in reserved and c != path_column]
    if clash:
        raise AuditError(f"manifest column(s) {', '.join(clash)} clash with audit's own image columns; rename them")
    # Image ids must be unique; this pass reads the path column alone (the only whole-column read).
    seen: set[str] = set()
    count = 0
    for raw in image_ids(location, path_column):
        if raw in seen:
            raise AuditError(f"manifest {printable_path(location)} lists {raw!r} twice; image ids must be unique")
        seen.add(raw)
        count += 1
    meta_cols = [c for c in columns if c not in (path_column, "label", *BOX_COLUMNS)]
    where = location if is_url(location) else os.path.abspath(local_path(location))
    shard = ManifestShard(location, path_column, meta_cols, all(c in columns for c in BOX_COLUMNS))
    return Source("manifest", where, [shard], meta_columns=meta_cols, count=count,
                  options={"path_column": path_column})


def recognise(loc: Location) -> bool:
    """A .csv or .jsonl file; a Parquet file only when it has the path column (else it may hold image bytes)."""
    if loc.suffix in (".parquet", ".pq"):
        return loc.image_column is None and loc.path_column in loc.parquet_schema.names
    return loc.suffix in MANIFEST_SUFFIXES


def open_location(loc: Location) -> Source:
    if not loc.url and not exists(loc.location):
        raise AuditError(f"dataset {loc.shown} does not exist; pass an image folder or a manifest "
                         "(.csv, .parquet, .jsonl)")
    if loc.suffix not in MANIFEST_SUFFIXES:
        raise AuditError(f"{loc.shown} is neither a folder nor a manifest (.csv, .parquet, .jsonl)")
    return open_manifest(loc.location, loc.path_column)
