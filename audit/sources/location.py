"""A dataset location as the formats see it while deciding who reads it: the location, the options that name
its columns, and what detection looks at (suffix, local folder contents, a Parquet schema), each found once and
shared by every format's `recognise`."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from audit.errors import AuditError
from audit.sources.base import IMAGE_EXTENSIONS, printable_path
from audit.sources.remote import is_url, local_path


@dataclass(frozen=True)
class FolderSummary:
    tars: bool  # any .tar file below it
    images: bool  # any file with an image extension
    tables: bool  # any .parquet / .pq file


@dataclass(frozen=True, eq=False)
class Location:
    location: str
    path_column: str = "path"
    image_column: str | None = None
    id_column: str | None = None
    split: str | None = None

    @property
    def shown(self) -> str:
        return printable_path(self.location)

    @functools.cached_property
    def suffix(self) -> str:
        return os.path.splitext(self.location.split("?")[0])[1].lower()

    @property
    def url(self) -> bool:
        return is_url(self.location)

    @property
    def local(self) -> str:
        return local_path(self.location)

    @functools.cached_property
    def is_dir(self) -> bool:
        return not self.url and os.path.isdir(self.local)

    @functools.cached_property
    def folder(self) -> FolderSummary:
        """One pass over a local folder's names, none of them kept; it stops at the first shard."""
        images = tables = False
        for _, _, files in os.walk(self.local):
            for f in files:
                if f.endswith(".tar"):
                    return FolderSummary(True, images, tables)
                images = images or os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
                tables = tables or f.endswith((".parquet", ".pq"))
        return FolderSummary(False, images, tables)

    @functools.cached_property
    def parquet_schema(self):
        """The Arrow schema of a single Parquet file (one read of its footer)."""
        import pyarrow.parquet as pq

        from audit.sources.remote import open_binary

        try:
            with open_binary(self.location) as f:
                return pq.ParquetFile(f).schema_arrow
        except Exception as e:  # noqa: BLE001 - the user's file
            raise AuditError(f"could not read {self.shown}: {str(e)[:200]}") from e
