"""What `audit verify`'s rows say: faithfulness per relevancy method and kind of word, and a verdict per finding.

- Faithfulness: per image, the mean over its words of the deletion and insertion areas; then per (method, kind)
  the mean over images with a 95% interval (Student's t). A faithful map has a lower deletion area and a higher
  insertion area than the random orders (method 'random').
- Grounding: per finding and image, how much better than as many random cells the word's own cells (the top
  half of its relevance) carry it, on two sides, each blanking's fall counted as fall(x) = max(x, 0) (a blanking
  that raises the cosine is no evidence either way):
    needed = fall(drop_own) - fall(drop_random)            (blanking its cells costs more than random ones)
    enough = fall(drop_keep_random) - fall(drop_complement) (keeping only its cells keeps more than random ones)
  and d = needed + enough. The effect is the mean of d with a 95% interval, p is Wilcoxon's signed-rank test that
  d tends to be positive (one-sided, exact for small samples), q its Benjamini-Hochberg value over the findings.
  A finding is `grounded` when q < fdr and the effect is positive: the word's own cells carry it. Otherwise
  `not localised`: the word is read from the whole image or its context, a different finding.
  Why two sides: deletion alone misses evidence spread over the image (the demo's grass background survives
  losing any half of its cells; measured, its own cells' fall -0.010 against random's -0.012), and keeping alone
  misses a word read from one part that needs the rest as context; RISE's deletion and insertion ask the same
  pair of questions of a whole ranking. Under no grounding the own and random cells are exchangeable, so d is
  symmetric about 0 and the test keeps its level. Rows written before the second side was measured (no
  drop_keep_random) count it as 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

from audit.analysis import FDR
from audit.analysis.stats import bh_qvalues

GROUNDED = "grounded"
NOT_LOCALISED = "not localised"


def _interval(values: np.ndarray) -> tuple[float, float, float]:
    values = values[~np.isnan(values)]
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(values.mean())
    if n < 2:
        return mean, float("nan"), float("nan")
    half = float(sps.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n))
    return mean, mean - half, mean + half


def _faithfulness_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The faithfulness rows with a word (an image verified without any word is marked by a row with none)."""
    return rows[(rows.part == "faithfulness") & (rows.word != "")]


def faithfulness_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, kind): images, deletion and insertion areas (mean, 95% interval)."""
    rows = _faithfulness_rows(rows)
    out = []
    per_image = rows.groupby(["method", "kind", "image_id"], sort=True)[["deletion", "insertion"]].mean()
    for (method, kind), g in per_image.groupby(level=["method", "kind"], sort=True):
        d, d_lo, d_hi = _interval(g.deletion.to_numpy(dtype=float))
        i, i_lo, i_hi = _interval(g.insertion.to_numpy(dtype=float))
        out.append({"method": method, "kind": kind, "images": len(g), "deletion": d, "deletion_lo": d_lo,
                    "deletion_hi": d_hi, "insertion": i, "insertion_lo": i_lo, "insertion_hi": i_hi})
    columns = ["method", "kind", "images", "deletion", "deletion_lo", "deletion_hi", "insertion", "insertion_lo",
               "insertion_hi"]
    return pd.DataFrame(out, columns=columns)


def _fall(drops: pd.Series) -> np.ndarray:
    return np.clip(drops.to_numpy(dtype=float), 0, None)  # NaN stays NaN


def grounding_summary(rows: pd.DataFrame, fdr: float = FDR) -> pd.DataFrame:
    """One row per finding (column, kind, group, word): its images, mean drops, the paired effect with its
    interval, p, q and the verdict."""
    rows = rows[rows.part == "grounding"]
    out = []
    for (column, kind, grp, word), g in rows.groupby(["column", "kind", "grp", "word"], sort=True):
        needed = _fall(g.drop_own) - _fall(g.drop_random)
        enough = np.nan_to_num(_fall(g.drop_keep_random) - _fall(g.drop_complement)) \
            if "drop_keep_random" in g else np.zeros(len(g))
        d = needed + enough
        effect, lo, hi = _interval(d)
        p = float(sps.wilcoxon(d, alternative="greater").pvalue) if len(d) >= 2 and np.any(d != 0) else 1.0
        out.append({"column": column, "kind": kind, "grp": grp, "word": word, "images": len(g),
                    "method": g.method.iloc[0], "drop_own": float(g.drop_own.mean()),
                    "drop_random": float(g.drop_random.mean()), "drop_complement": float(g.drop_complement.mean()),
                    "needed": float(needed.mean()), "enough": float(enough.mean()),
                    "drop_box": float(g.drop_box.mean()), "drop_outside_box": float(g.drop_outside_box.mean()),
                    "effect": effect, "effect_lo": lo, "effect_hi": hi, "p": p})
    table = pd.DataFrame(out, columns=["column", "kind", "grp", "word", "images", "method", "drop_own", "drop_random",
                                       "drop_complement", "needed", "enough", "drop_box", "drop_outside_box", "effect", "effect_lo",
                                       "effect_hi", "p"])
    table["q"] = bh_qvalues(table.p.to_numpy()) if len(table) else []
    falls = (table.q < fdr) & (table.effect > 0)
    table["verdict"] = np.where(falls, GROUNDED, NOT_LOCALISED)
    return table


def mean_curves(rows: pd.DataFrame) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """The mean deletion and insertion curves per (method, kind), over images (each image's words averaged
    first, as the areas are)."""
    rows = _faithfulness_rows(rows)
    out = {}
    for (method, kind), g in rows.groupby(["method", "kind"], sort=True):
        per_image = {}
        for name in ("deletion_curve", "insertion_curve"):
            curves = np.stack(g[name].map(np.asarray).to_numpy())
            frame = pd.DataFrame(curves).groupby(g.image_id.to_numpy()).mean()
            per_image[name.removesuffix("_curve")] = frame.mean().to_numpy()
        out[method, kind] = per_image
    return out
