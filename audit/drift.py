"""What changed between two scans of a dataset: images, word distribution, group shares, associations.

`audit diff` shows it and `audit check --baseline` gates on it; both call `compare`, so the numbers agree.
A word's distribution is over (image, word) pairs: how many images show each word. Shares of a word are
out of all images of the snapshot (or of the group).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import stats
from .analysis import Associations, associations
from .query import ScanQuery


@dataclass
class Drift:
    images_old: int
    images_new: int
    added: list[str]
    removed: list[str]
    jsd: float  # word distribution, whole snapshot
    words: pd.DataFrame  # word, n_old, n_new, share_old, share_new, delta; largest |delta| first
    column: str | None = None
    groups: pd.DataFrame = field(default_factory=pd.DataFrame)  # grp, n_old, n_new, share_*, delta, jsd
    appeared: pd.DataFrame = field(default_factory=pd.DataFrame)  # findings now, not flagged before
    vanished: pd.DataFrame = field(default_factory=pd.DataFrame)  # findings before, not flagged now

    @property
    def kept(self) -> int:
        return self.images_new - len(self.added)


def _jsd(old: pd.DataFrame, new: pd.DataFrame) -> float:
    both = old.set_index("word").n.to_frame("o").join(new.set_index("word").n.to_frame("n"), how="outer").fillna(0)
    return stats.jensen_shannon(both.o.to_numpy(), both.n.to_numpy()) if len(both) else 0.0


def _pairs(df: pd.DataFrame) -> list[tuple[str, str]]:
    return list(zip(df.grp, df.word, strict=True))


def _without(findings: pd.DataFrame, pairs: set[tuple[str, str]]) -> pd.DataFrame:
    keep = np.array([p not in pairs for p in _pairs(findings)], dtype=bool)
    return findings.loc[keep].reset_index(drop=True)


def compare(old: ScanQuery, new: ScanQuery, column: str | None = None, *, min_count: int = 5, fdr: float = 0.05,
            assoc_old: Associations | None = None, assoc_new: Associations | None = None) -> Drift:
    """Compare two scans; with a group column also per group. Associations already computed (say, by a
    check) can be passed in so nothing is computed twice."""
    ids_old, ids_new = set(old.image_ids()), set(new.image_ids())
    n_old, n_new = len(ids_old), len(ids_new)
    w_old, w_new = old.word_images(), new.word_images()
    words = (w_old.set_index("word").n.rename("n_old").to_frame()
             .join(w_new.set_index("word").n.rename("n_new"), how="outer").fillna(0).astype(np.int64)
             .reset_index())
    words["share_old"] = words.n_old / max(n_old, 1)
    words["share_new"] = words.n_new / max(n_new, 1)
    words["delta"] = words.share_new - words.share_old
    words = words.sort_values(["delta", "word"], key=lambda c: -c.abs() if c.name == "delta" else c,
                              kind="stable").reset_index(drop=True)
    drift = Drift(n_old, n_new, sorted(ids_new - ids_old), sorted(ids_old - ids_new), _jsd(w_old, w_new), words)
    if column is None:
        return drift
    drift.column = column
    g_old = old.group_sizes(column).set_index("grp").n.rename("n_old")
    g_new = new.group_sizes(column).set_index("grp").n.rename("n_new")
    groups = g_old.to_frame().join(g_new, how="outer").fillna(0).astype(np.int64).reset_index()
    groups["share_old"] = groups.n_old / max(n_old, 1)
    groups["share_new"] = groups.n_new / max(n_new, 1)
    groups["delta"] = groups.share_new - groups.share_old
    gw_old, gw_new = old.word_images(column), new.word_images(column)
    groups["jsd"] = [
        _jsd(gw_old[gw_old.grp == g], gw_new[gw_new.grp == g]) if no and nn else float("nan")
        for g, no, nn in zip(groups.grp, groups.n_old, groups.n_new, strict=True)
    ]
    drift.groups = groups
    assoc_old = assoc_old or associations(old, column, min_count, fdr)
    assoc_new = assoc_new or associations(new, column, min_count, fdr)
    was, now = set(_pairs(assoc_old.flagged)), set(_pairs(assoc_new.flagged))
    drift.appeared = _without(assoc_new.findings, was)
    drift.vanished = _without(assoc_old.findings, now)
    return drift
