"""An image folder: every common image extension, recursively, in any letter case; label = first sub-folder.

The walk is streamed in a fixed order (folders and files sorted), so listing a million files holds none of them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from audit.errors import AuditError
from audit.sources.base import IMAGE_EXTENSIONS, Record, Shard, Source, printable_path
from audit.sources.location import Location


@dataclass
class FolderShard(Shard):
    root: str
    name: str = "folder"

    def records(self) -> Iterator[Record]:
        # os.walk does not follow directory symlinks (no loops); file symlinks, broken ones included, are
        # listed and a broken one becomes an error row when loaded.
        for dirpath, dirnames, filenames in os.walk(self.root, onerror=None):
            dirnames.sort()
            for name in sorted(filenames):
                if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                    continue
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, self.root)
                parts = Path(rel).parts
                label = printable_path(parts[0]) if len(parts) > 1 else None
                yield Record(printable_path(Path(rel).as_posix()), os.path.abspath(full), label)


def open_folder(root: str) -> Source:
    root = str(Path(root).resolve())
    return Source("folder", root, [FolderShard(root)], meta_columns=[])


def recognise(loc: Location) -> bool:
    return loc.is_dir  # asked last: a local folder that no other format claims


def open_location(loc: Location) -> Source:
    if not loc.url and not os.path.exists(loc.local):
        raise AuditError(f"dataset {loc.shown} does not exist; pass an image folder or a manifest "
                         "(.csv, .parquet, .jsonl)")
    if not loc.is_dir:
        raise AuditError(f"{loc.shown} is not a local folder; a remote dataset needs a manifest, WebDataset shards "
                         "or Parquet files")
    return open_folder(loc.local)
