"""A scan's images read again by their stored keys, whatever the source kind: what verify, the report's
thumbnails, explain and `ask --heatmaps` open.

A scan stores for each image its id and `path` (Record.path) and, in scan.json, how its source was opened. From
those each kind finds the image again:
- folder and manifest: the path itself (a file, or an fsspec URL);
- WebDataset: `shard#member`; only the shards that hold wanted members are read. A local shard's headers are
  read once (seeks, no image bytes) and its members are then read directly; a remote shard is streamed once per
  call, up to its last wanted member;
- Parquet: `file#row`; only the row groups that hold wanted rows are read, and only the image column;
- Hugging Face: the split and row index in the image id ("train/17"), or, with an id column, the row that holds
  the id (that column is read once); only the wanted rows' images are read, never decoded by `datasets`.

`SourceImages.fetch` takes (image_id, path) pairs and gives each one's encoded bytes (or the file to open) or the
reason it cannot be read; `SourceImages.stream` does the same for any number of pairs, a block at a time. Callers
decode with audit.sources.decode as the scan did. Torch-free.
"""

from __future__ import annotations

import itertools
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from audit.sources.remote import is_url, local_path, open_binary, read_bytes

FETCH_BLOCK = 256  # pairs `stream` reads together: about 25 MB of encoded images at 100 kB each


@dataclass(frozen=True)
class Fetched:
    path: str  # the stored path (what messages name)
    data: bytes | None = None  # the encoded image; None with no error: open `path` as a file
    error: str | None = None


def _split_key(path: str) -> tuple[str, str]:
    """`container#key` -> (container, key); the last '#' separates them (a WebDataset key or a row number has
    none)."""
    container, sep, key = path.rpartition("#")
    if not sep:
        raise ValueError(f"{path} names no member (container#key)")
    return container, key


