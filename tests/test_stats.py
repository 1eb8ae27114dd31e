"""Statistics against values computed by hand (and by the textbook examples they come from)."""

import math

import numpy as np
import pytest

from audit.analysis.stats import (
    association_test,
    bh_qvalues,
    chi_square,
    fisher_exact,
    jensen_shannon,
    lift,
    log_odds_ci,
    mann_whitney,
    npmi,
)


def test_fisher_lady_tasting_tea():
    # Fisher's own example: 3 of 4 cups right; two-sided p = 34/70.
    assert math.isclose(fisher_exact(3, 1, 1, 3), 34 / 70, rel_tol=1e-9)
    # all four right: two-sided p = 2/70
    assert math.isclose(fisher_exact(4, 0, 0, 4), 2 / 70, rel_tol=1e-9)


def test_chi_square_by_hand():
    # a=20 b=30 c=30 d=20: stat = 100 * (400 - 900)^2 / (50*50*50*50) = 4.0; p = erfc(sqrt(2))
    assert math.isclose(chi_square(20, 30, 30, 20), math.erfc(math.sqrt(2.0)), rel_tol=1e-12)
    assert chi_square(0, 0, 5, 5) == 1.0


def test_test_choice_follows_expected_counts():
    assert association_test(3, 1, 1, 3)[1] == "fisher"
    assert association_test(20, 30, 30, 20)[1] == "chi2"


def test_benjamini_hochberg_by_hand():
    p = [0.01, 0.04, 0.03, 0.20]
    # sorted 0.01 0.03 0.04 0.20 -> 0.04, 0.06, 0.0533, 0.20 -> monotone from the top: 0.04, .0533, .0533, .2
    q = bh_qvalues(p)
    assert np.allclose(q, [0.04, 0.16 / 3, 0.16 / 3, 0.20])
    assert bh_qvalues([]).size == 0
    assert np.allclose(bh_qvalues([0.5, 0.9]), [0.9, 0.9])


def test_effect_sizes_by_hand():
    lor, lo, hi = log_odds_ci(10, 0, 0, 10)
    assert math.isclose(lor, math.log(10.5 * 10.5 / 0.25))
    se = math.sqrt(2 / 10.5 + 2 / 0.5)
    assert math.isclose(lo, lor - 1.959963984540054 * se) and math.isclose(hi, lor + 1.959963984540054 * se)
    # 8 of 10 group images show the word, 2 of 10 others: P(w|g)=0.8, P(w)=0.5
    assert math.isclose(lift(8, 2, 2, 8), 1.6)
    assert math.isclose(npmi(8, 2, 2, 8), math.log(0.4 / 0.25) / -math.log(0.4))
    assert npmi(0, 10, 5, 5) == -1.0


def test_conservative_effect_prefers_evidence():
    """A word in 3 of 3 images cannot outrank one in 300 of 400 with the lower bound."""
    small = log_odds_ci(3, 0, 10, 90)[1]
    large = log_odds_ci(300, 100, 100, 900)[1]
    assert large > small


def test_mann_whitney():
    p, effect = mann_whitney([1, 2, 3], [4, 5, 6])
    assert effect == -1.0
    # Small samples without ties get the exact p: U = 0 is the most extreme of the C(6, 3) = 20 equally likely
    # rankings, on each side, so p = 2/20 (the normal approximation would say 0.081).
    assert math.isclose(p, 0.1)
    p2, e2 = mann_whitney([1, 1, 2], [1, 1, 2])
    assert e2 == 0.0 and p2 == pytest.approx(1.0)
    assert math.isnan(mann_whitney([], [1.0])[0])
    assert mann_whitney([3, 3], [3, 3, 3]) == (1.0, 0.0)  # no variation at all: nothing to test


