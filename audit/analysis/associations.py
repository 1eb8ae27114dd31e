"""Findings of a scan: word-group associations and where-CLIP-looks comparisons.

The numbers `audit report` shows and `audit check` gates on come from here, computed once: SQL in
query.py gathers counts, stats.py supplies the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from audit.analysis import FDR, MIN_COUNT, stats
from audit.store.query import ScanQuery
from audit.store.schema import ASCENT, PROBE

LOOK_STATS = ("box_mass", "border_mass", "entropy")


@dataclass
class Associations:
    column: str
    groups: pd.DataFrame  # grp, n
    table: pd.DataFrame  # one row per tested (group, word)
    tested: int
    min_count: int
    fdr: float
    looks: pd.DataFrame = field(default_factory=pd.DataFrame)  # flagged word x statistic comparisons

    @property
    def flagged(self) -> pd.DataFrame:
        """Flagged pairs, strongest evidence first."""
        return self.table[self.table.flagged]

    @property
    def findings(self) -> pd.DataFrame:
        """Flagged pairs other than a group's own name: what the model links to a group beyond its label."""
        return self.table[self.table.flagged & ~self.table.names_group]


def _name_words(group: str) -> set[str]:
    """The words of a group's own name, as ascent would spell them (lower case, letters and digits)."""
    from audit.words import clean_words

    return set(clean_words(str(group)))


def associations(q: ScanQuery, column: str, min_count: int = MIN_COUNT, fdr: float = FDR) -> Associations:
    """Every (group, word) with at least min_count images overall, group vs the rest of the images.

    A pair is flagged when its BH q-value is below fdr and the lower 95% bound of its log odds ratio is
    above 0 (the word is over-represented in the group, with evidence). Rows are ranked by that bound.
    """
    groups = q.group_sizes(column)
    counts = q.word_group_counts(column, min_count)
    n_total = int(groups.n.sum())
    size = dict(zip(groups.grp, groups.n, strict=True))
    # Every tested word is tested against every group, also groups where it never appears (a = 0).
    words = counts[["word", "word_total"]].drop_duplicates()
    full = words.merge(groups[["grp"]], how="cross").merge(counts[["grp", "word", "a"]], how="left",
                                                           on=["grp", "word"])
    full["a"] = full.a.fillna(0).astype(np.int64)
    n_g = full.grp.map(size).astype(np.int64)
    a = full.a.to_numpy()
    b = (n_g - full.a).to_numpy()
    c = (full.word_total - full.a).to_numpy()
    d = (n_total - n_g - c).to_numpy()
    rows = []
    for ai, bi, ci, di in zip(a, b, c, d, strict=True):
        p, test = stats.association_test(int(ai), int(bi), int(ci), int(di))
        lor, lo, hi = stats.log_odds_ci(int(ai), int(bi), int(ci), int(di))
        rows.append((p, test, lor, lo, hi, stats.lift(int(ai), int(bi), int(ci), int(di)),
                     stats.npmi(int(ai), int(bi), int(ci), int(di))))
    res = pd.DataFrame(rows, columns=["p", "test", "log_odds", "log_odds_lo", "log_odds_hi", "lift", "npmi"])
    table = pd.concat([full.reset_index(drop=True), res], axis=1)
    table["n_group"] = n_g.to_numpy()
    table["c"] = c  # images of the rest showing the word
    table["share_group"] = a / np.maximum(n_g.to_numpy(), 1)
    rest = n_total - n_g.to_numpy()
    table["share_rest"] = c / np.maximum(rest, 1)
    for col in ("", "_lo", "_hi"):
        table[f"odds_ratio{col}"] = np.exp(table[f"log_odds{col}"])
    table["q"] = stats.bh_qvalues(table.p.to_numpy())
    table["flagged"] = (table.q < fdr) & (table.log_odds_lo > 0)
    table["names_group"] = [w in _name_words(g) for g, w in zip(table.grp, table.word, strict=True)]
    table = table.sort_values(["log_odds_lo", "grp", "word"], ascending=[False, True, True]).reset_index(drop=True)
    result = Associations(column, groups, table, len(table), min_count, fdr)
    result.looks = where_it_looks(q, result)
    return result


