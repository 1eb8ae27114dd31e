"""Findings of a scan: word-group associations and where-CLIP-looks comparisons.

The numbers `audit report` shows and `audit check` gates on come from here, computed once: SQL in
query.py gathers counts, stats.py supplies the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from audit.analysis import (
    ALTERNATIVE,
    ALTERNATIVES,
    FDR,
    MIN_COUNT,
    MIN_RELATIVE_COSINE,
    PROCEDURE,
    PROCEDURES,
    STOP_WORDS,
    ranks,
    stats,
    tables,
)
from audit.errors import AuditError
from audit.store.query import ScanQuery, WordFilter
from audit.store.schema import ASCENT, PROBE

LOOK_STATS = ("box_mass", "border_mass", "entropy")


def word_filter(stop_words=STOP_WORDS, min_relative_cosine: float = MIN_RELATIVE_COSINE) -> WordFilter:
    """The filter the statistics apply: stop words ("default", "none" or a file) and the relative-cosine rule
    for ascent words (0 keeps every word)."""
    from audit.words import load_stop_words

    if not 0 <= min_relative_cosine <= 1:
        raise AuditError(f"--min-relative-cosine must be between 0 and 1, not {min_relative_cosine}")
    return WordFilter(load_stop_words(stop_words), float(min_relative_cosine))


@dataclass
class Associations:
    column: str
    groups: pd.DataFrame  # grp, n
    table: pd.DataFrame  # one row per tested (group, word)
    tested: int
    min_count: int
    fdr: float
    looks: pd.DataFrame = field(default_factory=pd.DataFrame)  # flagged word x statistic comparisons
    kind: str = ASCENT
    procedure: str = PROCEDURE
    alternative: str = ALTERNATIVE
    testable: int = 0  # pairs counted by the multiplicity correction (all tested pairs with "bh")
    filtered: dict = field(default_factory=dict)  # what the word filter left out (ScanQuery.filter_counts)
    words: WordFilter = field(default_factory=WordFilter)  # the filter the counts were made with

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


def _names_group(table: pd.DataFrame) -> pd.Series:
    """Whether each pair's word is a word of its group's own name: each group's name read once."""
    names = [(g, w) for g in table.grp.unique() for w in _name_words(g)]
    if not names:
        return pd.Series(False, index=table.index, dtype=bool)
    own = pd.MultiIndex.from_tuples(names, names=["grp", "word"])
    return pd.Series(pd.MultiIndex.from_frame(table[["grp", "word"]]).isin(own), index=table.index, dtype=bool)


