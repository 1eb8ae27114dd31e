"""How numbers read in every output (report, check, diff): one percent, one ratio, one p-value format.

A missing value (None or NaN) is shown as an en dash everywhere rather than as "nan".
"""

from __future__ import annotations

import math

MISSING = "–"


def missing(v: object) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def percent(v: float | None) -> str:
    """A share: always one decimal, so that 4.8% and 5.0% read apart and a share of 50% reads like 50.3%."""
    return MISSING if missing(v) else f"{v:.1%}"


def change(v: float | None) -> str:
    """A change of share, signed: +2.5%."""
    return MISSING if missing(v) else f"{v:+.1%}"


def ratio(v: float | None) -> str:
    """An odds ratio or a bound of its interval: three significant digits (0.412, 3.5, 117)."""
    return MISSING if missing(v) else f"{v:.3g}"


def q_value(v: float | None) -> str:
    """A p- or q-value in a sentence: two significant digits."""
    return MISSING if missing(v) else f"{v:.2g}"


def p_value(v: float | None) -> str:
    """A p- or q-value in a table column: fixed-point down to 0.001, then scientific, floored at 1e-300."""
    if missing(v):
        return MISSING
    return "<1e-300" if v < 1e-300 else (f"{v:.1e}" if v < 1e-3 else f"{v:.3f}")


def number(v: float | None, digits: int = 2) -> str:
    return MISSING if missing(v) else f"{v:.{digits}f}"


def association(r: dict) -> str:
    """One association as a sentence (check summaries and evidence)."""
    return (f"'{r['word']}' with {r['column']}={r['grp']}: {r['a']} of {r['n_group']} images "
            f"({percent(r['share_group'])}) vs {percent(r['share_rest'])} of the rest, odds ratio "
            f"{ratio(r['odds_ratio'])} (95% CI {ratio(r['odds_ratio_lo'])}-{ratio(r['odds_ratio_hi'])}), "
            f"q={q_value(r['q'])}")
