"""Dataset sources behind one interface: a location -> a Source that lists Records shard by shard.

One module per format (folder, manifest, webdataset, parquet, hf); `open_source` picks one from --source or,
with `auto`, from the location itself, and says which choices there are when it cannot tell.
"""

from __future__ import annotations

import os

from audit.errors import AuditError
from audit.scanner.options import SOURCE_KINDS
from audit.scanner.sources.base import BOX_COLUMNS, IMAGE_EXTENSIONS, Record, Shard, Source, printable_path
from audit.scanner.sources.remote import exists, is_url, local_path

_CHOICES = "pass --source folder, manifest, webdataset, hf or parquet"


def _suffix(location: str) -> str:
    return os.path.splitext(location.split("?")[0])[1].lower()


def _parquet_kind(location: str, path_column: str) -> str:
    """A .parquet file is a manifest when it has the path column, a bytes table when it holds image bytes."""
    import pyarrow.parquet as pq

    from audit.scanner.sources.parquet import image_columns
    from audit.scanner.sources.remote import open_binary

    try:
        with open_binary(location) as f:
            schema = pq.ParquetFile(f).schema_arrow
    except Exception as e:  # noqa: BLE001 - the user's file
        raise AuditError(f"could not read {printable_path(location)}: {str(e)[:200]}") from e
    if path_column in schema.names:
        return "manifest"
    if image_columns(schema):
        return "parquet"
    raise AuditError(f"{printable_path(location)} has neither a {path_column!r} column (a manifest; --path-column) "
                     "nor a column of image bytes (--source parquet --image-column)")


def detect(location: str, path_column: str = "path", image_column: str | None = None) -> str:
    """The source kind for `auto`."""
    from audit.scanner.sources.manifest import MANIFEST_SUFFIXES

    suffix = _suffix(location)
    if "{" in location or suffix == ".tar":
        return "webdataset"
    if suffix in (".parquet", ".pq"):
        return "parquet" if image_column else _parquet_kind(location, path_column)
    if suffix in MANIFEST_SUFFIXES:
        return "manifest"
    if is_url(location):
        raise AuditError(f"cannot tell what {printable_path(location)} is from its name; {_CHOICES}")
    path = local_path(location)
    if os.path.isdir(path):
        from audit.scanner.sources.hf import is_saved_dataset

        if is_saved_dataset(path):
            return "hf"
        # One pass over the names, none of them kept: any shard makes it WebDataset; Parquet files count only
        # in a folder without images.
        images = tables = False
        for _, _, files in os.walk(path):
            for f in files:
                if f.endswith(".tar"):
                    return "webdataset"
                images = images or os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
                tables = tables or f.endswith((".parquet", ".pq"))
        return "parquet" if tables and not images else "folder"
    if not os.path.exists(path):
        if location.count("/") == 1 and not location.startswith((".", "/")):
            return "hf"  # owner/name: a dataset on the hub
        raise AuditError(f"dataset {printable_path(location)} does not exist; pass an image folder, a manifest "
                         "(.csv, .parquet, .jsonl), WebDataset shards (.tar), a Parquet file of image bytes or a "
                         "Hugging Face dataset")
    raise AuditError(f"{printable_path(location)} is neither a folder nor a manifest (.csv, .parquet, .jsonl), "
                     f"WebDataset shards (.tar) or a Parquet file; {_CHOICES}")


def open_source(location: str | os.PathLike, path_column: str = "path", *, kind: str = "auto",
                image_column: str | None = None, id_column: str | None = None, split: str | None = None) -> Source:
    location = os.fspath(location)
    if kind not in SOURCE_KINDS:
        raise AuditError(f"--source must be one of {', '.join(SOURCE_KINDS)}, not {kind!r}")
    if kind == "auto":
        kind = detect(location, path_column, image_column)
    if kind in ("folder", "manifest") and not is_url(location) and not exists(location):
        raise AuditError(f"dataset {printable_path(location)} does not exist; pass an image folder or a manifest "
                         "(.csv, .parquet, .jsonl)")
    if kind == "folder":
        from audit.scanner.sources.folder import open_folder

        if is_url(location) or not os.path.isdir(local_path(location)):
            raise AuditError(f"{printable_path(location)} is not a local folder; a remote dataset needs a "
                             "manifest, WebDataset shards or Parquet files")
        return open_folder(local_path(location))
    if kind == "manifest":
        from audit.scanner.sources.manifest import MANIFEST_SUFFIXES, open_manifest

        if _suffix(location) not in MANIFEST_SUFFIXES:
            raise AuditError(f"{printable_path(location)} is neither a folder nor a manifest (.csv, .parquet, "
                             ".jsonl)")
        return open_manifest(location, path_column)
    if kind == "webdataset":
        from audit.scanner.sources.webdataset import open_webdataset

        return open_webdataset(location)
    if kind == "parquet":
        from audit.scanner.sources.parquet import open_parquet

        return open_parquet(location, image_column, id_column)
    from audit.scanner.sources.hf import open_hf

    return open_hf(location, split, image_column, id_column)


__all__ = ["BOX_COLUMNS", "IMAGE_EXTENSIONS", "SOURCE_KINDS", "Record", "Shard", "Source", "detect", "open_source",
           "printable_path"]
