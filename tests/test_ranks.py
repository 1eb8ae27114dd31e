"""Mann-Whitney tests of every group against the rest at once (analysis/ranks.py) against the per-pair reference
(stats.mann_whitney, one scipy call per pair, as compare_looks and probes computed them before): exact and
asymptotic paths, ties, missing values, tiny groups and tiny rests, and the demo scan's heatmaps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from audit.analysis import stats
from audit.analysis.associations import LOOK_COLUMNS, compare_looks, probes
from audit.analysis.ranks import EXACT_MAX, exact_cdf, group_vs_rest
from audit.store.query import ScanQuery, WordFilter

from .scanfactory import write_scan


def reference_cells(word, group, values):
    """Per (word, group) with values: the old per-pair computation."""
    out = {}
    for w in np.unique(word):
        for g in np.unique(group[word == w]):
            sel = (word == w) & ~np.isnan(values)
            x, y = values[sel & (group == g)], values[sel & (group != g)]
            if len(x):
                out[w, g] = (x, y, *stats.mann_whitney(x, y))
    return out


def assert_matches_reference(word, group, values, n_words, n_groups):
    r = group_vs_rest(word, group, values, n_words, n_groups)
    want = reference_cells(word, group, values)
    assert len(r.word) == len(want)
    for i in range(len(r.word)):
        x, y, p, effect = want[r.word[i], r.group[i]]
        assert (r.n_group[i], r.n_rest[i]) == (len(x), len(y))
        assert r.median_group[i] == np.median(x) and np.isclose(r.mean_group[i], x.mean(), rtol=1e-12)
        if len(x) > 1:
            assert np.isclose(r.sd_group[i], x.std(ddof=1), rtol=1e-10)
        if not len(y):
            assert np.isnan(r.p[i]) and np.isnan(r.median_rest[i]) and np.isnan(r.mean_rest[i])
            continue
        assert np.isclose(r.p[i], p, rtol=1e-9, atol=0), (i, len(x), len(y), r.p[i], p)
        assert np.isclose(r.effect[i], effect, rtol=1e-12, atol=1e-14)
        assert r.median_rest[i] == np.median(y) and np.isclose(r.mean_rest[i], y.mean(), rtol=1e-12)
    return r


def test_many_groups_of_every_size_with_ties_missing_values_and_flat_words():
    """Geometric group sizes put many groups at 1-8 values (scipy's exact path) and a few in the hundreds;
    words 0-2 round their values (ties: the normal approximation with tie correction, whatever the sizes), word
    4 has a single value (p = 1), and 2% of the values are missing."""
    rs = np.random.default_rng(1)
    n, n_words, n_groups = 6000, 7, 60
    word = rs.integers(0, n_words, n)
    group = np.minimum(rs.geometric(0.08, n) - 1, n_groups - 1)
    values = rs.random(n)
    values[rs.random(n) < 0.02] = np.nan
    r = assert_matches_reference(word, group, values, n_words, n_groups)
    assert ((r.n_group <= EXACT_MAX) & (r.n_group > 0)).sum() > 50  # the exact path was exercised
    values[word < 3] = np.round(values[word < 3], 1)
    values[word == 4] = 0.5
    r = assert_matches_reference(word, group, values, n_words, n_groups)
    assert (r.p[r.word == 4] == 1).all()


@pytest.mark.parametrize("sizes", [(3, 9), (9, 3), (1, 1), (8, 8), (1, 0), (2, 40)])
def test_tiny_samples_on_either_side(sizes):
    rs = np.random.default_rng(sum(sizes))
    group = np.repeat([0, 1], sizes)
    assert_matches_reference(np.zeros(len(group), dtype=int), group, rs.random(len(group)), 1, 2)


def test_the_exact_distribution_over_its_whole_support():
    """P(U <= u) for every u of several shapes, against scipy's exact test on samples built to have U = u:
    y = 0..n-1 and each x just below an integer c_i, so that x_i exceeds c_i of the y and U = sum(c_i)."""
    rs = np.random.default_rng(3)
    for m, n in [(1, 1), (1, 30), (3, 5), (5, 3), (8, 8), (8, 40), (4, 300)]:
        us = np.unique(np.concatenate([np.arange(0, min(m * n, 60) + 1), rs.integers(0, m * n + 1, 20)]))
        got = exact_cdf(us, np.full(len(us), min(m, n)), np.full(len(us), max(m, n)))
        for u, g in zip(us, got, strict=True):
            c = np.zeros(m, dtype=int)
            left = int(u)
            for i in range(m):
                c[i] = min(n, left)
                left -= c[i]
            x = c - 0.5 + np.arange(1, m + 1) * 1e-4
            res = scipy.stats.mannwhitneyu(x, np.arange(n, dtype=float), alternative="less", method="exact")
            assert np.isclose(g, res.pvalue, rtol=1e-10, atol=0), (m, n, u, g, res.pvalue)


def test_the_exact_p_of_a_group_of_eight_against_fifty_thousand():
    """The exact path at sizes a scan has (scipy's exact test is impractical here, so the value is checked by
    hand): a group whose values are the 8 largest of 50,008 has p = 2 / C(50008, 8)."""
    from math import comb

    values = np.concatenate([np.arange(50_000, dtype=float), 50_000 + np.arange(8.0)])
    group = np.repeat([1, 0], [50_000, 8])
    r = group_vs_rest(np.zeros(len(values), dtype=int), group, values, 1, 2)
    assert np.isclose(r.p[0], 2 / comb(50_008, 8), rtol=1e-9) and r.effect[0] == 1.0


# ---- the analyses built on it, against the loops they replaced --------------------------------------------

def reference_looks(q, column, pairs, stat_names, kind, word_filter):
    words = sorted({w for _, w in pairs})
    rows = []
    for stat in stat_names:
        values = q.heatmap_values(column, words, stat, kind, word_filter).dropna(subset=["value"])
        for grp, word in pairs:
            w = values[values.word == word]
            x, y = w[w.grp == grp].value.to_numpy(float), w[w.grp != grp].value.to_numpy(float)
            if not len(x) or not len(y):
                continue
            p, effect = stats.mann_whitney(x, y)
            rows.append((grp, word, stat, float(np.median(x)), float(np.median(y)), len(x), len(y), p, effect))
    looks = pd.DataFrame(rows, columns=LOOK_COLUMNS[:-1])
    looks["q"] = stats.bh_qvalues(looks.p.to_numpy()) if len(looks) else []
    return looks


def test_heatmap_comparisons_of_the_demo_scan_are_the_per_pair_ones(demo_run):
    q = ScanQuery.open(demo_run[0] / "scan")
    for column in ("label", "shape"):
        words = sorted(set(q.df("SELECT DISTINCT word FROM tokens WHERE kind = 'ascent'").word))[:40]
        pairs = [(g, w) for w in words for g in q.group_sizes(column).grp]
        got = compare_looks(q, column, pairs, kind="ascent", word_filter=WordFilter())
        want = reference_looks(q, column, pairs, ("box_mass", "border_mass", "entropy"), "ascent", WordFilter())
        assert len(got) == len(want) > 20
        keys = ["grp", "word", "stat", "n_group", "n_rest"]
        assert got[keys].astype(str).values.tolist() == want[keys].astype(str).values.tolist()
        for col in ("median_group", "median_rest"):
            assert np.array_equal(got[col].to_numpy(), want[col].to_numpy())
        for col in ("p", "effect", "q"):
            assert np.allclose(got[col].to_numpy(float), want[col].to_numpy(float), rtol=1e-9, atol=1e-14), col


def test_probe_comparisons_are_the_per_pair_ones(tmp_path):
    """Three probe words over 9 groups of 1-40 images, one image without a group, one cosine missing."""
    rs = np.random.default_rng(5)
    sizes = [1, 2, 3, 5, 8, 9, 20, 40, 12]
    images = [{"image_id": f"g{k}-{i}", "label": f"g{k}"} for k, s in enumerate(sizes) for i in range(s)]
    images.append({"image_id": "nolabel", "label": None})
    probe_rows = {im["image_id"]: [(w, float(rs.normal(0.2 + 0.02 * (im["label"] == "g7"), 0.03)))
                                   for w in ("doctor", "a nurse", "grass")] for im in images}
    probe_rows["g6-0"][0] = ("doctor", float("nan"))
    q = ScanQuery.open(write_scan(tmp_path / "scan", images, {im["image_id"]: [] for im in images},
                                  probes=probe_rows))
    got = probes(q, "label").cosines
    values = q.probe_cosines("label")
    rows = []
    for word, w in values.groupby("word", sort=False):
        for grp in w.grp.unique():
            x = w[w.grp == grp].cosine.dropna().to_numpy(float)
            y = w[w.grp != grp].cosine.dropna().to_numpy(float)
            half = stats.Z95 * x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else np.nan
            p, effect = stats.mann_whitney(x, y)
            rows.append((word, grp, len(x), x.mean(), x.mean() - half, x.mean() + half, y.mean(), p, effect))
    want = pd.DataFrame(rows, columns=["word", "grp", "n", "mean", "ci_lo", "ci_hi", "mean_rest", "p", "effect"])
    merged = got.merge(want, on=["word", "grp"], suffixes=("", "_want"))
    assert len(merged) == len(got) == len(want) == 3 * 10
    assert (merged.n == merged.n_want).all()
    for col in ("mean", "ci_lo", "ci_hi", "mean_rest", "p", "effect"):
        assert np.allclose(merged[col], merged[f"{col}_want"], rtol=1e-9, atol=1e-14, equal_nan=True), col
    assert np.allclose(got.q, stats.bh_qvalues(got.p), rtol=1e-12)
    assert list(got.word.unique()) == q.probe_words()
