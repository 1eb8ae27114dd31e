"""Parquet files whose image column holds the encoded bytes (img2dataset's Parquet output, exported tables): a
file, a folder of .parquet files or a brace pattern, local or through fsspec, read one row group at a time.

--image-column names a binary column or a struct with a `bytes` field (the Hugging Face Image layout); without
it the first such column is used. image_id: --id-column when given, else img2dataset's `key` column when there
is one, else the file name and the row number. The other scalar columns are metadata (`label` is the label).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from audit.errors import AuditError
from audit.sources.base import (
    BOX_COLUMNS,
    Record,
    Shard,
    Source,
    label_box_meta,
    printable_path,
    text,
)
from audit.sources.location import Location
from audit.sources.remote import expand, is_url, local_path, open_binary
from audit.store.schema import IMAGES

ROWS = 256  # rows read at a time: a row group can hold far more images than fit in memory at once


def image_columns(schema) -> list[str]:
    """Columns that can hold encoded images: binary, or a struct with a binary `bytes` field."""
    import pyarrow as pa

    found = []
    for f in schema:
        t = f.type
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            found.append(f.name)
        elif pa.types.is_struct(t) and any(c.name == "bytes" for c in t):
            found.append(f.name)
    return found


def _scalar_columns(schema, skip: set[str]) -> list[str]:
    import pyarrow as pa

    return [f.name for f in schema if f.name not in skip and not (pa.types.is_nested(f.type)
                                                                  or pa.types.is_binary(f.type)
                                                                  or pa.types.is_large_binary(f.type))]


@dataclass
class ParquetShard(Shard):
    location: str
    image_column: str
    id_column: str | None
    meta_columns: list[str]
    name: str = ""

    def ids(self) -> Iterator[str]:
        """From the id column alone (no image bytes read)."""
        import pyarrow.parquet as pq

        if self.id_column is None:
            try:
                with open_binary(self.location) as f:
                    n = pq.ParquetFile(f).metadata.num_rows
            except (OSError, ValueError):
                yield f"{self.name}#damaged"
                return
            yield from (f"{self.name}#{row}" for row in range(n))
            return
        row = 0
        try:
            with open_binary(self.location) as f:
                for batch in pq.ParquetFile(f).iter_batches(ROWS * 16, columns=[self.id_column]):
                    for v in batch.column(0).to_pylist():
                        yield text(v) or f"{self.name}#{row}"
                        row += 1
        except (OSError, ValueError):
            yield f"{self.name}#damaged"

    def records(self) -> Iterator[Record]:
        import pyarrow.parquet as pq

        row = 0
        try:
            with open_binary(self.location) as f:
                pf = pq.ParquetFile(f)
                for batch in pf.iter_batches(ROWS):
                    table = batch.to_pydict()
                    images = table[self.image_column]
                    ids = table[self.id_column] if self.id_column else None
                    for i, value in enumerate(images):
                        data = value.get("bytes") if isinstance(value, dict) else value
                        image_id = text(ids[i]) if ids is not None else None
                        image_id = f"{self.name}#{row}" if image_id is None else image_id
                        label, box, meta = label_box_meta({c: text(table[c][i]) for c in self.meta_columns})
                        where = f"{self.location}#{row}"
                        if data is None:
                            yield Record(image_id, where, label, box, meta,
                                         error=f"no image bytes in column {self.image_column!r}")
                        else:
                            yield Record(image_id, where, label, box, meta, data=bytes(data))
                        row += 1
        except (OSError, ValueError) as e:
            yield Record(f"{self.name}#damaged", self.location,
                         error=f"file unreadable or cut off after row {row}: {type(e).__name__}: {str(e)[:160]}")


def _files(location: str) -> list[tuple[str, str]]:
    if "{" in location:
        return [(loc, os.path.basename(local_path(loc))) for loc in expand(location)]
    if not is_url(location) and os.path.isdir(local_path(location)):
        root = local_path(location)
        found = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root)
                       for f in files if f.endswith((".parquet", ".pq")))
        return [(os.path.join(root, p), p.replace(os.sep, "/")) for p in found]
    return [(location, os.path.basename(local_path(location)))]


def open_parquet(location: str, image_column: str | None = None, id_column: str | None = None) -> Source:
    import pyarrow.parquet as pq

    files = _files(location)
    if not files:
        raise AuditError(f"{printable_path(location)} holds no .parquet files")
    try:
        with open_binary(files[0][0]) as f:
            pf = pq.ParquetFile(f)
            schema, count0 = pf.schema_arrow, pf.metadata.num_rows
    except Exception as e:  # noqa: BLE001 - the user's file
        raise AuditError(f"could not read {printable_path(files[0][0])}: {str(e)[:200]}") from e
    candidates = image_columns(schema)
    if image_column is None:
        if not candidates:
            raise AuditError(f"{printable_path(files[0][0])} has no column of image bytes (binary, or a struct with "
                             f"bytes); columns: {', '.join(schema.names[:12])}; pass --image-column NAME")
        image_column = candidates[0]
    elif image_column not in candidates:
        raise AuditError(f"--image-column {image_column!r} is not a column of image bytes in "
                         f"{printable_path(files[0][0])}; such columns: {', '.join(candidates) or 'none'}")
    if id_column is None and "key" in schema.names:
        id_column = "key"  # img2dataset's sample key
    if id_column is not None and id_column not in schema.names:
        raise AuditError(f"--id-column {id_column!r} is not a column of {printable_path(files[0][0])}; columns: "
                         f"{', '.join(schema.names[:12])}")
    reserved = set(IMAGES.names) - {"label", *BOX_COLUMNS}
    meta = [c for c in _scalar_columns(schema, {image_column, id_column}) if c not in reserved]
    shards = [ParquetShard(loc, image_column, id_column, meta, name) for loc, name in files]
    count = count0 if len(files) == 1 else None
    where = location if is_url(location) or "{" in location else os.path.abspath(local_path(location))
    return Source("parquet", where, shards, meta_columns=[c for c in meta if c not in ("label", *BOX_COLUMNS)],
                  count=count, options={"image_column": image_column, "id_column": id_column, "files": len(files)})


def recognise(loc: Location) -> bool:
    """A Parquet file of image bytes (a manifest's path column was looked for first), or a local folder of Parquet
    files and no images."""
    if loc.suffix in (".parquet", ".pq"):
        if loc.image_column or image_columns(loc.parquet_schema):
            return True
        raise AuditError(f"{loc.shown} has neither a {loc.path_column!r} column (a manifest; --path-column) nor a "
                         "column of image bytes (--source parquet --image-column)")
    return loc.is_dir and loc.folder.tables and not loc.folder.images


def open_location(loc: Location) -> Source:
    return open_parquet(loc.location, loc.image_column, loc.id_column)
