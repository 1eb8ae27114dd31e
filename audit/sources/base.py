"""What every source yields: records (an image id, where the image is or its bytes, a label, a box, metadata),
shard by shard, never decoding an image.

A source is listed in shards (a folder walk, a manifest, one tar file, one Parquet file, a range of dataset rows)
so that loader workers and Ray read tasks can split the work without anyone holding every record at once.
Records and shards are picklable: they travel to worker processes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".jfif", ".ppm", ".pgm",
                    ".pbm", ".pnm", ".tga", ".ico"}
BOX_COLUMNS = ("x0", "y0", "x1", "y1")


@dataclass(frozen=True)
class Record:
    image_id: str
    path: str  # as the OS (or fsspec) needs it; for bytes records, where the bytes came from (shard#member)
    label: str | None = None
    box: tuple[float, float, float, float] | None = None
    meta: dict[str, str | None] = field(default_factory=dict)
    data: bytes | None = field(default=None, repr=False, compare=False)  # encoded image, when the source holds it
    error: str | None = None  # set when listing already knows the image cannot be read (a missing member)

    @property
    def display_path(self) -> str:
        return printable_path(self.path)

    def without_data(self) -> Record:
        return Record(self.image_id, self.path, self.label, self.box, self.meta, None, self.error)


def printable_path(path: str) -> str:
    """Valid UTF-8 for any OS path: undecodable bytes become \\xNN escapes (stable, unique)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


class Shard:
    """One piece of a source's listing."""

    name: str = ""

    def records(self) -> Iterator[Record]:
        raise NotImplementedError

    def ids(self) -> Iterator[str]:
        """The image ids records() yields, read as cheaply as the format allows (no image bytes where possible)."""
        for rec in self.records():
            yield rec.image_id


@dataclass
class Source:
    kind: str  # folder | manifest | webdataset | hf | parquet
    location: str  # what scan.json records (absolute path or URL)
    shards: list[Shard]
    # Metadata columns every record has (a manifest's), or None when they vary per record (WebDataset JSON).
    meta_columns: list[str] | None = None
    count: int | None = None  # records in all, when the format says so without reading them
    options: dict = field(default_factory=dict)  # what scan.json records about how it was opened

    # Whether listing the ids costs far less than reading the images (false for remote shards, which would be
    # read twice): then resume counts what is left before the scan starts.
    cheap_ids: bool = True

    def records(self) -> Iterator[Record]:
        for shard in self.shards:
            yield from shard.records()

    def ids(self) -> Iterator[str]:
        for shard in self.shards:
            yield from shard.ids()

    def info(self) -> dict:
        return {"kind": self.kind, "location": self.location, "meta_columns": self.meta_columns, **self.options}


def text(value) -> str | None:
    """A metadata value as text; None for missing values (None, NaN, pandas NA)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        import pandas as pd

        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def box_of(values: dict) -> tuple[float, float, float, float] | None:
    """x0, y0, x1, y1 (pixels) from a record's fields, when all four are numbers."""
    if not all(c in values for c in BOX_COLUMNS):
        return None
    box = tuple(number(values[c]) for c in BOX_COLUMNS)
    return None if any(math.isnan(v) for v in box) else box


def label_box_meta(fields: dict, label_key: str = "label"):
    """A record's label, box and remaining metadata from its fields: the box columns leave the metadata when they
    make a box, and `label_key` always does."""
    box = box_of(fields)
    meta = {k: v for k, v in fields.items() if k not in BOX_COLUMNS} if box is not None else dict(fields)
    return meta.pop(label_key, None), box, meta
