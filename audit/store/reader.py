"""Reading a scan directory back: committed rows only, older schema versions upgraded on the fly."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from audit.errors import AuditError
from audit.store import settings
from audit.store.layout import committed_parts, read_config, vocabulary_path
from audit.store.schema import (
    SCHEMAS,
    TABLES,
    VERIFICATION,
    VERIFICATION_FOLDER,
    embedding_lists,
    embedding_matrix,
    empty_table,
    plain,
    upgrade,
)

log = logging.getLogger("audit")


def _latest_errors(attempts: pa.Table, scanned: pa.Array) -> pa.Table:
    """One row per image that is not scanned: its latest attempt (part files are in commit order)."""
    if attempts.num_rows == 0:
        return attempts
    ids = attempts.column("image_id").to_pylist()
    latest = {image_id: row for row, image_id in enumerate(ids)}  # the last occurrence wins
    keep = sorted(latest.values())
    table = attempts.take(pa.array(keep, pa.int64()))
    return table.filter(pc.invert(pc.is_in(table["image_id"], value_set=scanned)))


class Scan:
    """Read access to a scan directory: `scan.tokens()` (pandas) or `scan.table("tokens")` (Arrow)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.config = read_config(self.root)

    @property
    def settings(self) -> dict:
        """The settings that shaped the rows, in this audit's form whichever audit wrote them (store.settings)."""
        return settings.upgrade(self.config.get("settings", {}), self.config.get("runs", []))

    def files(self, name: str) -> list[Path]:
        """The committed part files of a table (a unit whose images part is missing is not committed)."""
        if name not in SCHEMAS:
            raise AuditError(f"unknown table {name!r}; tables are {', '.join(TABLES)}")
        return committed_parts(self.root, name)

    def table(self, name: str) -> pa.Table:
        """A table's committed rows. For `errors`, each image's latest failed attempt, and none for an image
        that a later attempt scanned (see `error_attempts` for every attempt)."""
        if name == "errors":
            return _latest_errors(self.error_attempts(), self._image_ids())
        return self._read(name)

    def error_attempts(self) -> pa.Table:
        """Every failed attempt ever committed, oldest first (a retried image can have several)."""
        return self._read("errors")

    def _read(self, name: str) -> pa.Table:
        if name in ("images", "errors") and self.refers:
            return self._referred(name)
        files = self.files(name)
        if not files:
            return empty_table(name)
        if name == "embeddings":  # float16 and float32 parts (a resume with another --embeddings) read as float32
            return pa.concat_tables([embedding_lists(pq.read_table(p)) for p in files])
        table = pa.concat_tables([plain(pq.read_table(p)) for p in files], promote_options="default")
        return upgrade(name, table)

    def _image_ids(self) -> pa.Array:
        files = self.files("images")
        if not files:
            return pa.array([], pa.string())
        return pa.concat_arrays([pq.read_table(p, columns=["image_id"]).column(0).combine_chunks() for p in files])

    def df(self, name: str) -> pd.DataFrame:
        return self.table(name).to_pandas()

    def images(self) -> pd.DataFrame:
        return self.df("images")

    def tokens(self) -> pd.DataFrame:
        return self.df("tokens")

    def heatmaps(self) -> pd.DataFrame:
        return self.df("heatmaps")

    def errors(self) -> pd.DataFrame:
        return self.df("errors")

    def embedding_parts(self):
        """The stored embeddings one committed part at a time (at most 8,192 images each, so memory stays flat in
        the number of images): yields (image ids, float32 array [n, D])."""
        for p in self.files("embeddings"):
            table = pq.read_table(p)
            if table.num_rows:
                yield table["image_id"].to_pylist(), embedding_matrix(table)

    def embeddings(self) -> tuple[list[str], np.ndarray]:
        """Every stored embedding at once: (image ids, float32 array [n, D]); see embedding_parts to stream."""
        ids, arrays = [], []
        for part_ids, array in self.embedding_parts():
            ids += part_ids
            arrays.append(array)
        return ids, (np.concatenate(arrays) if arrays else np.zeros((0, 0), np.float32))

    def vocabulary(self) -> tuple[list[str], np.ndarray] | None:
        """The vocabulary text embeddings a pass stored under this scan's model (store.layout.write_vocabulary):
        (entries, unit float32 array [V, D]), or None when none was stored."""
        path = vocabulary_path(self.root)
        if not path.is_file():
            return None
        table = pq.read_table(path)
        return table["word"].to_pylist(), embedding_matrix(table)

    @property
    def refers(self) -> bool:
        """Whether this scan's images and errors rows are its source scan's (`audit ask` refers to them)."""
        source = self.config.get("source") or {}
        return source.get("kind") == "scan" and source.get("images") == "referenced"

    def _source(self) -> Scan:
        where = Path(self.config["source"]["location"])
        if not (where / "scan.json").is_file():
            raise AuditError(f"{self.root} was asked of the scan {where}, whose images it reads, and that scan is not "
                             "there any more (moved or deleted?); put it back, or ask again of where it is now")
        return Scan(where)

    def _referred(self, name: str) -> pa.Table:
        """The source scan's rows of this scan's images (its errors: the source's), the asked concept fit over the
        source's where this scan measured one."""
        source = self._source()
        if name == "errors":
            return source._read("errors")
        own = pa.concat_tables([pq.read_table(p, columns=["image_id", "concept_cosine"]) for p in self.files(name)]) \
            if self.files(name) else pa.table({"image_id": pa.array([], pa.string()),
                                                "concept_cosine": pa.array([], pa.float32())})
        theirs = source._read("images")
        theirs = theirs.filter(pc.is_in(theirs["image_id"], own["image_id"]))
        if len(theirs) != len(own):
            log.warning(f"audit: {self.root} was asked of {source.root}, which no longer holds "
                        f"{len(own) - len(theirs)} of its images (overwritten since?); they are left out")
        if pc.any(pc.is_valid(own["concept_cosine"])).as_py():
            fit = dict(zip(own["image_id"].to_pylist(), own["concept_cosine"].to_pylist(), strict=True))
            column = pa.array([fit.get(i) for i in theirs["image_id"].to_pylist()], pa.float32())
            theirs = theirs.set_column(theirs.schema.get_field_index("concept_cosine"), "concept_cosine", column)
        return theirs

    @property
    def asked_of(self) -> str | None:
        """The scan this one was asked of (`audit ask` made it, and it keeps no embeddings), else None."""
        source = self.config.get("source") or {}
        return source.get("location") if source.get("kind") == "scan" else None

    def verification_table(self) -> pa.Table:
        """The rows `audit verify` wrote into the scan directory (none before it ran)."""
        files = sorted((self.root / VERIFICATION_FOLDER).glob("part-*.parquet"))
        if not files:
            return VERIFICATION.empty_table()
        return pa.concat_tables([_with_columns(pq.read_table(p), VERIFICATION) for p in files]).cast(VERIFICATION)

    def verification(self) -> pd.DataFrame:
        return self.verification_table().to_pandas()

    def __repr__(self) -> str:
        return f"Scan({str(self.root)!r})"


def _with_columns(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A table with the schema's columns it lacks (written by an older version) added as nulls."""
    for field in schema:
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(len(table), field.type))
    return table.select(schema.names)
