"""DuckDB SQL over a scan directory. Tables come from the store (committed parts only) as Arrow; column
names from users are checked against the stored schema before they reach SQL, values are bound."""

from __future__ import annotations

import os
from dataclasses import dataclass

import duckdb
import pandas as pd

from audit.errors import AuditError
from audit.store.reader import Scan
from audit.store.schema import ASCENT, INTERNAL, PROBE

MISSING_GROUP = "(missing)"
KINDED = ("tokens", "heatmaps")


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


@dataclass
class ScanQuery:
    scan: Scan
    con: duckdb.DuckDBPyConnection

    @classmethod
    def open(cls, scan_dir: str | os.PathLike) -> ScanQuery:
        scan = Scan(scan_dir)
        con = duckdb.connect()
        # Errors are few and need the store's rule (an image's latest attempt, none once scanned): registered
        # from the store, so queries, report, check and diff count them the same way.
        con.register("errors", scan.table("errors"))
        for name in ("images", "tokens", "heatmaps"):
            view = f"all_{name}" if name in KINDED else name
            files = [str(p) for p in scan.files(name)]
            if files:
                # A view, so DuckDB reads only the columns and rows a query needs (grids stay on disk).
                rel = con.read_parquet(files, union_by_name=True)
                if name in KINDED and "kind" not in rel.columns:  # schema version 1: ascent words only
                    rel = rel.select(f"*, '{ASCENT}' AS kind")
                rel.create_view(view)
            else:
                con.register(view, scan.table(name))
        # Ascent words and probe words answer different questions; every query reads one kind only.
        for name in KINDED:
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM all_{name} WHERE kind = '{ASCENT}'")
            con.execute(f"CREATE VIEW probe_{name} AS SELECT * FROM all_{name} WHERE kind = '{PROBE}'")
        return cls(scan, con)

    def columns(self, table: str) -> list[str]:
        return [r[0] for r in self.con.execute(f"DESCRIBE {table}").fetchall()]

    def check_group_column(self, column: str) -> str:
        cols = self.columns("images")
        if column not in cols:
            raise AuditError(f"unknown --group-by column {column!r}; the scan's image columns are "
                             + ", ".join(c for c in cols if c not in ("image_id", "path", "width", "height")))
        return quote(column)

    def scalar(self, sql: str, params=()) -> object:
        return self.con.execute(sql, list(params)).fetchone()[0]

    def df(self, sql: str, params=()) -> pd.DataFrame:
        return self.con.execute(sql, list(params)).df()

    # ---- the report's queries --------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        return {t: int(self.scalar(f"SELECT count(*) FROM {t}")) for t in ("images", "tokens", "heatmaps", "errors")}

    def group_sizes(self, column: str) -> pd.DataFrame:
        g = self.check_group_column(column)
        return self.df(f"SELECT coalesce(CAST({g} AS VARCHAR), ?) AS grp, count(*) AS n FROM images "
                       "GROUP BY 1 ORDER BY 1", [MISSING_GROUP])

    def word_group_counts(self, column: str, min_count: int) -> pd.DataFrame:
        """Per (group, word): images of the group showing the word (a), and the word's total images."""
        g = self.check_group_column(column)
        return self.df(f"""
            WITH seen AS (
                SELECT DISTINCT t.image_id, t.word, coalesce(CAST(i.{g} AS VARCHAR), ?) AS grp
                FROM tokens t JOIN images i USING (image_id)
            ), totals AS (
                SELECT word, count(*) AS word_total FROM seen GROUP BY word HAVING count(*) >= ?
            )
            SELECT s.grp, s.word, count(*) AS a, any_value(tt.word_total) AS word_total
            FROM seen s JOIN totals tt USING (word)
            GROUP BY s.grp, s.word
        """, [MISSING_GROUP, min_count])

    def heatmap_values(self, column: str, words: list[str], stat: str, kind: str = ASCENT) -> pd.DataFrame:
        """One heatmap statistic for the given words (of one kind), with each row's group."""
        if stat not in self.columns("heatmaps"):
            raise AuditError(f"unknown heatmap statistic {stat!r}")
        g = self.check_group_column(column)
        view = "heatmaps" if kind == ASCENT else "probe_heatmaps"
        return self.df(f"""
            SELECT h.word, coalesce(CAST(i.{g} AS VARCHAR), ?) AS grp, h.{quote(stat)} AS value
            FROM {view} h JOIN images i USING (image_id)
            WHERE h.word IN (SELECT unnest(?::VARCHAR[]))
        """, [MISSING_GROUP, words])

    def probe_words(self) -> list[str]:
        """Probe words in the order they were given."""
        return list(self.df("SELECT word FROM probe_tokens GROUP BY word ORDER BY min(word_rank), word").word)

    def probe_cosines(self, column: str) -> pd.DataFrame:
        """Every probe word's cosine with every image, with the image's group."""
        g = self.check_group_column(column)
        return self.df(f"""
            SELECT t.word, coalesce(CAST(i.{g} AS VARCHAR), ?) AS grp, t.word_cosine AS cosine
            FROM probe_tokens t JOIN images i USING (image_id)
        """, [MISSING_GROUP])

    def examples(self, column: str, group: str, word: str, limit: int) -> pd.DataFrame:
        g = self.check_group_column(column)
        return self.df(f"""
            SELECT i.image_id, i.path, h.grid, h.grid_h, h.grid_w, t.word_cosine
            FROM tokens t JOIN heatmaps h USING (image_id, word) JOIN images i USING (image_id)
            WHERE t.word = ? AND coalesce(CAST(i.{g} AS VARCHAR), ?) = ?
            ORDER BY t.word_cosine DESC, i.image_id LIMIT ?
        """, [word, MISSING_GROUP, group, limit])

    # ---- check / diff ----------------------------------------------------------------------------------
    def images_groups(self, column: str | None = None) -> pd.DataFrame:
        """Every image with its group ('' without a column)."""
        if column is None:
            return self.df("SELECT image_id, '' AS grp FROM images ORDER BY image_id")
        g = self.check_group_column(column)
        return self.df(f"SELECT image_id, coalesce(CAST({g} AS VARCHAR), ?) AS grp FROM images ORDER BY image_id",
                       [MISSING_GROUP])

    def unreadable(self) -> int:
        """Images that could not be scanned, whatever the cause (the errors view holds one row per image that
        is not scanned)."""
        return int(self.scalar("SELECT count(*) FROM errors"))

    def internal_errors(self) -> int:
        """Of those, the images audit failed on through a fault of its own (schema.INTERNAL): a bug."""
        return int(self.scalar("SELECT count(*) FROM errors WHERE stage = ?", [INTERNAL]))

    def word_pairs(self) -> pd.DataFrame:
        """Distinct (image_id, word) pairs: which images show which words."""
        return self.df("SELECT DISTINCT image_id, word FROM tokens ORDER BY image_id, word")
