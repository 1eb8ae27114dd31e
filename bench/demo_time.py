"""Wall time of `audit demo` (after install) against its 3-minute budget, and whether the planted bias shows.

    .venv/bin/python bench/demo_time.py [--images 48]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

from audit.demo import DEMO_SETTINGS, run_demo


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=60)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        buf = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(buf):
            run_demo(Path(tmp) / "demo", images=args.images, quiet=True)
        wall = time.perf_counter() - t0
    print(buf.getvalue())
    print(f"audit demo: {args.images} images, settings {DEMO_SETTINGS}: {wall:.1f} s")
    print(f"ratio: {wall / 180:.2f} of the 180 s budget")


if __name__ == "__main__":
    main()
