"""The statistics of many 2x2 tables at once (analysis/tables.py) against the per-table reference (stats.py, one
scipy call per table): every table with small cells, random large ones, and the associations of the demo scans."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from audit.analysis import stats, tables

SMALL = np.array(list(itertools.product(range(9), repeat=4)))  # every table with cells 0..8: 6,561


def reference(fn, rows) -> np.ndarray:
    return np.array([fn(*map(int, r)) for r in rows], dtype=np.float64)


ALTERNATIVES = ["greater", "two-sided"]


@pytest.mark.parametrize("alternative,mid", [("greater", False), ("greater", True), ("two-sided", False)])
def test_fisher_is_scipys_on_every_small_table(alternative, mid):
    """Within 1e-12 relative, ties included (two-sided: the tables as likely as the observed one count)."""
    got = tables.fisher_exact(*SMALL.T, alternative=alternative, mid=mid)
    want = reference(lambda *r: stats.fisher_exact(*r, alternative, mid), SMALL)
    assert np.allclose(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("alternative", ALTERNATIVES)
def test_chi_square_and_the_choice_between_the_tests_on_every_small_table(alternative):
    assert np.array_equal(tables.chi_square(*SMALL.T, alternative=alternative),
                          reference(lambda *r: stats.chi_square(*r, alternative), SMALL))
    live = SMALL[SMALL.sum(1) > 0]
    p, test = tables.association_test(*live.T, alternative=alternative)
    want = [stats.association_test(*map(int, r), alternative) for r in live]
    assert np.allclose(p, [w[0] for w in want], rtol=1e-12, atol=0) and list(test) == [w[1] for w in want]


def test_one_sided_p_values_by_hand():
    """P(X >= a) under the table's hypergeometric distribution; chi-square's half of the two-sided p in the
    direction of over-representation, and one minus that half against it."""
    assert np.isclose(tables.fisher_exact([3], [1], [1], [3], alternative="greater")[0], 17 / 70, rtol=1e-12)
    assert np.isclose(tables.fisher_exact([1], [3], [3], [1], alternative="greater")[0], 69 / 70, rtol=1e-12)
    # the mid-p counts the observed table's probability (16/70 for 3 of 4) half
    assert np.isclose(tables.fisher_exact([3], [1], [1], [3], alternative="greater", mid=True)[0], 9 / 70, rtol=1e-12)
    two = tables.chi_square([30], [20], [20], [30])[0]
    assert np.isclose(tables.chi_square([30], [20], [20], [30], alternative="greater")[0], two / 2, rtol=1e-12)
    assert np.isclose(tables.chi_square([20], [30], [30], [20], alternative="greater")[0], 1 - two / 2, rtol=1e-12)
    with pytest.raises(ValueError, match="alternative"):
        tables.fisher_exact([1], [1], [1], [1], alternative="less")


@pytest.mark.parametrize("alternative", ALTERNATIVES)
def test_random_large_tables_and_their_minimum_attainable_p(alternative):
    rng = np.random.default_rng(7)
    big = rng.integers(0, 4000, size=(1500, 4))
    big[:500, 0] = rng.integers(0, 6, 500)  # a rare word in a large dataset: Fisher's side of the rule
    p, test = tables.association_test(*big.T, alternative=alternative)
    want = [stats.association_test(*map(int, r), alternative) for r in big]
    # One-sided, Fisher's mid-p runs over supports of thousands of values: the sum of as many log ratios carries
    # about 1e-11 of relative error (scipy's own Boost evaluation is no closer to exact at these sizes).
    # Below 1e-300 (subnormal doubles) only the absolute difference means anything.
    rtol, atol = (1e-10, 1e-300) if alternative == "greater" else (1e-12, 0)
    assert np.allclose(p, [w[0] for w in want], rtol=rtol, atol=atol) and list(test) == [w[1] for w in want]
    group, rest = rng.integers(1, 400, 800), rng.integers(1, 40_000, 800)
    total = rng.integers(1, np.minimum(group + rest, 3000))
    got = tables.min_attainable_p(group, rest, total, alternative)
    want = [stats.min_attainable_p(int(g), int(r), int(t), alternative)
            for g, r, t in zip(group, rest, total, strict=True)]
    assert np.allclose(got, want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", ["lift", "npmi"])
def test_effect_sizes_on_every_small_table(name):
    live = SMALL[SMALL.sum(1) > 0]
    got, want = getattr(tables, name)(*live.T), reference(getattr(stats, name), live)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=1e-12, atol=1e-15)


def test_log_odds_intervals_on_every_small_table():
    got = np.stack(tables.log_odds_ci(*SMALL.T), axis=1)
    assert np.allclose(got, reference(lambda *r: stats.log_odds_ci(*r), SMALL).reshape(-1, 3), rtol=1e-12,
                       atol=1e-15)


@pytest.mark.parametrize("alternative", ALTERNATIVES)
def test_the_demo_scans_associations_are_the_per_pair_ones(demo_run, unbiased_demo_scan, alternative):
    """Every tested pair of both demo scans: p-values and floors as the per-pair reference gives them (within
    1e-12), q-values within 1e-12 of BH over the reference p-values, and the same flags."""
    from audit.analysis.associations import associations
    from audit.store.query import ScanQuery

    for scan in (demo_run[0] / "scan", unbiased_demo_scan):
        q = ScanQuery.open(scan)
        for column in ("label", "shape"):
            t = associations(q, column, min_count=3, alternative=alternative).table
            n_total = int(q.group_sizes(column).n.sum())
            rows = [(int(a), int(n - a), int(c), int(n_total - n - c)) for a, n, c in zip(t.a, t.n_group, t.c,
                                                                                         strict=True)]
            want = np.array([stats.association_test(*r, alternative)[0] for r in rows])
            assert len(rows) and np.allclose(t.p.to_numpy(), want, rtol=1e-12, atol=0), (scan, column)
            floors = [stats.min_attainable_p(a + b, c + d, a + c, alternative) for a, b, c, d in rows]
            assert np.allclose(t.p_min.to_numpy(), floors, rtol=1e-12, atol=0), (scan, column)
            if len(q.group_sizes(column)) == 2 and alternative == "two-sided":
                continue  # two groups are one hypothesis per word (counted once); the other columns cover BH
            qv, testable = stats.tarone_bh(want, floors, 0.05)
            assert np.array_equal(testable, t.testable.to_numpy())
            assert np.allclose(t.q.to_numpy(), qv, rtol=0, atol=1e-12, equal_nan=True)
            direction = t.log_odds_lo.to_numpy() > 0 if alternative == "two-sided" else True
            assert np.array_equal(t.flagged.to_numpy(), (qv < 0.05) & direction)


def test_rows_of_margins_are_made_unique_as_numpy_does_with_small_and_huge_counts():
    rng = np.random.default_rng(2)
    for top in (50, 2**22):  # the one-key path, and counts too large for one key
        rows = rng.integers(0, top, size=(3000, 3))
        rows[1000:2000] = rows[:1000]
        got, inverse = tables._unique_rows(rows)
        want, want_inverse = np.unique(rows, axis=0, return_inverse=True)
        assert np.array_equal(got, want) and np.array_equal(inverse, want_inverse.reshape(-1))


def test_the_one_sided_procedure_keeps_the_false_discovery_rate_on_null_data():
    """4,000 null datasets shaped like bench/power.py's (300 images in groups of 60, 100 and 140; 21 words in 5-119
    images each, spread at random): every flag is false, so the share of datasets with any flag is the FDR and
    must stay at or under 5%. The mid-p gives 4.85%; the one-sided chi-square's normal tail gave 6.0% here."""
    rng = np.random.default_rng(0)
    sizes, n = np.array([60, 100, 140]), 300
    flagged = 0
    for _ in range(4000):
        totals = rng.integers(5, 120, size=21)
        a = np.stack([rng.multivariate_hypergeometric(sizes, t) for t in totals]).ravel()
        group, total = np.tile(sizes, 21), np.repeat(totals, 3)
        p, _ = tables.association_test(a, group - a, total - a, n - group - total + a, "greater")
        q, _ = stats.tarone_bh(p, tables.min_attainable_p(group, n - group, total, "greater"), 0.05)
        flagged += bool((np.nan_to_num(q, nan=1) < 0.05).any())
    assert flagged / 4000 <= 0.05, flagged