class SourceImages:
    """Opens a scan's images again; `source` is scan.json's "source" (Source.info()). Holds what it learnt about
    each container (a shard's member offsets, a Parquet file's row groups, a dataset's rows) for the next call."""

    def __init__(self, source: dict | None):
        self.source = source or {}
        self.kind = self.source.get("kind", "folder")
        self._tar_index: dict[str, dict[str, tarfile.TarInfo]] = {}
        self._dataset = None
        self._id_rows: dict[str, int] | None = None

    def fetch(self, items: Iterable[tuple[str, str]]) -> dict[str, Fetched]:
        """image_id -> Fetched, for (image_id, stored path) pairs."""
        items = list(dict.fromkeys((str(i), str(p)) for i, p in items))
        if self.kind == "webdataset":
            return self._members(items)
        if self.kind == "parquet":
            return self._rows(items)
        if self.kind == "hf":
            return self._dataset_rows(items)
        return {i: self._file(p) for i, p in items}

    def stream(self, items: Iterable[tuple[str, str]], block: int = FETCH_BLOCK) -> Iterator[tuple[str, Fetched]]:
        """(image_id, Fetched) for each (image_id, stored path) pair, in order, read from the source `block` pairs
        at a time: a shard is streamed once for a block, and only one block's encoded bytes are held."""
        items = iter(items)
        while part := list(itertools.islice(items, block)):
            fetched = self.fetch(part)
            yield from ((str(i), fetched[str(i)]) for i, _ in part)

    @staticmethod
    def _file(path: str) -> Fetched:
        if not is_url(path):
            return Fetched(path)
        try:
            return Fetched(path, read_bytes(path))
        except (OSError, ValueError) as e:
            return Fetched(path, error=f"{type(e).__name__}: {str(e)[:160]}")

    # ---- WebDataset ----------------------------------------------------------------------------------
    def _members(self, items: list[tuple[str, str]]) -> dict[str, Fetched]:
        out: dict[str, Fetched] = {}
        by_shard: dict[str, dict[str, list[str]]] = {}  # shard -> member -> image ids
        for image_id, path in items:
            try:
                shard, member = _split_key(path)
            except ValueError as e:
                out[image_id] = Fetched(path, error=str(e))
                continue
            by_shard.setdefault(shard, {}).setdefault(member, []).append(image_id)
        for shard, members in by_shard.items():
            try:
                found = self._read_local(shard, set(members)) if not is_url(shard) else self._stream(shard, set(members))
            except (tarfile.TarError, OSError, EOFError, ValueError) as e:
                found, why = {}, f"shard unreadable: {type(e).__name__}: {str(e)[:160]}"
            else:
                why = "no such member in the shard (changed since the scan?)"
            for member, ids in members.items():
                for image_id in ids:
                    path = f"{shard}#{member}"
                    out[image_id] = Fetched(path, found[member]) if member in found else Fetched(path, error=why)
        return out

    def _read_local(self, shard: str, wanted: set[str]) -> dict[str, bytes]:
        path = local_path(shard)
        index = self._tar_index.get(shard)
        with tarfile.open(path, mode="r:*") as tar:
            if index is None:
                index = self._tar_index[shard] = {_member_key(m.name): m for m in tar.getmembers() if m.isfile()}
            return {m: tar.extractfile(index[m]).read() for m in wanted if m in index}

    @staticmethod
    def _stream(shard: str, wanted: set[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        with open_binary(shard) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for info in tar:
                key = _member_key(info.name)
                if info.isfile() and key in wanted:
                    found[key] = tar.extractfile(info).read()
                    if len(found) == len(wanted):
                        break  # the rest of the shard holds nothing wanted
        return found

    # ---- Parquet -------------------------------------------------------------------------------------
    def _rows(self, items: list[tuple[str, str]]) -> dict[str, Fetched]:
        import pyarrow.parquet as pq

        out: dict[str, Fetched] = {}
        column = self.source.get("image_column")
        by_file: dict[str, dict[int, list[str]]] = {}
        for image_id, path in items:
            try:
                file, row = _split_key(path)
                by_file.setdefault(file, {}).setdefault(int(row), []).append(image_id)
            except ValueError as e:
                out[image_id] = Fetched(path, error=str(e))
        for file, rows in by_file.items():
            found: dict[int, bytes | None] = {}
            why = "no such row in the file (changed since the scan?)"
            try:
                with open_binary(file) as f:
                    pf = pq.ParquetFile(f)
                    name = column or _image_column(pf.schema_arrow)
                    start = 0
                    for g in range(pf.metadata.num_row_groups):
                        n = pf.metadata.row_group(g).num_rows
                        inside = [r for r in rows if start <= r < start + n]
                        if inside:
                            values = pf.read_row_group(g, columns=[name]).column(0)
                            for r in inside:
                                v = values[r - start].as_py()
                                found[r] = v.get("bytes") if isinstance(v, dict) else v
                        start += n
            except (OSError, ValueError, KeyError) as e:
                why = f"file unreadable: {type(e).__name__}: {str(e)[:160]}"
            for row, ids in rows.items():
                for image_id in ids:
                    path = f"{file}#{row}"
                    if found.get(row) is not None:
                        out[image_id] = Fetched(path, bytes(found[row]))
                    else:
                        out[image_id] = Fetched(path, error=why if row not in found else "no image bytes in the row")
        return out

    # ---- Hugging Face --------------------------------------------------------------------------------
    def _open_dataset(self):
        if self._dataset is None:
            from audit.sources.hf import is_saved_dataset, load_split
            from audit.sources.remote import require

            datasets = require("datasets", "a Hugging Face dataset source")
            where = self.source.get("location", "")
            how = "disk" if os.path.isdir(where) and is_saved_dataset(where) else \
                "local" if os.path.exists(where) else "hub"
            ds, split = load_split(how, where, self.source.get("split"))
            column = self.source.get("image_column")
            if isinstance(ds.features.get(column), datasets.Image):
                ds = ds.cast_column(column, datasets.Image(decode=False))
            self._dataset = (ds, split)
        return self._dataset

    def _row_of(self, image_id: str, split: str) -> int | None:
        id_column = self.source.get("id_column")
        if id_column:
            if self._id_rows is None:
                ds, _ = self._open_dataset()
                from audit.sources.base import text

                self._id_rows = {}
                for i, v in enumerate(ds[id_column]):
                    self._id_rows.setdefault(text(v) or f"{split}/{i}", i)
            if image_id in self._id_rows:
                return self._id_rows[image_id]
        head, _, index = image_id.rpartition("/")
        return int(index) if head == split and index.isdigit() else None

    def _dataset_rows(self, items: list[tuple[str, str]]) -> dict[str, Fetched]:
        out: dict[str, Fetched] = {}
        try:
            ds, split = self._open_dataset()
        except Exception as e:  # noqa: BLE001 - datasets raises many kinds; each image gets the one reason
            why = f"dataset unreadable: {type(e).__name__}: {str(e)[:160]}"
            return {i: Fetched(p, error=why) for i, p in items}
        column = self.source.get("image_column")
        rows = {image_id: self._row_of(image_id, split) for image_id, _ in items}
        wanted = sorted({r for r in rows.values() if r is not None and 0 <= r < len(ds)})
        values = dict(zip(wanted, ds.select(wanted)[column], strict=True)) if wanted else {}
        for image_id, path in items:
            value = values.get(rows[image_id])
            data = value.get("bytes") if isinstance(value, dict) else value if isinstance(value, bytes) else None
            file = value.get("path") if isinstance(value, dict) else None
            if data is not None:
                out[image_id] = Fetched(path, bytes(data))
            elif file:
                out[image_id] = self._file(file)
            else:
                out[image_id] = Fetched(path, error="no such row in the dataset (changed since the scan?)"
                                        if rows[image_id] not in values else "the row holds no image")
        return out


def _member_key(name: str) -> str:
    """A tar member's name as the scan stored it after '#': the key, then the extension in lower case."""
    from audit.sources.webdataset import split_member

    key, ext = split_member(name)
    return f"{key}.{ext}"


def _image_column(schema) -> str:
    from audit.sources.parquet import image_columns

    found = image_columns(schema)
    if not found:
        raise ValueError("the file has no column of image bytes")
    return found[0]


def open_fetched(f: Fetched, max_pixels: int | None = None):
    """The fetched image opened as the scan opened it (oriented 8-bit RGB); DecodeError with the reason."""
    from audit.sources.decode import DecodeError, open_rgb

    if f.error is not None:
        raise DecodeError(f.error)
    return open_rgb(f.path, max_pixels, f.data)


def decode_fetched(f: Fetched, preprocess: dict, max_pixels: int | None = None):
    """The fetched image decoded as the scan decoded it (audit.sources.decode.decode)."""
    from audit.sources.decode import DecodeError, decode

    if f.error is not None:
        raise DecodeError(f.error)
    return decode(f.path, preprocess, max_pixels, f.data)
