"""The scan issue's yardstick: 50 generated images, audit-tiny with random weights, 20 steps, on this CPU;
then the same command again, which must resume without work.

    .venv/bin/python bench/tiny_scan.py [--images 50] [--steps 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import audit
from audit.demo import make_dataset


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=50)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_dataset(Path(tmp) / "ds", images=args.images)
        folder = manifest.parent
        opts = dict(model="audit-tiny", pretrained="none", steps=args.steps, workers=args.workers, quiet=True)
        t0 = time.perf_counter()
        scan = audit.scan(folder, Path(tmp) / "scan", **opts)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        audit.scan(folder, Path(tmp) / "scan", **opts)
        second = time.perf_counter() - t0
        counts = {t: scan.table(t).num_rows for t in ("images", "tokens", "heatmaps", "errors")}
        run = scan.config["runs"][0]
    print(f"{args.images} images, audit-tiny (random weights), steps={args.steps}, batch={run['batch_size']}, "
          f"workers={args.workers}")
    print(f"scan:   {first:7.1f} s  {args.images / first:6.2f} images/s  rows {counts}")
    print(f"resume: {second:7.2f} s  (nothing to do)")
    print(f"ratio: resume takes {second / first:.4f} of the scan's time")


if __name__ == "__main__":
    main()
