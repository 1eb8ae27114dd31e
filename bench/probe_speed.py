"""Probe-only scan vs full scan (ascent + probes) of the same demo images on this machine.

The probe-only scan covers all N images; the full scan (default ascent settings: 200 steps, 16
candidates, 64 views) runs on a sample of the same images, since on a CPU it takes tens of seconds per
image. Both rates are per image, measured in the same run; the ratio is what the probe-only mode saves.

    .venv/bin/python bench/probe_speed.py [--images 1000] [--full-sample 6] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from audit.demo import make_dataset
from audit.scanner.pipeline import run_scan

WORDS = "grass,water,red,circle,fire fighter"


def timed(manifest: Path, out: Path, device: str, expect: int, **options) -> float:
    start = time.perf_counter()
    scan = run_scan(str(manifest), str(out), model="audit-demo", pretrained="auto", device=device, quiet=True,
                    words=WORDS, **options)
    seconds = time.perf_counter() - start
    tokens = scan.tokens()
    assert len(scan.images()) == expect and scan.errors().empty, "not every image was scanned"
    assert (tokens.kind == "probe").sum() == 5 * expect
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--full-sample", type=int, default=6)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = make_dataset(tmp / "data", images=args.images, seed=7)
        sample = tmp / "sample.csv"
        pd.read_csv(manifest).sample(args.full_sample, random_state=0).to_csv(sample, index=False)
        # The sample manifest lists paths relative to the dataset folder.
        sample = sample.rename(tmp / "data" / "sample.csv")
        probe_s = timed(manifest, tmp / "probe", args.device, args.images, opinion="probes")
        full_s = timed(sample, tmp / "full", args.device, args.full_sample)
    per_probe = probe_s / args.images
    per_full = full_s / args.full_sample
    print(f"probe-only: {args.images} images in {probe_s:.1f} s ({per_probe * 1000:.1f} ms/image, "
          f"{1 / per_probe:.1f} images/s), 5 probe words")
    print(f"full scan (200 steps, 16 candidates, 64 views, same 5 probe words): {args.full_sample} of the same "
          f"images in {full_s:.1f} s ({per_full:.2f} s/image); all {args.images} would take "
          f"{per_full * args.images / 60:.0f} min")
    print(f"ratio: probe-only is {per_full / per_probe:.0f}x faster per image on {args.device}")


if __name__ == "__main__":
    main()