def associations(q: ScanQuery, column: str, min_count: int = MIN_COUNT, fdr: float = FDR, *, kind: str = ASCENT,
                 words: WordFilter | None = None, procedure: str = PROCEDURE,
                 alternative: str = ALTERNATIVE) -> Associations:
    """Every (group, word) of one kind with at least min_count images overall, group vs the rest of the images,
    over the words the filter keeps (default: word_filter()'s).

    Each pair tests whether the word is over-represented in the group (alternative "greater", one-sided: the
    claim a flag makes), and is flagged when its q-value (procedure "tarone-bh" or "bh") is below fdr. A word
    seen less often in a group than elsewhere keeps its row (odds ratio below 1, p near 1), never flagged.
    With alternative "two-sided" (audit 0.2's test), a pair is flagged when q < fdr and the lower 95% bound of
    its log odds ratio is above 0. Rows are ranked by that bound.
    """
    if procedure not in PROCEDURES:
        raise AuditError(f"unknown testing procedure {procedure!r}; choose one of {', '.join(PROCEDURES)}")
    if alternative not in ALTERNATIVES:
        raise AuditError(f"unknown alternative {alternative!r}; choose one of {', '.join(ALTERNATIVES)}")
    if kind == PROBE:
        raise AuditError("probe words are compared by their cosines (audit.analysis.associations.probes), not by "
                         "presence")
    words = word_filter() if words is None else words
    groups = q.group_sizes(column)
    counts = q.word_group_counts(column, min_count, kind, words)
    n_total = int(groups.n.sum())
    size = dict(zip(groups.grp, groups.n, strict=True))
    # Every tested word is tested against every group, also groups where it never appears (a = 0).
    totals = counts[["word", "word_total"]].drop_duplicates()
    full = totals.merge(groups[["grp"]], how="cross").merge(counts[["grp", "word", "a"]], how="left",
                                                           on=["grp", "word"])
    full["a"] = full.a.fillna(0).astype(np.int64)
    n_g = full.grp.map(size).astype(np.int64)
    a = full.a.to_numpy()
    b = (n_g - full.a).to_numpy()
    c = (full.word_total - full.a).to_numpy()
    d = (n_total - n_g - c).to_numpy()
    # Every pair at once (tables.py; stats.py's per-table functions give the same numbers, one call at a time).
    p, test = tables.association_test(a, b, c, d, alternative)
    lor, lo, hi = tables.log_odds_ci(a, b, c, d)
    res = pd.DataFrame({"p": p, "test": test, "p_min": tables.min_attainable_p(a + b, c + d, a + c, alternative),
                        "log_odds": lor, "log_odds_lo": lo, "log_odds_hi": hi, "lift": tables.lift(a, b, c, d),
                        "npmi": tables.npmi(a, b, c, d)})
    table = pd.concat([full.reset_index(drop=True), res], axis=1)
    table["n_group"] = n_g.to_numpy()
    table["c"] = c  # images of the rest showing the word
    table["share_group"] = a / np.maximum(n_g.to_numpy(), 1)
    rest = n_total - n_g.to_numpy()
    table["share_rest"] = c / np.maximum(rest, 1)
    for col in ("", "_lo", "_hi"):
        table[f"odds_ratio{col}"] = np.exp(table[f"log_odds{col}"])
    # Two-sided with two groups, "group A vs the rest" and "group B vs the rest" are one table, transposed: one
    # hypothesis, counted once by the correction and given to both pairs. One-sided they are two hypotheses
    # (over-represented in A, in B), and at most one of the two p-values is small.
    paired = len(groups) == 2 and alternative == "two-sided"
    one = ~table.duplicated("word") if paired else np.ones(len(table), dtype=bool)
    if procedure == "bh":
        q_one, testable_one = stats.bh_qvalues(table.p[one].to_numpy()), np.ones(int(one.sum()), dtype=bool)
    else:
        q_one, testable_one = stats.tarone_bh(table.p[one].to_numpy(), table.p_min[one].to_numpy(), fdr)
    if paired:
        table["q"] = table.word.map(dict(zip(table.word[one], q_one, strict=True))).astype(float)
        table["testable"] = table.word.map(dict(zip(table.word[one], testable_one, strict=True))).astype(bool)
    else:
        table["q"], table["testable"] = q_one, testable_one
    direction = table.log_odds_lo > 0 if alternative == "two-sided" else True
    table["flagged"] = ((table.q < fdr) & direction).astype(bool)
    table["names_group"] = _names_group(table)
    # Strongest evidence first, then by group and word: sorted on codes (sorting millions of strings took seconds).
    grp_code, word_code = pd.factorize(table.grp, sort=True)[0], pd.factorize(table.word, sort=True)[0]
    table = table.iloc[np.lexsort((word_code, grp_code, -table.log_odds_lo.to_numpy()))].reset_index(drop=True)
    result = Associations(column, groups, table, len(table), min_count, fdr, kind=kind, procedure=procedure,
                          alternative=alternative,
                          testable=int(table.testable.sum()), filtered=q.filter_counts(kind, words), words=words)
    result.looks = where_it_looks(q, result, words)
    return result


LOOK_COLUMNS = ["grp", "word", "stat", "median_group", "median_rest", "n_group", "n_rest", "p", "effect", "q"]


def compare_looks(q: ScanQuery, column: str, pairs: list[tuple[str, str]], stat_names=LOOK_STATS,
                  kind: str = ASCENT, word_filter: WordFilter = WordFilter()) -> pd.DataFrame:
    """For each (group, word) and heatmap statistic: the word's heatmaps in the group vs in the rest
    (medians, Mann-Whitney p, rank-biserial effect), with BH q-values over all rows. Pairs without values in
    the group or in the rest give no row; rows follow the order of the pairs, statistic by statistic."""
    wanted = pd.DataFrame(pairs, columns=["grp", "word"], dtype=object).drop_duplicates()
    frames = []
    for stat in stat_names if len(wanted) else ():
        values = q.heatmap_values(column, sorted(set(wanted.word)), stat, kind, word_filter)
        cells = _rank_cells(values.word, values.grp, values.value)
        cells = cells[(cells.n_group > 0) & (cells.n_rest > 0)]
        frames.append(wanted.merge(cells, on=["grp", "word"], how="inner").assign(stat=stat))
    looks = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=LOOK_COLUMNS[:-1])
    looks = looks[LOOK_COLUMNS[:-1]]
    looks["q"] = stats.bh_qvalues(looks.p.to_numpy(dtype=float)) if len(looks) else []
    return looks


