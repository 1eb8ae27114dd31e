"""Mann-Whitney tests of every group against the rest of the images, for many words at once.

Where CLIP looks (a heatmap statistic per word) and how strongly a probe word matches (its cosine) are compared
per (group, word): the group's values against everyone else's. A thousand groups times a thousand words is a
million such tests; one scipy call each took hours, and scipy's exact distribution for a group of 8 against a
rest of 50,000 alone takes minutes. Here every test of a word shares one ranking of its values:
- the rank sum of a group is a sum over that ranking, and the rest's is what remains (U1 + U2 = n1 n2);
- the tie correction depends on the word's values only (group and rest together are all of them);
- the medians of a group and of its rest are read from the same sorted values (the rest's middle is found
  by counting the group's values below it, never by building the rest);
- the exact null distribution that scipy uses for small samples without ties (at most 8 on one side) is the
  Gaussian binomial coefficient, computed here from partition counts shared by every test with the same small
  sample size.
Each gives what stats.mann_whitney (one scipy call per test, kept as the readable reference the tests compare
with) gives: scipy's method="auto", two-sided, with its continuity and tie corrections.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import scipy.special

EXACT_MAX = 8  # scipy's rule: exact when either sample has at most 8 values and no value repeats


@dataclass
class RankTests:
    """One entry per (word, group) cell with at least one value: codes, sizes, test and summaries."""

    word: np.ndarray  # word code
    group: np.ndarray  # group code
    n_group: np.ndarray
    n_rest: np.ndarray
    p: np.ndarray  # two-sided; NaN where the rest is empty
    effect: np.ndarray  # rank-biserial, positive when the group's values tend to be larger
    median_group: np.ndarray
    median_rest: np.ndarray  # NaN where the rest is empty
    mean_group: np.ndarray
    sd_group: np.ndarray  # sample standard deviation (ddof 1); NaN for a single value
    mean_rest: np.ndarray


def group_vs_rest(word, group, values, n_words: int, n_groups: int) -> RankTests:
    """The tests for values labelled by word code (0..n_words-1) and group code (0..n_groups-1); NaN values are
    left out. Cells are ordered by word, then group."""
    word = np.asarray(word, dtype=np.int64)
    group = np.asarray(group, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(values)
    word, group, values = word[keep], group[keep], values[keep]
    # Sorted by word, then value: each word's values are one run, in order.
    order = np.lexsort((values, word))
    w, v, g = word[order], values[order], group[order]
    n = len(v)
    per_word = np.bincount(w, minlength=n_words)
    start = np.concatenate([[0], np.cumsum(per_word)])[:-1]
    pos = np.arange(n) - start[w]  # 0-based position within the word's sorted values
    # Average ranks of ties, and each word's tie term sum(t^3 - t).
    new_run = np.ones(n, dtype=bool)
    new_run[1:] = (w[1:] != w[:-1]) | (v[1:] != v[:-1])
    run = np.cumsum(new_run) - 1
    run_len = np.bincount(run)
    run_first = pos[new_run]
    rank = (run_first + (run_len - 1) / 2.0)[run] + 1.0
    tie_term = np.bincount(w[new_run], weights=run_len.astype(np.float64) ** 3 - run_len, minlength=n_words)
    ties = np.bincount(w[new_run], weights=run_len > 1, minlength=n_words) > 0
    flat = np.bincount(w[new_run], minlength=n_words) == 1  # every value of the word the same

    cell = w * n_groups + g
    present, idx = np.unique(cell, return_inverse=True)  # the cells with values; each value's cell
    cw, cg = present // n_groups, present % n_groups
    n1 = np.bincount(idx, minlength=len(present)).astype(np.float64)
    big_n = per_word[cw].astype(np.float64)
    n2 = big_n - n1
    r1 = np.bincount(idx, weights=rank, minlength=len(present))
    u1 = r1 - n1 * (n1 + 1) / 2
    u2 = n1 * n2 - u1
    with np.errstate(divide="ignore", invalid="ignore"):
        effect = np.where(n2 > 0, 2 * u1 / (n1 * n2) - 1, np.nan)
        mu = n1 * n2 / 2
        s = np.sqrt(n1 * n2 / 12 * ((big_n + 1) - tie_term[cw] / (big_n * (big_n - 1))))
        z = (np.maximum(u1, u2) - mu - 0.5) / s
        p = np.clip(2 * scipy.special.ndtr(-z), 0.0, 1.0)
    exact = (n2 > 0) & ((n1 <= EXACT_MAX) | (n2 <= EXACT_MAX)) & ~ties[cw]
    if exact.any():
        m, big = np.minimum(n1[exact], n2[exact]), np.maximum(n1[exact], n2[exact])
        p[exact] = np.minimum(1.0, 2 * exact_cdf(np.minimum(u1[exact], u2[exact]), m, big))
    p = np.where(flat[cw], 1.0, p)
    p = np.where(n2 > 0, p, np.nan)

    # Medians: a cell's sorted positions within its word, in order.
    by_cell = np.lexsort((pos, idx))
    cell_pos = pos[by_cell]
    cell_start = np.concatenate([[0], np.cumsum(n1.astype(np.int64))])
    n1i, n2i = n1.astype(np.int64), n2.astype(np.int64)
    base = start[cw]

    def at(k):  # the value at sorted position k of the cell's word
        return v[base + k]

    median_group = (at(cell_pos[cell_start[:-1] + (n1i - 1) // 2]) + at(cell_pos[cell_start[:-1] + n1i // 2])) / 2
    # The j-th smallest of the rest sits at position j + (how many of the group's values come before it), and the
    # group's t-th value has pos - t of the rest's values before it: count those keys that are <= j.
    within = np.arange(len(cell_pos)) - np.repeat(cell_start[:-1], n1i)
    key = (cell_pos - within) + np.repeat(np.arange(len(present)), n1i) * (n + 1)
    median_rest = np.full(len(present), np.nan)
    has_rest = n2i > 0
    halves = []
    for j in ((n2i - 1) // 2, n2i // 2):
        before = np.searchsorted(key, np.arange(len(present)) * (n + 1) + j, side="right") - cell_start[:-1]
        halves.append(at(np.where(has_rest, j + before, 0)))
    median_rest[has_rest] = ((halves[0] + halves[1]) / 2)[has_rest]

    total = np.bincount(w, weights=v, minlength=n_words)
    sums = np.bincount(idx, weights=v, minlength=len(present))
    mean_group = sums / n1
    dev = np.bincount(idx, weights=(v - mean_group[idx]) ** 2, minlength=len(present))
    with np.errstate(divide="ignore", invalid="ignore"):
        sd_group = np.where(n1 > 1, np.sqrt(dev / (n1 - 1)), np.nan)
        mean_rest = np.where(n2 > 0, (total[cw] - sums) / n2, np.nan)
    return RankTests(cw, cg, n1i, n2i, p, effect, median_group, median_rest, mean_group, sd_group, mean_rest)


def exact_cdf(u, m, n) -> np.ndarray:
    """P(U <= u) for the Mann-Whitney U of samples of sizes m (at most EXACT_MAX) and n without ties.

    The number of orderings with U = k is the coefficient of q^k in the Gaussian binomial coefficient
    prod_{i=1..m} (1 - q^(n+i)) / (1 - q^i). The denominator's coefficients count the partitions of k into at most
    m parts, shared by every test with this m whatever n is; each numerator term shifts them. Counts are kept
    as floats (relative error about 1e-13 at the sizes of a scan, far below any decision)."""
    u = np.floor(np.asarray(u, dtype=np.float64) + 1e-9).astype(np.int64)
    m = np.asarray(m, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    out = np.empty(len(u), dtype=np.float64)
    if not len(u):
        return out
    if m.max() > EXACT_MAX:
        raise ValueError(f"the exact distribution is for samples of at most {EXACT_MAX}")
    top = int(u.max())
    parts = np.zeros(top + 1)
    parts[0] = 1.0  # at most 0 parts: only the empty partition of 0
    for size in range(1, int(m.max()) + 1):
        # at most `size` parts: add any number of columns of height `size` (a cumulative sum with stride size).
        padded = np.zeros(-(-(top + 1) // size) * size)
        padded[:top + 1] = parts
        parts = np.cumsum(padded.reshape(-1, size), axis=0).reshape(-1)[:top + 1]
        mine = np.flatnonzero(m == size)
        if not len(mine):
            continue
        cumulative = np.cumsum(parts)
        count = np.zeros(len(mine))
        for k in range(size + 1):
            for chosen in combinations(range(1, size + 1), k):
                shift = k * n[mine] + sum(chosen)
                left = u[mine] - shift
                term = np.where(left >= 0, cumulative[np.maximum(left, 0)], 0.0)
                count += term if k % 2 == 0 else -term
        out[mine] = count / scipy.special.comb(n[mine] + size, size)
    return np.clip(out, 0.0, 1.0)
