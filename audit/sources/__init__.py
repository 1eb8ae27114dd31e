"""Dataset sources behind one interface: a location -> a Source that lists Records shard by shard. Torch-free.

One module per format, listed in FORMATS; each has `recognise(loc) -> bool` (is an `auto` location of this
format?) and `open_location(loc) -> Source`, both given a `location.Location`. Detection asks the formats in
FORMATS' order and takes the first that recognises the location; the command line's --source choices, the scan
options' check and the loader all read this one registry, so a new format is one module and one line below.
"""

from __future__ import annotations

import importlib
import os

from audit.errors import AuditError
from audit.sources.base import BOX_COLUMNS, IMAGE_EXTENSIONS, Record, Shard, Source, printable_path
from audit.sources.location import Location

FORMATS: dict[str, str] = {  # in the order detection asks them
    "webdataset": "audit.sources.webdataset",
    "manifest": "audit.sources.manifest",
    "parquet": "audit.sources.parquet",
    "hf": "audit.sources.hf",
    "folder": "audit.sources.folder",
}
SOURCE_KINDS = ("auto", *FORMATS)


def _module(kind: str):
    return importlib.import_module(FORMATS[kind])


def _choices() -> str:
    *most, last = FORMATS
    return f"pass --source {', '.join(most)} or {last}"


def detect(location: str, path_column: str = "path", image_column: str | None = None) -> str:
    """The source kind for `auto`."""
    loc = location if isinstance(location, Location) else Location(location, path_column, image_column)
    for kind in FORMATS:
        if _module(kind).recognise(loc):
            return kind
    if loc.url:
        raise AuditError(f"cannot tell what {loc.shown} is from its name; {_choices()}")
    if not os.path.exists(loc.local):
        raise AuditError(f"dataset {loc.shown} does not exist; pass an image folder, a manifest "
                         "(.csv, .parquet, .jsonl), WebDataset shards (.tar), a Parquet file of image bytes or a "
                         "Hugging Face dataset")
    raise AuditError(f"{loc.shown} is neither a folder nor a manifest (.csv, .parquet, .jsonl), "
                     f"WebDataset shards (.tar) or a Parquet file; {_choices()}")


def open_source(location: str | os.PathLike, path_column: str = "path", *, kind: str = "auto",
                image_column: str | None = None, id_column: str | None = None, split: str | None = None) -> Source:
    loc = Location(os.fspath(location), path_column, image_column, id_column, split)
    if kind not in SOURCE_KINDS:
        raise AuditError(f"--source must be one of {', '.join(SOURCE_KINDS)}, not {kind!r}")
    if kind == "auto":
        kind = detect(loc)
    return _module(kind).open_location(loc)


__all__ = ["BOX_COLUMNS", "FORMATS", "IMAGE_EXTENSIONS", "SOURCE_KINDS", "Location", "Record", "Shard", "Source",
           "detect", "open_source", "printable_path"]