def test_mann_whitney_with_ties_is_the_corrected_normal_approximation():
    x, y = [1, 2, 2, 3, 5, 5, 6, 7, 8, 9], [2, 3, 4, 4, 4, 6, 10, 11, 12, 12]
    p, effect = mann_whitney(x, y)
    # Ranks by hand: U1 = R1 - n1 (n1 + 1) / 2; the variance with the tie correction; z with continuity 0.5.
    allv = sorted(x + y)
    rank = {v: (allv.index(v) + 1 + len(allv) - allv[::-1].index(v)) / 2 for v in set(allv)}
    u1 = sum(rank[v] for v in x) - 10 * 11 / 2
    ties = sum(allv.count(v) ** 3 - allv.count(v) for v in set(allv))
    var = 10 * 10 / 12 * (21 - ties / (20 * 19))
    z = (abs(u1 - 50) - 0.5) / math.sqrt(var)
    assert math.isclose(p, math.erfc(z / math.sqrt(2)), rel_tol=1e-9)
    assert math.isclose(effect, 2 * u1 / 100 - 1)


def test_tests_agree_with_scipy_on_random_tables_and_samples():
    """Random 2x2 tables (zero cells included) and samples: each test is scipy's, and the guards hold where
    scipy would refuse or return NaN."""
    import numpy as np
    import scipy.spatial.distance
    import scipy.stats

    rs = np.random.RandomState(0)
    for _ in range(300):
        a, b, c, d = (int(v) for v in rs.randint(0, 40, 4) * (rs.rand(4) > 0.15))
        assert math.isclose(fisher_exact(a, b, c, d), min(1.0, scipy.stats.fisher_exact([[a, b], [c, d]]).pvalue),
                            rel_tol=1e-9)
        if min(a + b, c + d, a + c, b + d) == 0:
            assert chi_square(a, b, c, d) == 1.0
        else:
            want = scipy.stats.chi2_contingency([[a, b], [c, d]], correction=False).pvalue
            assert math.isclose(chi_square(a, b, c, d), want, rel_tol=1e-9, abs_tol=1e-300)
    for _ in range(100):
        x = rs.randint(0, 6, rs.randint(1, 30)).astype(float)
        y = rs.randint(0, 6, rs.randint(1, 30)).astype(float)
        p, effect = mann_whitney(x, y)
        res = scipy.stats.mannwhitneyu(x, y, alternative="two-sided", method="auto")
        if np.ptp(np.concatenate([x, y])) > 0:
            assert math.isclose(p, min(1.0, res.pvalue), rel_tol=1e-9)
        assert math.isclose(effect, 2 * res.statistic / (len(x) * len(y)) - 1)
        counts_p, counts_q = rs.randint(0, 5, 12), rs.randint(0, 5, 12)
        if counts_p.sum() and counts_q.sum():
            want = scipy.spatial.distance.jensenshannon(counts_p, counts_q, base=2) ** 2
            assert math.isclose(jensen_shannon(counts_p, counts_q), want, rel_tol=1e-9, abs_tol=1e-12)
    pvalues = rs.rand(200) ** 3
    assert np.allclose(bh_qvalues(pvalues), scipy.stats.false_discovery_control(pvalues, method="bh"))


def test_fisher_ties_with_asymmetric_margins():
    """Tables as likely as the observed one count toward the two-sided p, also when the margins are not
    symmetric and the two log-probabilities differ in the last bits."""
    # (0, 2, 4, 2): rows 2/6, column 4 of 8. P(x) = C(2,x) C(6,4-x) / C(8,4): 15, 40, 15 of 70 for x = 0, 1, 2;
    # x = 0 and x = 2 tie, so p = 30/70.
    assert math.isclose(fisher_exact(0, 2, 4, 2), 30 / 70, rel_tol=1e-9)
    assert math.isclose(fisher_exact(2, 0, 2, 4), 30 / 70, rel_tol=1e-9)
    assert math.isclose(fisher_exact(1, 1, 3, 3), 1.0, rel_tol=1e-9)


def test_fisher_matches_scipy_on_every_small_table():
    from scipy.stats import fisher_exact as scipy_fisher

    cells = range(8)
    for a in cells:
        for b in cells:
            for c in cells:
                for d in cells:
                    if a + b == 0 or c + d == 0 or a + c == 0 or b + d == 0:
                        continue
                    want = scipy_fisher([[a, b], [c, d]]).pvalue
                    assert math.isclose(fisher_exact(a, b, c, d), want, rel_tol=1e-6), (a, b, c, d)
