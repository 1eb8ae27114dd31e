"""Association and comparison statistics: pure functions over counts and samples (no I/O, no SQL).

Word-group association uses the 2x2 table of images:
                 word seen   word not seen
    group            a             b
    rest             c             d
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054


def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_exact(a: int, b: int, c: int, d: int) -> float:
    """Two-sided Fisher exact p-value: the probability of tables with the same margins that are no more
    likely than the observed one."""
    row1, col1, n = a + b, a + c, a + b + c + d
    lo, hi = max(0, col1 - (n - row1)), min(row1, col1)

    def logp(x: int) -> float:
        return _log_choose(row1, x) + _log_choose(n - row1, col1 - x) - _log_choose(n, col1)

    observed = logp(a)
    total = sum(math.exp(logp(x)) for x in range(lo, hi + 1) if logp(x) <= observed + 1e-7)
    return min(1.0, total)


def chi_square(a: int, b: int, c: int, d: int) -> float:
    """Pearson chi-square p-value (1 degree of freedom, no continuity correction)."""
    n = a + b + c + d
    den = (a + b) * (c + d) * (a + c) * (b + d)
    if den == 0:
        return 1.0
    stat = n * (a * d - b * c) ** 2 / den
    return math.erfc(math.sqrt(stat / 2))


def association_test(a: int, b: int, c: int, d: int) -> tuple[float, str]:
    """Fisher exact when any expected cell count is below 5, chi-square otherwise."""
    n = a + b + c + d
    expected = [(a + b) * (a + c) / n, (a + b) * (b + d) / n, (c + d) * (a + c) / n, (c + d) * (b + d) / n]
    if min(expected) < 5:
        return fisher_exact(a, b, c, d), "fisher"
    return chi_square(a, b, c, d), "chi2"


def bh_qvalues(pvalues) -> np.ndarray:
    """Benjamini-Hochberg q-values (monotone step-up), in the input order."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    ranked = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return out


def log_odds_ci(a: int, b: int, c: int, d: int, z: float = Z95) -> tuple[float, float, float]:
    """Log odds ratio with a Wald interval, Haldane-Anscombe corrected (+0.5 per cell)."""
    a2, b2, c2, d2 = a + 0.5, b + 0.5, c + 0.5, d + 0.5
    lor = math.log(a2 * d2 / (b2 * c2))
    se = math.sqrt(1 / a2 + 1 / b2 + 1 / c2 + 1 / d2)
    return lor, lor - z * se, lor + z * se


def lift(a: int, b: int, c: int, d: int) -> float:
    """P(word | group) / P(word)."""
    n = a + b + c + d
    pw = (a + c) / n
    return (a / (a + b)) / pw if pw > 0 and a + b > 0 else float("nan")


def npmi(a: int, b: int, c: int, d: int) -> float:
    """Normalized pointwise mutual information of word and group, in [-1, 1]; -1 when they never meet."""
    n = a + b + c + d
    pwg = a / n
    if pwg == 0:
        return -1.0
    pw, pg = (a + c) / n, (a + b) / n
    if pwg == 1:
        return 1.0
    return math.log(pwg / (pw * pg)) / -math.log(pwg)


def mann_whitney(x, y) -> tuple[float, float]:
    """Two-sided Mann-Whitney U test by the normal approximation with tie correction.

    Returns (p-value, rank-biserial effect in [-1, 1], positive when x tends to exceed y).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x, y = x[~np.isnan(x)], y[~np.isnan(y)]
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        return float("nan"), float("nan")
    allv = np.concatenate([x, y])
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    i = 0
    tie_term = 0.0
    while i < len(sorted_v):
        j = i
        while j + 1 < len(sorted_v) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        t = j - i + 1
        tie_term += t ** 3 - t
        i = j + 1
    u1 = ranks[:n1].sum() - n1 * (n1 + 1) / 2
    n = n1 + n2
    mu = n1 * n2 / 2
    var = n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1))) if n > 1 else 0.0
    effect = 2 * u1 / (n1 * n2) - 1
    if var <= 0:
        return 1.0, effect
    z = (abs(u1 - mu) - 0.5) / math.sqrt(var)  # continuity-corrected
    return min(1.0, math.erfc(max(z, 0) / math.sqrt(2))), effect


def jensen_shannon(p, q) -> float:
    """Jensen-Shannon divergence of two count (or probability) vectors over the same support, in bits:
    0 for identical distributions, 1 for distributions with no outcome in common."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(x: np.ndarray) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))

    return min(1.0, max(0.0, (kl(p) + kl(q)) / 2))
