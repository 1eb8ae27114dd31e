"""False flags: demo datasets with and without the planted bias, scanned with audit-demo, over several seeds.

Counts findings (flagged associations other than a group's own name) per dataset and the share of tested
pairs they make up.

    .venv/bin/python bench/false_flags.py [--seeds 4] [--images 48]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from audit.analysis.associations import associations
from audit.demo import DEMO_SETTINGS, make_dataset
from audit.scanner.pipeline import run_scan
from audit.store.query import ScanQuery


def run(bias, seed: int, images: int, tmp: Path):
    manifest = make_dataset(tmp / f"ds-{bias}-{seed}", images=images, seed=seed, bias=bias)
    scan = tmp / f"scan-{bias}-{seed}"
    run_scan(str(manifest), str(scan), model="audit-demo", pretrained="auto", workers=0, quiet=True,
             device="cpu", **DEMO_SETTINGS)
    a = associations(ScanQuery.open(scan), "label", min_count=3)
    return a.findings, a.tested


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--images", type=int, default=60)
    args = ap.parse_args()
    total_false, total_tested = 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(1, args.seeds + 1):
            unbiased, tested = run(None, seed, args.images, Path(tmp))
            biased, _ = run(0.85, seed, args.images, Path(tmp))
            total_false += len(unbiased)
            total_tested += tested
            top = biased.iloc[0] if len(biased) else None
            print(f"seed {seed}: no planted bias -> {len(unbiased)} findings of {tested} tested pairs "
                  f"{list(zip(unbiased.grp, unbiased.word, strict=True))}; planted -> top finding "
                  f"{(top.grp, top.word, round(float(top.q), 4)) if top is not None else None}")
    print(f"ratio: {total_false} false findings / {total_tested} tested pairs = "
          f"{total_false / max(total_tested, 1):.2%} over {args.seeds} unbiased datasets")


if __name__ == "__main__":
    main()
