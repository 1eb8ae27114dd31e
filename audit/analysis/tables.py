"""The statistics of many 2x2 tables at once: arrays in, arrays out, at numpy speed.

Word-group association uses the 2x2 table of images, one per (group, word):
                 word seen   word not seen
    group            a             b
    rest             c             d

A scan grouped by a column of a thousand values holds millions of such tables; one scipy call per table took
minutes. Here every test is computed over all tables together with scipy's array-aware distributions, and each
gives what stats.py's per-table functions give (those stay as the readable reference the tests compare with):
- Fisher's two-sided p is scipy's definition step for step (the tables no more likely than the observed one,
  with scipy's relative tolerance for ties, found by the same binary search on the far side of the mode), and
  tables with the same margins share one hypergeometric distribution;
- chi-square is Pearson's without continuity correction, from the expected counts as scipy computes them;
- the minimum attainable p-value (Tarone) is computed once per distinct margins, which repeat across words.
"""

from __future__ import annotations

import numpy as np
import scipy.stats

from audit.analysis.stats import Z95

_TIE = 1 + 1e-14  # scipy.stats.fisher_exact's relative tolerance for ties


def _ints(*arrays) -> list[np.ndarray]:
    return [np.asarray(x, dtype=np.int64) for x in arrays]


def fisher_exact(a, b, c, d) -> np.ndarray:
    """Two-sided Fisher exact p-values, as scipy.stats.fisher_exact gives them table by table."""
    a, b, c, d = _ints(a, b, c, d)
    p = np.ones(a.shape, dtype=np.float64)
    # A table with an empty row or column says nothing: p = 1 (scipy's rule).
    live = (a + b > 0) & (c + d > 0) & (a + c > 0) & (b + d > 0)
    if not live.any():
        return p
    a, b, c, d = a[live], b[live], c[live], d[live]
    n1, k = a + b, a + c
    total = n1 + c + d
    hyper = scipy.stats.hypergeom

    def pmf(x, j):
        return hyper.pmf(x, total[j], n1[j], k[j])

    every = np.arange(len(a))
    mode = (k + 1) * (n1 + 1) // (total + 2)
    pexact, pmode = pmf(a, every), pmf(mode, every)
    out = np.ones(len(a), dtype=np.float64)  # the observed table is the most likely one: p = 1
    at_mode = np.abs(pexact - pmode) / np.maximum(pexact, pmode) <= 1e-14
    threshold = pexact * _TIE
    # Below the mode: the lower tail up to a, plus the upper tail from the first x past the mode whose
    # probability is at most the observed one's (none when even x = k is more likely).
    j = np.flatnonzero(~at_mode & (a < mode))
    if len(j):
        lower = hyper.cdf(a[j], total[j], n1[j], k[j])
        guess = _search(lambda x, i: -pmf(x, i), -threshold[j], mode[j], k[j], j)
        both = lower + hyper.sf(guess, total[j], n1[j], k[j])
        out[j] = np.where(pmf(k[j], j) > threshold[j], lower, both)
    # At or above it: the mirror image.
    j = np.flatnonzero(~at_mode & (a >= mode))
    if len(j):
        upper = hyper.sf(a[j] - 1, total[j], n1[j], k[j])
        guess = _search(lambda x, i: pmf(x, i), threshold[j], np.zeros(len(j), dtype=np.int64), mode[j], j)
        both = upper + hyper.cdf(guess, total[j], n1[j], k[j])
        out[j] = np.where(pmf(np.zeros(len(j), dtype=np.int64), j) > threshold[j], upper, both)
    p[live] = np.minimum(out, 1.0)
    return p


def _search(f, target: np.ndarray, lo: np.ndarray, hi: np.ndarray, tables: np.ndarray) -> np.ndarray:
    """scipy's _binary_search_for_binom_tst for many tables at once: per table, the x in [lo, hi] with
    f(x) <= target < f(x + 1), f ascending on that range (f(x, tables) evaluates it for those tables)."""
    lo, hi = lo.astype(np.int64).copy(), hi.astype(np.int64).copy()
    found = np.zeros(len(lo), dtype=np.int64)
    done = np.zeros(len(lo), dtype=bool)
    while True:
        active = np.flatnonzero(~done & (lo < hi))
        if not len(active):
            break
        mid = lo[active] + (hi[active] - lo[active]) // 2
        val = f(mid, tables[active])
        lt, gt = val < target[active], val > target[active]
        eq = ~lt & ~gt
        lo[active] = np.where(lt, mid + 1, lo[active])
        hi[active] = np.where(gt, mid - 1, hi[active])
        found[active[eq]] = mid[eq]
        done[active[eq]] = True
    rest = np.flatnonzero(~done)
    if len(rest):
        at = f(lo[rest], tables[rest])
        found[rest] = np.where(at <= target[rest], lo[rest], lo[rest] - 1)
    return found


