"""Power of the association tests at a fixed false discovery rate, before and after the word filters and the
Tarone-BH correction, on weak planted biases and on datasets without any.

A pool of demo scenes (one object each; the 5 backgrounds equally often) is scanned once with audit-demo, with
both opinions (ascent at the demo's settings, and concepts). Every generated dataset then draws 300 of the
pool's images into three groups of unequal size (60, 100, 140) and stores their rows as a scan of its own:
 - planted: one group (drawn at random) shows one background (drawn at random) in 35-40% of its images, the
   other groups in 15-20%; power is the share of these datasets where (that group, that background word) is
   flagged;
 - null: groups drawn at random, so no word is associated with any group; every flag is false, and the share
   of null datasets with any flag is the false discovery rate itself (all hypotheses are null there).
Each dataset is tested four ways, for ascent words and for concepts, all at FDR 0.05 and min_count 5:
 - no filters, BH over every pair, two-sided (audit 0.1's report);
 - filters, Tarone-BH, two-sided (audit 0.2's: a flag also needs the odds ratio's lower 95% bound above 1);
 - filters, BH over every pair, one-sided;
 - filters, Tarone-BH, one-sided (the default now: each pair tests whether the word is over-represented in the
   group, the claim a flag makes).

    .venv/bin/python bench/power.py [--pool 500] [--datasets 100]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

import audit
from audit.analysis import FDR, MIN_COUNT
from audit.analysis.associations import associations, word_filter
from audit.demo import DEMO_SETTINGS
from audit.demo.scenes import BACKGROUNDS, make_scene
from audit.store.query import ScanQuery, WordFilter
from audit.store.writer import ScanWriter

SIZES = (60, 100, 140)
POOL_SEED = 700_000_000  # scenes from seeds no training or evaluation uses
WAYS = {"no filters, BH, two-sided": (False, "bh", "two-sided"),
        "filters, Tarone-BH, two-sided": (True, "tarone-bh", "two-sided"),
        "filters, BH, one-sided": (True, "bh", "greater"),
        "filters, Tarone-BH, one-sided": (True, "tarone-bh", "greater")}


def make_pool(root: Path, n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """n scenes, backgrounds in turn, scanned with both opinions: (images with their background, tokens)."""
    folder = root / "pool"
    folder.mkdir(parents=True)
    rows = []
    for i in range(n):
        bg = BACKGROUNDS[i % len(BACKGROUNDS)]
        make_scene(POOL_SEED + i, size=128, n_objects=1, background=bg).image.save(folder / f"{i:05d}.png")
        rows.append((f"{i:05d}.png", bg))
    scan = audit.scan(folder, root / "pool-scan", model="audit-demo", opinion="both", workers=0, device="cpu",
                      quiet=True, **DEMO_SETTINGS)
    return pd.DataFrame(rows, columns=["image_id", "background"]), scan.tokens()


def draw(images: pd.DataFrame, rs: np.random.RandomState, planted: bool) -> tuple[pd.DataFrame, tuple | None]:
    """300 images in three groups; planted: (group, background) with its rates."""
    if not planted:
        picked = images.sample(sum(SIZES), random_state=rs).reset_index(drop=True)
        picked["label"] = np.repeat([f"g{k}" for k in range(len(SIZES))], SIZES)
        return picked, None
    target = BACKGROUNDS[rs.randint(len(BACKGROUNDS))]
    g = rs.randint(len(SIZES))
    high, low = rs.uniform(0.35, 0.40), rs.uniform(0.15, 0.20)
    on = images[images.background == target].sample(frac=1, random_state=rs)
    off = images[images.background != target].sample(frac=1, random_state=rs)
    parts, used_on, used_off = [], 0, 0
    for k, n in enumerate(SIZES):
        m = int(round((high if k == g else low) * n))
        parts.append(pd.concat([on.iloc[used_on:used_on + m], off.iloc[used_off:used_off + n - m]]).assign(label=f"g{k}"))
        used_on, used_off = used_on + m, used_off + n - m
    return pd.concat(parts, ignore_index=True), (f"g{g}", target)


def write(root: Path, picked: pd.DataFrame, tokens: pd.DataFrame) -> Path:
    writer = ScanWriter.open(root, {"model": "pool"}, {"kind": "bench"})
    try:
        n = len(picked)
        images = {"image_id": picked.image_id, "path": picked.image_id, "label": picked.label,
                  "width": [128] * n, "height": [128] * n}
        rows = tokens[tokens.image_id.isin(set(picked.image_id))]
        writer.write_unit({"images": pa.table(images), "tokens": pa.Table.from_pandas(rows, preserve_index=False)})
    finally:
        writer.close()
    return root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", type=int, default=500)
    ap.add_argument("--datasets", type=int, default=100, help="planted datasets, and as many null ones")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rs = np.random.RandomState(args.seed)
    on_filters = word_filter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        images, tokens = make_pool(tmp, args.pool)
        print(f"pool: {args.pool} scenes scanned in {time.perf_counter() - t0:.0f} s (audit-demo, {DEMO_SETTINGS}, "
              "opinion both)")
        hits = {(kind, way): 0 for kind in ("ascent", "concept") for way in WAYS}
        null_any = {key: 0 for key in hits}
        null_flags = {key: 0 for key in hits}
        tested = {key: [] for key in hits}
        for i in range(2 * args.datasets):
            planted = i % 2 == 0
            picked, plant = draw(images, rs, planted)
            q = ScanQuery.open(write(tmp / f"d{i}", picked, tokens))
            for kind in ("ascent", "concept"):
                for way, (filtered, procedure, alternative) in WAYS.items():
                    a = associations(q, "label", MIN_COUNT, FDR, kind=kind, procedure=procedure,
                                     words=on_filters if filtered else WordFilter(), alternative=alternative)
                    flagged = set(zip(a.flagged.grp, a.flagged.word, strict=True))
                    tested[kind, way].append(a.testable)
                    if planted:
                        hits[kind, way] += plant in flagged
                    else:
                        null_any[kind, way] += bool(flagged)
                        null_flags[kind, way] += len(flagged)
        n = args.datasets
        print(f"\n{n} planted datasets (35-40% vs 15-20%, groups {SIZES}) and {n} null datasets; FDR {FDR}, "
              f"min_count {MIN_COUNT}")
        print("| words | testing | power (95% CI) | null datasets with any flag | false flags | pairs counted |")
        print("|---|---|---|---|---|---|")
        for (kind, way), h in hits.items():
            p = h / n
            half = 1.96 * np.sqrt(max(p * (1 - p), 1e-12) / n)
            print(f"| {kind} | {way} | {p:.1%} ({max(0, p - half):.1%}-{min(1, p + half):.1%}) | "
                  f"{null_any[kind, way]} of {n} | {null_flags[kind, way]} | {np.mean(tested[kind, way]):.0f} |")
        for kind in ("ascent", "concept"):
            before = hits[kind, "filters, Tarone-BH, two-sided"] / n
            new = hits[kind, "filters, Tarone-BH, one-sided"] / n
            print(f"ratio: {kind} power {new:.1%} one-sided against {before:.1%} two-sided "
                  f"(x{new / max(before, 1e-9):.2f}), filters and Tarone-BH both")


if __name__ == "__main__":
    main()
