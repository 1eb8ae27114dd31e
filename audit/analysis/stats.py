"""Association and comparison statistics: pure functions over counts and samples (no I/O, no SQL).

The tests themselves are scipy's; what is kept here is what no library gives: the guards for tables and samples
where a test is undefined (an empty row or column, no variation), the 0.5-corrected log-odds interval, lift and
NPMI, and the choice between Fisher and chi-square.

Word-group association uses the 2x2 table of images:
                 word seen   word not seen
    group            a             b
    rest             c             d
"""

from __future__ import annotations

import math

import numpy as np
import scipy.spatial.distance
import scipy.stats

from audit.analysis import ALTERNATIVES

Z95 = 1.959963984540054


def check_alternative(alternative: str) -> str:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, not {alternative!r}")
    return alternative


def fisher_exact(a: int, b: int, c: int, d: int, alternative: str = "two-sided", mid: bool = False) -> float:
    """Fisher exact p-value. Two-sided: the probability of tables with the same margins that are no more likely
    than the observed one (scipy's, with its relative tolerance for ties of 1e-7). "greater": the probability
    of a table with at least `a` (the word over-represented in the group at least as much as observed); with
    `mid`, Lancaster's mid-p: the observed table's own probability counted half."""
    res = scipy.stats.fisher_exact([[a, b], [c, d]], alternative=check_alternative(alternative))
    p = float(res.pvalue)
    if mid:
        if alternative != "greater":
            raise ValueError("the mid-p is computed for the one-sided test")
        if (a + b) * (c + d) * (a + c) * (b + d):
            p -= 0.5 * float(scipy.stats.hypergeom.pmf(a, a + b + c + d, a + b, a + c))
    return float(min(1.0, p))


def chi_square(a: int, b: int, c: int, d: int, alternative: str = "two-sided") -> float:
    """Pearson chi-square p-value (1 degree of freedom, no continuity correction); 1 when a margin is 0, where
    the test is undefined and scipy refuses. "greater" is the one-sided test of the signed statistic (half the
    two-sided p when a is above its expected count, one minus that half below it)."""
    check_alternative(alternative)
    if (a + b) * (c + d) * (a + c) * (b + d) == 0:
        return 1.0
    p = float(scipy.stats.chi2_contingency([[a, b], [c, d]], correction=False).pvalue)
    if alternative == "two-sided":
        return p
    return p / 2 if a * d > b * c else 1 - p / 2


# One-sided, the chi-square's normal approximation is liberal in the upper tail where a word is rare (its
# distribution is skewed): on null data shaped like bench/power.py's, 1.1-1.4x the nominal rate below p = 0.001,
# and 6.0% of 4,000 null datasets got a flag at FDR 0.05. The mid-p of Fisher's test (Lancaster 1961) gave 4.85%
# (Fisher's plain p 3.25%, and less power). So the one-sided test is the mid-p wherever its distribution has at
# most this many values (cheap to compute), the chi-square only beyond, where the counts are large.
FISHER_SUPPORT = 10_000


def association_test(a: int, b: int, c: int, d: int, alternative: str = "two-sided") -> tuple[float, str]:
    """Two-sided: Fisher exact when any expected cell count is below 5, chi-square otherwise. "greater": Fisher's
    mid-p unless the table's hypergeometric distribution has more than FISHER_SUPPORT values, then chi-square.
    Both rules read the margins only."""
    n = a + b + c + d
    expected = [(a + b) * (a + c) / n, (a + b) * (b + d) / n, (c + d) * (a + c) / n, (c + d) * (b + d) / n]
    if check_alternative(alternative) == "greater":
        if min(a + b, a + c) - max(0, (a + c) - (c + d)) + 1 <= FISHER_SUPPORT or min(expected) < 5:
            return fisher_exact(a, b, c, d, alternative, mid=True), "fisher-mid-p"
        return chi_square(a, b, c, d, alternative), "chi2"
    if min(expected) < 5:
        return fisher_exact(a, b, c, d, alternative), "fisher"
    return chi_square(a, b, c, d, alternative), "chi2"


def bh_qvalues(pvalues) -> np.ndarray:
    """Benjamini-Hochberg q-values (monotone step-up), in the input order."""
    p = np.asarray(pvalues, dtype=np.float64)
    if len(p) == 0:
        return p
    return np.asarray(scipy.stats.false_discovery_control(p, method="bh"), dtype=np.float64)


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
    """Two-sided Mann-Whitney U test: exact for small samples without ties, else the normal approximation with
    tie and continuity correction (scipy's method="auto").

    Returns (p-value, rank-biserial effect in [-1, 1], positive when x tends to exceed y). NaNs are dropped; an
    empty sample gives NaN for both, samples with no variation at all p = 1.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x, y = x[~np.isnan(x)], y[~np.isnan(y)]
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        return float("nan"), float("nan")
    res = scipy.stats.mannwhitneyu(x, y, alternative="two-sided", method="auto")
    effect = 2 * float(res.statistic) / (n1 * n2) - 1
    if np.ptp(np.concatenate([x, y])) == 0:
        return 1.0, effect
    return float(min(1.0, res.pvalue)), effect


def jensen_shannon(p, q) -> float:
    """Jensen-Shannon divergence of two count (or probability) vectors over the same support, in bits:
    0 for identical distributions, 1 for distributions with no outcome in common; NaN when either is empty."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    distance = scipy.spatial.distance.jensenshannon(p, q, base=2)  # the square root of the divergence
    return min(1.0, max(0.0, float(distance) ** 2))


def min_attainable_p(n_group: int, n_rest: int, total: int, alternative: str = "two-sided") -> float:
    """The smallest p-value association_test can give any 2x2 table with these margins (a group of n_group
    images, the rest n_rest, the word seen in `total` of them): the word's images all inside the group, or
    (two-sided only) as few there as the rest allows. Depends on the margins alone, never on where the word
    actually fell."""
    high = min(total, n_group)
    low = max(0, total - n_rest)
    ends = (low, high) if check_alternative(alternative) == "two-sided" else (high,)
    return min(association_test(a, n_group - a, total - a, n_rest - total + a, alternative)[0] for a in ends)


def tarone_bh(pvalues, p_min, fdr: float) -> tuple[np.ndarray, np.ndarray]:
    """Benjamini-Hochberg over the tests that can reach significance at all (Tarone 1990; Gilbert 2005).

    K is the smallest number such that at most K tests have a minimum attainable p-value (p_min) of at most
    fdr / K; those tests are testable, and BH runs over them alone. A test that could not reach fdr / K however
    its data fell cannot be a discovery, so leaving it out of the count costs nothing and raises every other
    test's chance. p_min depends only on a table's margins, which carry no information about association when
    there is none, so the false discovery rate stays at fdr (Gilbert 2005). Returns (q-values, NaN where not
    testable; the testable mask)."""
    p = np.asarray(pvalues, dtype=np.float64)
    floor = np.asarray(p_min, dtype=np.float64)
    m = len(p)
    q = np.full(m, np.nan)
    if m == 0:
        return q, np.zeros(0, dtype=bool)
    ordered = np.sort(floor)
    k = np.arange(1, m + 1)
    # m(K): how many tests have p_min <= fdr / K (1e-12 absorbs the last bit of scipy's arithmetic).
    count = np.searchsorted(ordered, fdr / k * (1 + 1e-12), side="right")
    K = int(k[np.argmax(count <= k)])
    testable = floor <= fdr / K * (1 + 1e-12)
    q[testable] = bh_qvalues(p[testable])
    return q, testable
