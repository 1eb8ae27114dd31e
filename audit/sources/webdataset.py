"""WebDataset shards (LAION-style, img2dataset output): a .tar file, a brace pattern (shards/{00000..00099}.tar),
or a folder of shards; local or through fsspec.

A sample is the run of consecutive members that share a key (the member name up to the first dot of its base
name). Its image is the member with extension jpg, jpeg, png or webp; json members give metadata columns (top-level
keys), txt and cls one column each (cls is also the label). image_id = shard name + "/" + key.

Shards are read one at a time as a stream: a damaged sample, a missing image member or a shard cut off
mid-file becomes an error record (with the shard and key) and the listing goes on.
"""

from __future__ import annotations

import json
import os
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

from audit.errors import AuditError
from audit.sources.base import Record, Shard, Source, label_box_meta, printable_path, text
from audit.sources.location import Location
from audit.sources.remote import expand, is_url, local_path, open_binary

IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp")
TEXT_MEMBERS = ("txt", "cls")


def split_member(member: str) -> tuple[str, str]:
    folder, base = posixpath.split(member)
    key, _, ext = base.partition(".")
    return posixpath.join(folder, key) if folder else key, ext.lower()


def _flatten_json(raw: bytes) -> dict[str, str | None]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(doc, dict):
        return {}
    return {str(k): (json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else text(v))
            for k, v in doc.items()}


@dataclass
class TarShard(Shard):
    location: str
    name: str = ""  # the shard's name in image ids: its path relative to the folder or pattern it came from

    def _sample(self, key: str, members: dict[str, bytes]) -> Record:
        where = f"{self.location}#{key}"
        meta: dict[str, str | None] = {}
        for ext, raw in members.items():
            if ext == "json":
                meta.update(_flatten_json(raw))
        for ext in TEXT_MEMBERS:
            if ext in members:
                meta[ext] = members[ext].decode("utf-8", "backslashreplace").strip()
        # The label is the .cls member's; without one, the json's "label" (as a manifest's or a Parquet file's
        # label column). With both, .cls wins and the json's stays beside it as meta_label.
        label, box, meta = label_box_meta(meta, "cls" if "cls" in members else "label")
        image_id = f"{self.name}/{key}"
        image = next((ext for ext in IMAGE_MEMBERS if ext in members), None)
        if image is None:
            found = ", ".join(sorted(members)) or "none"
            return Record(image_id, where, label, box, meta,
                          error=f"sample has no image member ({', '.join(IMAGE_MEMBERS)}; found: {found})")
        return Record(image_id, f"{where}.{image}", label, box, meta, data=members[image])

    def ids(self) -> Iterator[str]:
        """From the tar headers alone (a local shard is seeked through, its members are not read)."""
        if is_url(self.location):
            yield from super().ids()
            return
        key = None
        try:
            with tarfile.open(local_path(self.location), mode="r:*") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    k, _ = split_member(info.name)
                    if k != key:
                        if key is not None:
                            yield f"{self.name}/{key}"
                        key = k
        except (tarfile.TarError, OSError, EOFError, ValueError):
            if key is not None:
                yield f"{self.name}/{key}"
            yield f"{self.name}#damaged"
            return
        if key is not None:
            yield f"{self.name}/{key}"

    def records(self) -> Iterator[Record]:
        key, members = None, {}
        try:
            with open_binary(self.location) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    k, ext = split_member(info.name)
                    if k != key and key is not None:
                        sample, key, members = self._sample(key, members), None, {}
                        yield sample
                    key = k
                    members[ext] = tar.extractfile(info).read()
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:
            where = f" in sample {key}" if key is not None else ""
            reason = f"shard unreadable or cut off{where}: {type(e).__name__}: {str(e)[:160]}"
            if key is not None:  # the sample being read when the shard broke is lost with it
                yield Record(f"{self.name}/{key}", f"{self.location}#{key}", error=reason)
            yield Record(f"{self.name}#damaged", self.location, error=reason)
            return
        if key is not None:
            yield self._sample(key, members)


def shard_locations(location: str) -> list[tuple[str, str]]:
    """(location, name) of each shard: a file, a brace pattern or a folder of .tar files."""
    if "{" in location:
        found = expand(location)
        return [(loc, posixpath.basename(local_path(loc))) for loc in found]
    if not is_url(location) and os.path.isdir(local_path(location)):
        root = local_path(location)
        tars = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root)
                      for f in files if f.endswith(".tar"))
        if not tars:
            raise AuditError(f"{printable_path(location)} holds no .tar shards")
        return [(os.path.join(root, t), printable_path(t.replace(os.sep, "/"))) for t in tars]
    return [(location, posixpath.basename(local_path(location)))]


def open_webdataset(location: str) -> Source:
    shards = [TarShard(loc, name) for loc, name in shard_locations(location)]
    where = location if is_url(location) or "{" in location else os.path.abspath(local_path(location))
    return Source("webdataset", where, shards, meta_columns=None, options={"shards": len(shards)},
                  cheap_ids=not is_url(shards[0].location) if shards else True)


def recognise(loc: Location) -> bool:
    return "{" in loc.location or loc.suffix == ".tar" or (loc.is_dir and loc.folder.tars)


def open_location(loc: Location) -> Source:
    return open_webdataset(loc.location)