def chi_square(a, b, c, d) -> np.ndarray:
    """Pearson chi-square p-values (1 degree of freedom, no continuity correction) from the expected counts as
    scipy.stats.chi2_contingency computes them; 1 where a margin is 0."""
    obs = np.stack(_ints(a, b, c, d), axis=-1).astype(np.float64)  # [..., 4]: a, b, c, d
    rows = np.stack([obs[..., 0] + obs[..., 1], obs[..., 2] + obs[..., 3]], axis=-1)
    cols = np.stack([obs[..., 0] + obs[..., 2], obs[..., 1] + obs[..., 3]], axis=-1)
    n = rows.sum(-1)
    p = np.ones(n.shape, dtype=np.float64)
    live = (rows.prod(-1) * cols.prod(-1)) > 0
    if live.any():
        r, k, o, m = rows[live], cols[live], obs[live], n[live]
        expected = np.stack([r[:, 0] * k[:, 0], r[:, 0] * k[:, 1], r[:, 1] * k[:, 0], r[:, 1] * k[:, 1]], -1) / m[:, None]
        stat = ((o - expected) ** 2 / expected).sum(-1)
        p[live] = scipy.stats.chi2.sf(stat, 1)
    return p


def expected_min(a, b, c, d) -> np.ndarray:
    a, b, c, d = (x.astype(np.float64) for x in _ints(a, b, c, d))
    n = a + b + c + d
    return np.minimum.reduce([(a + b) * (a + c), (a + b) * (b + d), (c + d) * (a + c), (c + d) * (b + d)]) / n


def association_test(a, b, c, d) -> tuple[np.ndarray, np.ndarray]:
    """Per table: Fisher exact when any expected cell count is below 5, chi-square otherwise (the p-values and
    "fisher" / "chi2"). Each test runs only on the tables it is chosen for."""
    a, b, c, d = _ints(a, b, c, d)
    fisher = expected_min(a, b, c, d) < 5
    p = np.empty(a.shape, dtype=np.float64)
    p[fisher] = fisher_exact(a[fisher], b[fisher], c[fisher], d[fisher])
    chi = ~fisher
    p[chi] = chi_square(a[chi], b[chi], c[chi], d[chi])
    return p, np.where(fisher, "fisher", "chi2")


def log_odds_ci(a, b, c, d, z: float = Z95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Log odds ratios with Wald intervals, Haldane-Anscombe corrected (+0.5 per cell)."""
    a2, b2, c2, d2 = (x + 0.5 for x in _ints(a, b, c, d))
    lor = np.log(a2 * d2 / (b2 * c2))
    se = np.sqrt(1 / a2 + 1 / b2 + 1 / c2 + 1 / d2)
    return lor, lor - z * se, lor + z * se


def lift(a, b, c, d) -> np.ndarray:
    """P(word | group) / P(word); NaN where the word or the group is empty."""
    a, b, c, d = (x.astype(np.float64) for x in _ints(a, b, c, d))
    n = a + b + c + d
    with np.errstate(invalid="ignore", divide="ignore"):
        pw = (a + c) / n
        out = (a / (a + b)) / pw
    return np.where((pw > 0) & (a + b > 0), out, np.nan)


def npmi(a, b, c, d) -> np.ndarray:
    """Normalized pointwise mutual information in [-1, 1]: -1 where word and group never meet, 1 where every
    image has both."""
    a, b, c, d = (x.astype(np.float64) for x in _ints(a, b, c, d))
    n = a + b + c + d
    with np.errstate(invalid="ignore", divide="ignore"):
        pwg, pw, pg = a / n, (a + c) / n, (a + b) / n
        out = np.log(pwg / (pw * pg)) / -np.log(pwg)
    return np.where(pwg == 0, -1.0, np.where(pwg == 1, 1.0, out))


def min_attainable_p(n_group, n_rest, total) -> np.ndarray:
    """Per table's margins, the smallest p-value association_test can give any table with them (stats.
    min_attainable_p), each distinct margins computed once."""
    margins = np.stack(_ints(n_group, n_rest, total), axis=-1).reshape(-1, 3)
    if not len(margins):
        return np.zeros(np.shape(n_group), dtype=np.float64)
    unique, back = np.unique(margins, axis=0, return_inverse=True)
    g, r, t = unique[:, 0], unique[:, 1], unique[:, 2]
    high, low = np.minimum(t, g), np.maximum(0, t - r)
    ends = []
    for x in (low, high):
        ends.append(association_test(x, g - x, t - x, r - t + x)[0])
    return np.minimum(*ends)[back.reshape(-1)].reshape(np.shape(n_group))
