"""Hugging Face datasets: a folder written by `save_to_disk`, a local dataset folder or data files that
`datasets.load_dataset` reads (Parquet, image folders), or a hub name for users with network.

The image column is the one with the `Image` feature unless --image-column names another; images are read as
their encoded bytes (never decoded by `datasets`). image_id: --id-column when given, else split + row index
("train/17"), which is only stable while nobody re-orders the dataset. Dataset scripts are never run: `datasets`
no longer runs them, and audit passes no remote-code option.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass

from audit.errors import AuditError
from audit.sources.base import BOX_COLUMNS, Record, Shard, Source, label_box_meta, text
from audit.sources.location import Location
from audit.sources.remote import local_path, require
from audit.store.schema import IMAGES

ROWS = 512  # rows per shard: the unit loader workers and Ray read tasks split


def is_saved_dataset(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json"))


@functools.lru_cache(maxsize=4)
def load_split(how: str, location: str, split: str | None):
    """The dataset split, opened once per process (save_to_disk folders and local files are memory-mapped)."""
    datasets = require("datasets", "a Hugging Face dataset source")
    try:
        if how == "disk":
            ds = datasets.load_from_disk(location)
        else:
            ds = datasets.load_dataset(location, split=split)
    except (FileNotFoundError, ValueError) as e:
        raise AuditError(f"could not open the dataset {location}: {str(e).splitlines()[0][:200]}") from None
    except Exception as e:  # noqa: BLE001 - the hub client and loaders raise many kinds
        raise AuditError(f"could not open the dataset {location} ({type(e).__name__}): "
                         f"{str(e).splitlines()[0][:200] if str(e) else ''}") from None
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        if split is None:
            if len(names) != 1 and "train" not in names:
                raise AuditError(f"{location} has splits {', '.join(names)}; pass --split NAME")
            split = "train" if "train" in names else names[0]
        if split not in ds:
            raise AuditError(f"{location} has no split {split!r}; its splits are {', '.join(names)}")
        ds = ds[split]
    return ds, split or str(ds.split or "train")


def _image_column(ds, asked: str | None) -> str:
    datasets = require("datasets", "a Hugging Face dataset source")
    images = [name for name, f in ds.features.items() if isinstance(f, datasets.Image)]
    if asked is not None:
        if asked not in ds.features:
            raise AuditError(f"--image-column {asked!r} is not a column of the dataset; columns: "
                             f"{', '.join(list(ds.features)[:12])}")
        return asked
    if not images:
        raise AuditError(f"the dataset has no Image column; columns: {', '.join(list(ds.features)[:12])}; "
                         "pass --image-column NAME")
    return images[0]


@dataclass
class DatasetShard(Shard):
    how: str
    location: str
    split: str | None
    start: int
    stop: int
    image_column: str
    id_column: str | None
    meta_columns: list[str]
    name: str = ""

    def ids(self) -> Iterator[str]:
        ds, split = load_split(self.how, self.location, self.split)
        if self.id_column is None:
            yield from (f"{split}/{i}" for i in range(self.start, self.stop))
            return
        for i, v in enumerate(ds[self.start:self.stop][self.id_column]):
            yield text(v) or f"{split}/{self.start + i}"

    def records(self) -> Iterator[Record]:
        datasets = require("datasets", "a Hugging Face dataset source")
        ds, split = load_split(self.how, self.location, self.split)
        ds = ds.cast_column(self.image_column, datasets.Image(decode=False)) \
            if isinstance(ds.features[self.image_column], datasets.Image) else ds
        rows = ds[self.start:self.stop]
        names = {c: f for c, f in ds.features.items() if isinstance(f, datasets.ClassLabel)}
        for i in range(self.stop - self.start):
            index = self.start + i

            def value(col, i=i):
                v = rows[col][i]
                return names[col].int2str(v) if col in names and isinstance(v, int) and v >= 0 else text(v)

            image_id = (value(self.id_column) if self.id_column else None) or f"{split}/{index}"
            label, box, meta = label_box_meta({c: value(c) for c in self.meta_columns})
            img = rows[self.image_column][i]
            data = img.get("bytes") if isinstance(img, dict) else img if isinstance(img, bytes) else None
            path = img.get("path") if isinstance(img, dict) else None
            where = f"{self.location}[{split}][{index}]"
            if data is not None:
                yield Record(image_id, path or where, label, box, meta, data=bytes(data))
            elif path:
                yield Record(image_id, path, label, box, meta)
            else:
                yield Record(image_id, where, label, box, meta,
                             error=f"row {index} holds no image in column {self.image_column!r}")


def open_hf(location: str, split: str | None = None, image_column: str | None = None,
            id_column: str | None = None) -> Source:
    datasets = require("datasets", "a Hugging Face dataset source")
    path = local_path(location)
    if os.path.isdir(path) and is_saved_dataset(path):
        how, where = "disk", os.path.abspath(path)
    elif os.path.exists(path):
        how, where = "local", os.path.abspath(path)
    else:
        how, where = "hub", location
    ds, split = load_split(how, where, split)
    column = _image_column(ds, image_column)
    if id_column is not None and id_column not in ds.features:
        raise AuditError(f"--id-column {id_column!r} is not a column of the dataset; columns: "
                         f"{', '.join(list(ds.features)[:12])}")
    reserved = set(IMAGES.names) - {"label", *BOX_COLUMNS}
    meta = [c for c, f in ds.features.items()
            if c not in (column, id_column) and c not in reserved
            and isinstance(f, (datasets.Value, datasets.ClassLabel))]
    n = len(ds)
    shards = [DatasetShard(how, where, split, lo, min(lo + ROWS, n), column, id_column, meta, f"{split}[{lo}:]")
              for lo in range(0, n, ROWS)]
    return Source("hf", where, shards, meta_columns=[c for c in meta if c not in ("label", *BOX_COLUMNS)],
                  count=n, options={"split": split, "image_column": column, "id_column": id_column,
                                    "image_id": "id column" if id_column else
                                    "split/row index: stable only while the dataset is not re-ordered"})


def recognise(loc: Location) -> bool:
    """A dataset saved with save_to_disk, or owner/name of a dataset on the hub (a path that does not exist)."""
    if loc.is_dir:
        return is_saved_dataset(loc.local)
    return (not loc.url and not os.path.exists(loc.local) and loc.location.count("/") == 1
            and not loc.location.startswith((".", "/")))


def open_location(loc: Location) -> Source:
    return open_hf(loc.location, loc.split, loc.image_column, loc.id_column)
