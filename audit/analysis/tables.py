"""The statistics of many 2x2 tables at once: arrays in, arrays out, at numpy speed.

Word-group association uses the 2x2 table of images, one per (group, word):
                 word seen   word not seen
    group            a             b
    rest             c             d

A scan grouped by a column of a thousand values holds millions of such tables; one scipy call per table took
minutes. Here every test is computed over all tables together with scipy's array-aware distributions, and each
gives what stats.py's per-table functions give (those stay as the readable reference the tests compare with):
- Fisher's two-sided p is scipy's definition (the tables no more likely than the observed one), its one-sided
  ("greater") p the probability of a table with at least the observed `a`, with the tables that share margins
  sharing one hypergeometric distribution;
- chi-square is Pearson's without continuity correction, from the expected counts as scipy computes them, and
  its one-sided p half the two-sided one in the direction of over-representation (used one-sided only for
  tables too large for the mid-p: see stats.FISHER_SUPPORT);
- the minimum attainable p-value (Tarone) is computed once per distinct margins, which repeat across words.

`alternative` is "greater" (the word over-represented in the group: the hypothesis a flag states) or "two-sided".
"""

from __future__ import annotations

import numpy as np
import scipy.stats

from audit.analysis.stats import FISHER_SUPPORT, Z95, check_alternative


def _ints(*arrays) -> list[np.ndarray]:
    return [np.asarray(x, dtype=np.int64) for x in arrays]