LOOK_COLUMNS = ["grp", "word", "stat", "median_group", "median_rest", "n_group", "n_rest", "p", "effect", "q"]


def compare_looks(q: ScanQuery, column: str, pairs: list[tuple[str, str]], stat_names=LOOK_STATS,
                  kind: str = ASCENT) -> pd.DataFrame:
    """For each (group, word) and heatmap statistic: the word's heatmaps in the group vs in the rest
    (medians, Mann-Whitney p, rank-biserial effect), with BH q-values over all rows."""
    words = sorted({w for _, w in pairs})
    rows = []
    for stat in stat_names if pairs else ():
        values = q.heatmap_values(column, words, stat, kind)
        by_word = {w: v for w, v in values.groupby("word")}
        for grp, word in pairs:
            w = by_word.get(word)
            if w is None:
                continue
            x = w[w.grp == grp].value.dropna().to_numpy(dtype=float)
            y = w[w.grp != grp].value.dropna().to_numpy(dtype=float)
            if len(x) == 0 or len(y) == 0:
                continue
            p, effect = stats.mann_whitney(x, y)
            rows.append((grp, word, stat, float(np.median(x)), float(np.median(y)), len(x), len(y), p, effect))
    looks = pd.DataFrame(rows, columns=LOOK_COLUMNS[:-1])
    looks["q"] = stats.bh_qvalues(looks.p.to_numpy()) if len(looks) else []
    return looks


def where_it_looks(q: ScanQuery, assoc: Associations) -> pd.DataFrame:
    """For each flagged (group, word): heatmap statistics of the word in the group vs the rest."""
    return compare_looks(q, assoc.column, list(zip(assoc.flagged.grp, assoc.flagged.word, strict=True)))


@dataclass
class Probes:
    column: str
    words: list[str]
    cosines: pd.DataFrame  # per (word, group): n, mean, ci_lo, ci_hi, mean_rest, difference, p, effect, q, flagged
    looks: pd.DataFrame  # compare_looks rows for every (group, probe word)
    fdr: float

    @property
    def flagged(self) -> pd.DataFrame:
        return self.cosines[self.cosines.flagged]


def probes(q: ScanQuery, column: str, fdr: float = FDR) -> Probes:
    """How strongly each probe word matches each group's images compared with the rest.

    Per (word, group): mean cosine with a 95% interval (normal approximation), the difference to the rest,
    and a Mann-Whitney test of the group's cosines against the rest's; BH q-values over every (word, group).
    Flagged: q < fdr. Where-it-looks statistics of the probe heatmaps are compared the same way.
    """
    words = q.probe_words()
    values = q.probe_cosines(column)
    rows = []
    for word, w in values.groupby("word", sort=False):
        for grp in w.grp.unique():
            x = w[w.grp == grp].cosine.dropna().to_numpy(dtype=float)
            y = w[w.grp != grp].cosine.dropna().to_numpy(dtype=float)
            mean = float(x.mean()) if len(x) else float("nan")
            half = stats.Z95 * float(x.std(ddof=1)) / np.sqrt(len(x)) if len(x) > 1 else float("nan")
            p, effect = stats.mann_whitney(x, y) if len(y) else (float("nan"), float("nan"))
            rest = float(y.mean()) if len(y) else float("nan")
            rows.append((word, grp, len(x), mean, mean - half, mean + half, rest, mean - rest, p, effect))
    table = pd.DataFrame(rows, columns=["word", "grp", "n", "mean", "ci_lo", "ci_hi", "mean_rest", "difference",
                                        "p", "effect"])
    tested = table.p.notna()
    table["q"] = np.nan
    table.loc[tested, "q"] = stats.bh_qvalues(table.p[tested].to_numpy())
    table["flagged"] = table.q < fdr
    order = {w: i for i, w in enumerate(words)}
    table = table.sort_values(["word", "grp"], key=lambda c: c.map(order) if c.name == "word" else c)
    pairs = list(zip(table.grp, table.word, strict=True))
    looks = compare_looks(q, column, pairs, kind=PROBE)
    return Probes(column, words, table.reset_index(drop=True), looks, fdr)
