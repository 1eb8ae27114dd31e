"""Word quality of the ascent on demo scenes: how many of an image's words are its scene's words (colour, shape,
background) and how many are junk, with the word filters of audit.analysis and without, and with token swaps
restricted to real whole words (--refine-words) and not.

Scans the demo's planted dataset (north shot 90% of its photos on grass) and an unbiased one (backgrounds
uniform at every site) with audit-demo at the demo's settings, then prints, side by side:
 1. the relative own cosine (word alone / the image's best sequence) of scene words and of the other words,
    and what each threshold keeps of each: the evidence for analysis.MIN_RELATIVE_COSINE;
 2. words per image, junk share (own cosine below 0.1 x the best sequence's, the issue's definition) and the
    scene words' recall, before (no filters) and after (stop words + the threshold), for both swap settings;
 3. the report's findings on both datasets before (no filters, BH over every pair) and after (filters,
    Tarone-BH).

    .venv/bin/python bench/word_quality.py [--images 60] [--steps 40 --candidates 8 --views 16]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

import audit
from audit.analysis import MIN_RELATIVE_COSINE
from audit.analysis.associations import associations, word_filter
from audit.demo import DEMO_SETTINGS, make_dataset
from audit.scanner.options import ScanOptions
from audit.store.query import ScanQuery, WordFilter
from audit.words import STOP_WORDS

THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def scan(manifest: Path, out: Path, settings: dict, refine_words: bool) -> pd.DataFrame:
    s = audit.scan(manifest, out, model="audit-demo", workers=0, device="cpu", quiet=True,
                   refine_words=refine_words, **settings)
    tokens = s.tokens()
    tokens = tokens[tokens.kind == "ascent"].copy()
    truth = pd.read_csv(manifest).set_index("path")
    best = tokens.groupby("image_id").seq_cosine.transform("max")
    tokens["relative"] = tokens.word_cosine / best
    tokens["scene"] = [w in {truth.loc[i, "shape"], truth.loc[i, "colour"], truth.loc[i, "background"]}
                       for i, w in zip(tokens.image_id, tokens.word, strict=True)]
    tokens["stop"] = tokens.word.isin(STOP_WORDS)
    return tokens


def quality(tokens: pd.DataFrame, n_images: int, filtered: bool) -> dict:
    t = tokens[~tokens.stop & (tokens.relative >= MIN_RELATIVE_COSINE)] if filtered else tokens
    found = t[t.scene].groupby("image_id").word.nunique()
    return {"words/image": len(t) / n_images, "junk share": float((t.relative < 0.1).mean()) if len(t) else 0.0,
            "scene words found/image": float(found.reindex(tokens.image_id.unique(), fill_value=0).mean()),
            "non-scene share": float((~t.scene).mean()) if len(t) else 0.0}


def findings(scan_dir: Path, filtered: bool) -> list[tuple[str, str, float]]:
    q = ScanQuery.open(scan_dir)
    if filtered:
        a = associations(q, "label", min_count=3, words=word_filter())
    else:
        a = associations(q, "label", min_count=3, words=WordFilter(), procedure="bh")
    return [(r.grp, r.word, round(float(r.q), 4)) for r in a.findings.itertuples()], a.tested, a.testable


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--steps", type=int, default=DEMO_SETTINGS["steps"])
    ap.add_argument("--candidates", type=int, default=DEMO_SETTINGS["candidates"])
    ap.add_argument("--views", type=int, default=DEMO_SETTINGS["views"])
    args = ap.parse_args()
    settings = {"steps": args.steps, "candidates": args.candidates, "views": args.views}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = {"planted": make_dataset(tmp / "planted", images=args.images, seed=0, bias=0.9),
                "unbiased": make_dataset(tmp / "unbiased", images=args.images, seed=1, bias=None)}
        tokens = {}
        for name, manifest in data.items():
            for words in (False, True):
                tokens[name, words] = scan(manifest, tmp / f"scan-{name}-{words}", settings, words)
        print(f"# word quality, audit-demo, {args.images} images per dataset, {settings}")
        default = ScanOptions().refine_words
        pooled = pd.concat([tokens[k] for k in tokens if k[1] == default])
        scene, other = pooled[pooled.scene], pooled[~pooled.scene & ~pooled.stop]
        swaps = "whole words" if default else "any token"
        print(f"\n## 1. own cosine / best sequence cosine (default swaps: {swaps}; both datasets)")
        print(f"scene words: n={len(scene)}, quantiles 1/5/50%: "
              + ", ".join(f"{v:.2f}" for v in np.quantile(scene.relative, [0.01, 0.05, 0.5])))
        print(f"other words (stop words aside): n={len(other)}, quantiles 50/90/99%: "
              + ", ".join(f"{v:.2f}" for v in np.quantile(other.relative, [0.5, 0.9, 0.99])))
        print(f"lowest scene word: {scene.relative.min():.3f}; other words between 0.2 and that: "
              f"{int(other.relative.between(0.2, scene.relative.min()).sum())}, highest of them "
              f"{other.relative[other.relative < scene.relative.min()].max():.3f}")
        print("| threshold | scene words kept | other words kept |\n|---|---|---|")
        for t in THRESHOLDS:
            print(f"| {t:.2f}{' (default)' if t == MIN_RELATIVE_COSINE else ''} | {(scene.relative >= t).mean():.1%} | "
                  f"{(other.relative >= t).mean():.1%} |")
        print("\n## 2. words per image, junk share, scene words found")
        print("| dataset | swaps | filters | words/image | junk share | scene words found/image | non-scene share |")
        print("|---|---|---|---|---|---|---|")
        for (name, words), t in tokens.items():
            for filtered in (False, True):
                r = quality(t, args.images, filtered)
                print(f"| {name} | {'whole words' if words else 'any token'} | {'on' if filtered else 'off'} | "
                      f"{r['words/image']:.2f} | {r['junk share']:.1%} | {r['scene words found/image']:.2f} | "
                      f"{r['non-scene share']:.1%} |")
        print(f"\n## 3. report findings (default swaps: {swaps}; label groups; min_count 3, FDR 0.05)")
        for name in data:
            for filtered in (False, True):
                found, tested, testable = findings(tmp / f"scan-{name}-{default}", filtered)
                how = "filters + Tarone-BH" if filtered else "no filters, BH"
                print(f"{name}, {how}: {len(found)} findings of {tested} tested pairs ({testable} counted): {found}")


if __name__ == "__main__":
    main()
