"""DuckDB SQL over a scan directory. Tables come from the store (committed parts only) as Arrow; column
names from users are checked against the stored schema before they reach SQL, values are bound."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import duckdb
import pandas as pd
import pyarrow as pa

from audit.errors import AuditError
from audit.store.reader import Scan
from audit.store.schema import ASCENT, INTERNAL, KINDS, PROBE, SCHEMAS

MISSING_GROUP = "(missing)"
KINDED = ("tokens", "heatmaps")


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


_SQL_TYPES = {pa.float32(): "FLOAT", pa.float64(): "DOUBLE", pa.string(): "VARCHAR", pa.int16(): "SMALLINT",
              pa.int32(): "INTEGER", pa.int64(): "BIGINT", pa.bool_(): "BOOLEAN"}


@dataclass(frozen=True)
class WordFilter:
    """Which stored words count as an image's words in the statistics. `stop_words` leaves words out of every
    kind; `min_relative_cosine` keeps an ascent word only where its own cosine with the image is at least that
    share of the image's best sequence cosine (a token that only meant something inside its sequence falls
    below). The defaults filter nothing; audit.analysis holds the defaults the commands use."""
    stop_words: frozenset[str] = frozenset()
    min_relative_cosine: float = 0.0

    @property
    def key(self) -> str:
        text = "\n".join(sorted(self.stop_words)) + f"\n{self.min_relative_cosine!r}"
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]


@dataclass
class ScanQuery:
    """SQL over one scan. `copy_members` (image_id, cluster, representative: analysis.duplicates) makes every
    statistic count a cluster of copies once: `images` then holds each cluster's representative, and the views of
    a grouping column (images_of) one member per cluster and group, so a cluster that spans groups counts once in
    each. `all_images` is every scanned image either way."""
    scan: Scan
    con: duckdb.DuckDBPyConnection
    _views: set[str] = field(default_factory=set)
    collapsed: bool = False
    copies: object = None  # analysis.duplicates.Copies, where open_query collapsed them

    @classmethod
    def open(cls, scan_dir: str | os.PathLike, copy_members: pa.Table | None = None) -> ScanQuery:
        scan = Scan(scan_dir)
        con = duckdb.connect()
        # Errors are few and need the store's rule (an image's latest attempt, none once scanned): registered
        # from the store, so queries, report, check and diff count them the same way.
        con.register("errors", scan.table("errors"))
        for name in ("images", "tokens", "heatmaps"):
            view = f"raw_{name}"
            files = [str(p) for p in scan.files(name)]
            if name == "images" and scan.refers:  # an asked scan's images are its source's rows (store.reader)
                con.register(view, scan.table(name))
            elif files:
                # A view, so DuckDB reads only the columns and rows a query needs (grids stay on disk).
                con.read_parquet(files, union_by_name=True).create_view(view)
            else:
                con.register(view, scan.table(name))
        # Parts of older schema versions lack the columns added since: null there, and a word without a kind
        # (version 1) is an ascent word.
        for name in ("images", "tokens", "heatmaps"):
            have = {r[0] for r in con.execute(f"DESCRIBE raw_{name}").fetchall()}
            extra = [f"CAST(NULL AS {_SQL_TYPES[f.type]}) AS {quote(f.name)}" for f in SCHEMAS[name]
                     if f.name not in have]
            kind = f"coalesce(kind, '{ASCENT}') AS kind" if "kind" in have else f"'{ASCENT}' AS kind"
            select = ["*" if name == "images" or "kind" not in have else "* REPLACE (" + kind + ")"]
            if name != "images" and "kind" not in have:
                select.append(kind)
            con.execute(f"CREATE VIEW all_{name} AS SELECT {', '.join(select + extra)} FROM raw_{name}")
        con.execute("CREATE VIEW images AS SELECT * FROM all_images")
        # Ascent, concept and probe words answer different questions; every query reads one kind only.
        for name in KINDED:
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM all_{name} WHERE kind = '{ASCENT}'")
            con.execute(f"CREATE VIEW probe_{name} AS SELECT * FROM all_{name} WHERE kind = '{PROBE}'")
        q = cls(scan, con)
        if copy_members is not None:
            q.collapse_copies(copy_members)
        return q

    def collapse_copies(self, copy_members: pa.Table) -> None:
        """From now on, count each cluster of copies once (copy_members: image_id, cluster, representative)."""
        self.con.register("copy_members", copy_members.select(["image_id", "cluster", "representative"]))
        self.con.execute("CREATE OR REPLACE VIEW images AS SELECT * FROM all_images WHERE image_id NOT IN "
                         "(SELECT image_id FROM copy_members WHERE image_id <> representative)")
        self.collapsed = True

    def images_of(self, column: str) -> str:
        """The view of the images that count when grouping by `column`: with copies collapsed, one image per
        (cluster, group) (the representative where it is in the group, else the smallest id), so a cluster that
        spans groups counts once in each; otherwise every image."""
        g = self.check_group_column(column)
        if not self.collapsed:
            return "images"
        name = "images_by_" + hashlib.sha256(column.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        if name not in self._views:
            self.con.execute(f"""
                CREATE TEMP VIEW {name} AS SELECT i.* FROM all_images i LEFT JOIN copy_members c USING (image_id)
                QUALIFY c.cluster IS NULL OR row_number() OVER (
                    PARTITION BY c.cluster, CAST(i.{g} AS VARCHAR)
                    ORDER BY (i.image_id = c.representative) DESC, i.image_id) = 1""")
            self._views.add(name)
        return name

    def _judged_sql(self, kind: str, words: WordFilter) -> str:
        """A SELECT of the token rows of `kind` with `filtered`, why `words` leaves each row out of the
        statistics ('stop word', 'cosine'; null where it counts), and `best`, the image's best sequence
        cosine the cosine rule compares with (null where the rule does not apply). The one definition of the
        filter: the statistics read the rows it keeps, explain shows the ones it leaves out."""
        if kind not in KINDS:
            raise AuditError(f"unknown word kind {kind!r}; kinds are {', '.join(KINDS)}")
        stop = f"stop_{words.key}"
        if stop not in self._views:
            self.con.register(stop, pa.table({"word": pa.array(sorted(words.stop_words), pa.string())}))
            self._views.add(stop)
        relative = float(words.min_relative_cosine)
        best, rule = "CAST(NULL AS FLOAT) AS best", ""
        join = ""
        if kind == ASCENT and relative > 0:
            join = (f"JOIN (SELECT image_id, max(seq_cosine) AS best FROM all_tokens WHERE kind = '{ASCENT}' "
                    "GROUP BY image_id) b USING (image_id)")
            best, rule = "b.best", f"WHEN t.word_cosine < {relative!r} * b.best THEN 'cosine'"
        return (f"SELECT t.*, {best}, CASE WHEN t.word IN (SELECT word FROM {stop}) THEN 'stop word' {rule} "
                f"END AS filtered FROM all_tokens t {join} WHERE t.kind = '{kind}'")

    def kept(self, kind: str, words: WordFilter = WordFilter()) -> str:
        """The name of a view of the token rows of `kind` that `words` keeps (made once per connection)."""
        name = f"kept_{kind}_{words.key}"
        if name not in self._views:
            self.con.execute(f"CREATE TEMP VIEW {name} AS SELECT * EXCLUDE (best, filtered) "
                             f"FROM ({self._judged_sql(kind, words)}) WHERE filtered IS NULL")
            self._views.add(name)
        return name

    def judged(self, words: WordFilter, image_ids: list[str] | None = None) -> pd.DataFrame:
        """Every token row (of every kind; of the given images only, if named) with `filtered` and `best` as
        _judged_sql defines them."""
        where = "" if image_ids is None else "WHERE image_id IN (SELECT unnest(?::VARCHAR[]))"
        union = " UNION ALL ".join(self._judged_sql(kind, words) for kind in KINDS)
        return self.df(f"SELECT * FROM ({union}) {where} ORDER BY image_id, kind, word_rank",
                       [] if image_ids is None else [list(image_ids)])

    def filter_counts(self, kind: str, words: WordFilter) -> dict[str, int]:
        """What `words` leaves out of the statistics for one kind: (image, word) pairs and distinct words,
        before and after, and the pairs each filter removed (stop words first, then the cosine rule)."""
        row = self.df(f"""
            SELECT count(DISTINCT (image_id, word)) AS pairs, count(DISTINCT word) AS words,
                   count(DISTINCT (image_id, word)) FILTER (WHERE filtered IS NULL) AS kept_pairs,
                   count(DISTINCT word) FILTER (WHERE filtered IS NULL) AS kept_words,
                   count(DISTINCT (image_id, word)) FILTER (WHERE filtered = 'stop word') AS stop_pairs,
                   count(DISTINCT (image_id, word)) FILTER (WHERE filtered = 'cosine') AS cosine_pairs
            FROM ({self._judged_sql(kind, words)})""").iloc[0]
        return {k: int(row[k]) for k in ("pairs", "words", "kept_pairs", "kept_words", "stop_pairs",
                                         "cosine_pairs")}

    def columns(self, table: str) -> list[str]:
        return [r[0] for r in self.con.execute(f"DESCRIBE {table}").fetchall()]

    def check_group_column(self, column: str) -> str:
        cols = self.columns("images")
        if column not in cols:
            raise AuditError(f"unknown --group-by column {column!r}; the scan's image columns are "
                             + ", ".join(c for c in cols if c not in ("image_id", "path", "width", "height")))
        return quote(column)

    def scalar(self, sql: str, params=()) -> object:
        return self.con.execute(sql, list(params)).fetchall()[0][0]  # fetched to the end: the connection is free again

    def df(self, sql: str, params=()) -> pd.DataFrame:
        return self.con.execute(sql, list(params)).df()

    # ---- the report's queries --------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        return {t: int(self.scalar(f"SELECT count(*) FROM {t}")) for t in ("images", "tokens", "heatmaps", "errors")}

    def group_sizes(self, column: str) -> pd.DataFrame:
        g = self.check_group_column(column)
        images = self.images_of(column)
        return self.df(f"SELECT coalesce(CAST({g} AS VARCHAR), ?) AS grp, count(*) AS n FROM {images} "
                       "GROUP BY 1 ORDER BY 1", [MISSING_GROUP])

    def word_group_counts(self, column: str, min_count: int, kind: str = ASCENT,
                          words: WordFilter = WordFilter()) -> pd.DataFrame:
        """Per (group, word): images of the group showing the word (a), and the word's total images."""
        g = self.check_group_column(column)
        images = self.images_of(column)
        return self.df(f"""
            WITH seen AS (
                SELECT DISTINCT t.image_id, t.word, coalesce(CAST(i.{g} AS VARCHAR), ?) AS grp
                FROM {self.kept(kind, words)} t JOIN {images} i USING (image_id)
            ), totals AS (
                SELECT word, count(*) AS word_total FROM seen GROUP BY word HAVING count(*) >= ?
            )
            SELECT s.grp, s.word, count(*) AS a, any_value(tt.word_total) AS word_total
            FROM seen s JOIN totals tt USING (word)
            GROUP BY s.grp, s.word
        """, [MISSING_GROUP, min_count])

    def heatmap_values(self, column: str, words: list[str], stat: str, kind: str = ASCENT,
                       word_filter: WordFilter = WordFilter()) -> pd.DataFrame:
        """One heatmap statistic for the given words (of one kind, where the filter keeps the word), with each
        row's group."""
        if stat not in self.columns("heatmaps"):
            raise AuditError(f"unknown heatmap statistic {stat!r}")
        g = self.check_group_column(column)
        images = self.images_of(column)
        return self.df(f"""
            SELECT h.word, coalesce(CAST(i.{g} AS VARCHAR), ?) AS grp, h.{quote(stat)} AS value
            FROM all_heatmaps h JOIN {images} i USING (image_id)
            WHERE h.kind = ? AND h.word IN (SELECT unnest(?::VARCHAR[]))
              AND (h.image_id, h.word) IN (SELECT (image_id, word) FROM {self.kept(kind, word_filter)})
        """, [MISSING_GROUP, kind, words])

    def probe_words(self) -> list[str]:
        """Probe words in the order they were given."""
        return list(self.df("SELECT word FROM probe_tokens GROUP BY word ORDER BY min(word_rank), word").word)

    def probe_cosines(self, column: str) -> pd.DataFrame:
        """Every probe word's cosine with every image, with the image's group."""
        g = self.check_group_column(column)
        images = self.images_of(column)
        return self.df(f"""
            SELECT t.word, coalesce(CAST(i.{g} AS VARCHAR), ?) AS grp, t.word_cosine AS cosine
            FROM probe_tokens t JOIN {images} i USING (image_id)
        """, [MISSING_GROUP])

    def examples(self, column: str, group: str, word: str, limit: int, kind: str = ASCENT,
                 words: WordFilter = WordFilter()) -> pd.DataFrame:
        """The group's images showing the word with a heatmap, highest cosine first."""
        g = self.check_group_column(column)
        images = self.images_of(column)
        return self.df(f"""
            SELECT i.image_id, i.path, h.grid, h.grid_h, h.grid_w, t.word_cosine
            FROM {self.kept(kind, words)} t JOIN all_heatmaps h USING (image_id, kind, word)
                 JOIN {images} i USING (image_id)
            WHERE t.word = ? AND coalesce(CAST(i.{g} AS VARCHAR), ?) = ?
            ORDER BY t.word_cosine DESC, i.image_id LIMIT ?
        """, [word, MISSING_GROUP, group, limit])

    def concept_weight_sums(self, column: str, words: list[str],
                            word_filter: WordFilter = WordFilter()) -> pd.DataFrame:
        """Per (concept, group) where the concept is stored: the sum of its weights and of their squares over
        the group's images (an image whose stored concepts lack it adds 0), aggregated in the database."""
        g = self.check_group_column(column)
        images = self.images_of(column)
        return self.df(f"""
            SELECT t.word, coalesce(CAST(i.{g} AS VARCHAR), ?) AS grp, sum(t.weight) AS total,
                   sum(t.weight * t.weight) AS total_sq
            FROM {self.kept("concept", word_filter)} t JOIN {images} i USING (image_id)
            WHERE t.word IN (SELECT unnest(?::VARCHAR[]))
            GROUP BY 1, 2
        """, [MISSING_GROUP, words])

    # ---- check / diff ----------------------------------------------------------------------------------
    def images_groups(self, column: str | None = None) -> pd.DataFrame:
        """Every image with its group ('' without a column)."""
        if column is None:
            return self.df("SELECT image_id, '' AS grp FROM images ORDER BY image_id")
        g = self.check_group_column(column)
        return self.df(f"SELECT image_id, coalesce(CAST({g} AS VARCHAR), ?) AS grp FROM {self.images_of(column)} "
                       "ORDER BY image_id",
                       [MISSING_GROUP])

    def unreadable(self) -> int:
        """Images that could not be scanned, whatever the cause (the errors view holds one row per image that
        is not scanned)."""
        return int(self.scalar("SELECT count(*) FROM errors"))

    def internal_errors(self) -> int:
        """Of those, the images audit failed on through a fault of its own (schema.INTERNAL): a bug."""
        return int(self.scalar("SELECT count(*) FROM errors WHERE stage = ?", [INTERNAL]))

    def word_pairs(self, kind: str = ASCENT, words: WordFilter = WordFilter()) -> pd.DataFrame:
        """Distinct (image_id, word) pairs of one kind: which images show which words."""
        return self.df(f"SELECT DISTINCT image_id, word FROM {self.kept(kind, words)} "
                       "WHERE image_id IN (SELECT image_id FROM images) ORDER BY image_id, word")

    def pairs_per_kind(self) -> dict[str, int]:
        """(image, word) rows of each kind the scan holds, in KINDS order."""
        counted = dict(self.con.execute("SELECT kind, count(*) FROM all_tokens GROUP BY kind").fetchall())
        return {k: int(counted[k]) for k in KINDS if k in counted}

    def kinds(self) -> list[str]:
        """The kinds of words the scan holds, in KINDS order."""
        return list(self.pairs_per_kind())