def _rank_cells(word: pd.Series, grp: pd.Series, values: pd.Series) -> pd.DataFrame:
    """Every (word, group) with values: the group against the rest of the word's values (ranks.group_vs_rest)."""
    word_code, word_names = pd.factorize(word)
    group_code, group_names = pd.factorize(grp)
    r = ranks.group_vs_rest(word_code, group_code, values.to_numpy(dtype=float), len(word_names), len(group_names))
    return pd.DataFrame({"grp": np.asarray(group_names, dtype=object)[r.group],
                         "word": np.asarray(word_names, dtype=object)[r.word], "median_group": r.median_group,
                         "median_rest": r.median_rest, "n_group": r.n_group, "n_rest": r.n_rest, "p": r.p,
                         "effect": r.effect, "mean": r.mean_group, "sd": r.sd_group, "mean_rest": r.mean_rest})


def where_it_looks(q: ScanQuery, assoc: Associations, words: WordFilter) -> pd.DataFrame:
    """For each flagged (group, word): heatmap statistics of the word in the group vs the rest."""
    return compare_looks(q, assoc.column, list(zip(assoc.flagged.grp, assoc.flagged.word, strict=True)),
                         kind=assoc.kind, word_filter=words)


def concept_weights(q: ScanQuery, column: str, concepts: list[str], words: WordFilter | None = None
                    ) -> pd.DataFrame:
    """Per (concept, group): the mean weight of the concept over the group's images (0 where an image's stored
    concepts lack it) with a 95% interval, and the mean over the rest. From sums the database makes, so the
    cost does not grow with the images times the concepts."""
    words = word_filter() if words is None else words
    sizes = q.group_sizes(column).set_index("grp").n.astype(float)
    sums = q.concept_weight_sums(column, list(concepts), words).set_index(["word", "grp"]) if concepts else None
    rows = []
    for word in concepts:
        per = sums.loc[word] if sums is not None and word in sums.index.get_level_values(0) else \
            pd.DataFrame({"total": [], "total_sq": []})
        total = per.total.reindex(sizes.index, fill_value=0.0).astype(float)
        total_sq = per.total_sq.reindex(sizes.index, fill_value=0.0).astype(float)
        for grp, n in sizes.items():
            mean = total[grp] / n
            var = max(0.0, (total_sq[grp] - n * mean * mean) / (n - 1)) if n > 1 else float("nan")
            half = stats.Z95 * np.sqrt(var / n) if n > 1 else float("nan")
            rest_n = sizes.sum() - n
            rest = (total.sum() - total[grp]) / rest_n if rest_n else float("nan")
            rows.append((word, grp, int(n), mean, mean - half, mean + half, rest))
    return pd.DataFrame(rows, columns=["word", "grp", "n", "mean", "ci_lo", "ci_hi", "mean_rest"])


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
    # Every (word, group) that has rows, also one whose cosines are all missing (no values: NaN everywhere).
    table = values[["word", "grp"]].drop_duplicates().merge(_rank_cells(values.word, values.grp, values.cosine),
                                                            on=["word", "grp"], how="left")
    n = table.n_group.fillna(0).astype(np.int64)
    half = stats.Z95 * table.sd / np.sqrt(n.where(n > 0))
    table = pd.DataFrame({"word": table.word, "grp": table.grp, "n": n, "mean": table["mean"],
                          "ci_lo": table["mean"] - half, "ci_hi": table["mean"] + half,
                          "mean_rest": table.mean_rest, "difference": table["mean"] - table.mean_rest,
                          "p": table.p.where(table.n_rest > 0), "effect": table.effect.where(table.n_rest > 0)})
    tested = table.p.notna()
    table["q"] = np.nan
    table.loc[tested, "q"] = stats.bh_qvalues(table.p[tested].to_numpy())
    table["flagged"] = table.q < fdr
    order = {w: i for i, w in enumerate(words)}
    table = table.sort_values(["word", "grp"], key=lambda c: c.map(order) if c.name == "word" else c)
    pairs = list(zip(table.grp, table.word, strict=True))
    looks = compare_looks(q, column, pairs, kind=PROBE)
    return Probes(column, words, table.reset_index(drop=True), looks, fdr)