def fisher_exact(a, b, c, d, alternative: str = "two-sided", mid: bool = False) -> np.ndarray:
    """Fisher exact p-values, as scipy.stats.fisher_exact defines them: given the table's margins, the
    probability of the tables no more likely than the observed one (two-sided), or of the tables with at least
    the observed `a` ("greater"; with `mid`, the observed table's own probability counted half: the mid-p).

    scipy evaluates Boost's hypergeometric functions some twenty times a table, at about 0.1 ms each for a
    dataset of 50,000 images: minutes for the millions of tables of a thousand groups. Here the tables that share
    margins (a group's size and a word's count repeat across words and groups) share one distribution, computed
    once over its whole support by the ratio of consecutive probabilities (accurate to about 1e-13 relative,
    1e-11 over supports of thousands of values),
    and each table's p-value is a masked sum over it. Ties count as "no more likely" within TIE, a tolerance
    above that accuracy and far below the gap between two different probabilities of one distribution."""
    greater = check_alternative(alternative) == "greater"
    if mid and not greater:
        raise ValueError("the mid-p is computed for the one-sided test")
    a, b, c, d = _ints(a, b, c, d)
    p = np.ones(a.shape, dtype=np.float64)
    # A table with an empty row or column says nothing: p = 1 (scipy's rule).
    live = (a + b > 0) & (c + d > 0) & (a + c > 0) & (b + d > 0)
    if not live.any():
        return p
    obs, margins = a[live], np.stack([(a + b)[live], (c + d)[live], (a + c)[live]], axis=1)
    unique, owner = _unique_rows(margins)
    n1, n2, k = unique[:, 0], unique[:, 1], unique[:, 2]
    lo, hi = np.maximum(0, k - n2), np.minimum(k, n1)
    out = np.empty(len(obs), dtype=np.float64)
    # Distributions of similar support length together, and tables in blocks, to bound the padded arrays.
    by_length = np.argsort(hi - lo, kind="stable")
    rank = np.empty_like(by_length)
    rank[by_length] = np.arange(len(by_length))
    tables_in_order = np.argsort(rank[owner], kind="stable")
    first_table = np.searchsorted(rank[owner][tables_in_order], np.arange(len(by_length) + 1))
    start = 0
    while start < len(by_length):
        stop = start + 1
        while stop < len(by_length) and (stop - start + 1) * (int(hi[by_length[stop]] - lo[by_length[stop]]) + 1) \
                <= _BLOCK:
            stop += 1
        rows = by_length[start:stop]
        pmf = _pmf(n1[rows], n2[rows], k[rows], lo[rows], hi[rows])  # [R, L]
        per_block = max(1, _BLOCK // pmf.shape[1])
        for t0 in range(first_table[start], first_table[stop], per_block):
            t = tables_in_order[t0:min(t0 + per_block, first_table[stop])]
            row = rank[owner[t]] - start
            dist = pmf[row]  # [T, L]
            at = obs[t] - lo[owner[t]]
            if greater:
                j = np.arange(dist.shape[1])[None, :]
                weight = np.where(j > at[:, None], 1.0, np.where(j == at[:, None], 0.5 if mid else 1.0, 0.0))
                out[t] = (dist * weight).sum(1)
            else:
                seen = dist[np.arange(len(t)), at]
                out[t] = np.where(dist <= seen[:, None] * TIE, dist, 0.0).sum(1)
        start = stop
    p[live] = np.minimum(out, 1.0)
    return p


def _unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(rows, axis=0, return_inverse=True) for rows of three non-negative counts, as one integer key per
    row where the counts fit (sorting a million keys is far faster than sorting rows; same order, same result)."""
    span = rows.max(axis=0) + 1
    if float(span[0]) * float(span[1]) * float(span[2]) >= 2.0 ** 62:
        unique, inverse = np.unique(rows, axis=0, return_inverse=True)
        return unique, inverse.reshape(-1)
    keys, inverse = np.unique((rows[:, 0] * span[1] + rows[:, 1]) * span[2] + rows[:, 2], return_inverse=True)
    unique = np.stack([keys // (span[1] * span[2]), keys // span[2] % span[1], keys % span[2]], axis=1)
    return unique, inverse.reshape(-1)


TIE = 1 + 1e-9
_BLOCK = 1 << 21  # entries of a padded [rows, support] array


def _pmf(n1, n2, k, lo, hi) -> np.ndarray:
    """Hypergeometric probabilities [R, L] of x = lo + j white balls in a draw of n1 from an urn of n1 + n2 with
    k white, for each row's margins (0 past its support): logs of consecutive ratios, summed, normalised."""
    length = int((hi - lo).max()) + 1
    j = np.arange(length)
    x = lo[:, None] + j[None, :-1]  # the step from x to x + 1
    inside = x < hi[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        step = (np.log(np.where(inside, k[:, None] - x, 1)) + np.log(np.where(inside, n1[:, None] - x, 1))
                - np.log(np.where(inside, x + 1, 1)) - np.log(np.where(inside, n2[:, None] - k[:, None] + x + 1, 1)))
    logw = np.concatenate([np.zeros((len(lo), 1)), np.cumsum(step, axis=1)], axis=1)
    logw[(lo[:, None] + j[None, :]) > hi[:, None]] = -np.inf
    w = np.exp(logw - logw.max(1, keepdims=True))
    return w / w.sum(1, keepdims=True)


def chi_square(a, b, c, d, alternative: str = "two-sided") -> np.ndarray:
    """Pearson chi-square p-values (1 degree of freedom, no continuity correction) from the expected counts as
    scipy.stats.chi2_contingency computes them; 1 where a margin is 0. "greater": half the two-sided p where a is
    above its expected count, one minus that half where it is not."""
    greater = check_alternative(alternative) == "greater"
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
        two = scipy.stats.chi2.sf(stat, 1)
        if greater:
            two = np.where(o[:, 0] * o[:, 3] > o[:, 1] * o[:, 2], two / 2, 1 - two / 2)
        p[live] = two
    return p


def expected_min(a, b, c, d) -> np.ndarray:
    a, b, c, d = (x.astype(np.float64) for x in _ints(a, b, c, d))
    n = a + b + c + d
    return np.minimum.reduce([(a + b) * (a + c), (a + b) * (b + d), (c + d) * (a + c), (c + d) * (b + d)]) / n


def association_test(a, b, c, d, alternative: str = "two-sided") -> tuple[np.ndarray, np.ndarray]:
    """Per table, the test stats.association_test chooses from the margins (two-sided: Fisher exact when any
    expected cell count is below 5, chi-square otherwise; "greater": Fisher's mid-p up to FISHER_SUPPORT values,
    chi-square beyond): the p-values and the tests' names. Each test runs only on the tables it is chosen for."""
    a, b, c, d = _ints(a, b, c, d)
    fisher = expected_min(a, b, c, d) < 5
    greater = check_alternative(alternative) == "greater"
    if greater:  # stats.FISHER_SUPPORT: the mid-p wherever its distribution is small enough to sum
        support = np.minimum(a + b, a + c) - np.maximum(0, (a + c) - (c + d)) + 1
        fisher |= support <= FISHER_SUPPORT
    p = np.empty(a.shape, dtype=np.float64)
    p[fisher] = fisher_exact(a[fisher], b[fisher], c[fisher], d[fisher], alternative, mid=greater)
    chi = ~fisher
    p[chi] = chi_square(a[chi], b[chi], c[chi], d[chi], alternative)
    return p, np.where(fisher, "fisher-mid-p" if greater else "fisher", "chi2")


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


def min_attainable_p(n_group, n_rest, total, alternative: str = "two-sided") -> np.ndarray:
    """Per table's margins, the smallest p-value association_test can give any table with them (stats.
    min_attainable_p), each distinct margins computed once. One-sided, only the word's images all in the group
    can reach it: which test applies depends on the margins alone, and each test's p falls as `a` grows."""
    margins = np.stack(_ints(n_group, n_rest, total), axis=-1).reshape(-1, 3)
    if not len(margins):
        return np.zeros(np.shape(n_group), dtype=np.float64)
    unique, back = _unique_rows(margins)
    g, r, t = unique[:, 0], unique[:, 1], unique[:, 2]
    high, low = np.minimum(t, g), np.maximum(0, t - r)
    ends = []
    for x in (low, high) if check_alternative(alternative) == "two-sided" else (high,):
        ends.append(association_test(x, g - x, t - x, r - t + x, alternative)[0])
    return np.minimum.reduce(ends)[back].reshape(np.shape(n_group))
