"""Wall time of `audit demo` (after install) against its 3-minute budget, and whether the planted bias shows.
With --compare-ref, the same demo with the code of a git ref, each in a fresh process, side by side in one run.

    .venv/bin/python bench/demo_time.py [--images 60] [--compare-ref REF]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from cpu_precision import ROOT, worktree  # noqa: E402  (the same checkout of a ref as its --compare-ref)

RUN = ("import sys; from pathlib import Path; from audit.cli import configure_logging; from audit.demo import run_demo; "
       "configure_logging(); "
       "run_demo(Path(sys.argv[1]), images=int(sys.argv[2]), quiet=True, device='cpu')")


def timed_demo(code: Path, out: Path, images: int) -> tuple[float, str]:
    """Seconds for one `audit demo` run with the package at `code`, in a fresh process (imports included), and
    what it said."""
    env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RUN, str(out), str(images)], env=env, cwd=code, capture_output=True,
                          text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"the demo failed with the code at {code}:\n{done.stderr[-3000:]}")
    return wall, done.stdout + done.stderr


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--compare-ref", default=None, help="also time the demo with this commit's code")
    args = ap.parse_args()
    from audit.demo import DEMO_SETTINGS

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        before = None
        if args.compare_ref:
            code = worktree(args.compare_ref, work / "code")
            try:
                before, _ = timed_demo(code, work / "before", args.images)
            finally:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(code)], check=False)
        wall, said = timed_demo(ROOT, work / "now", args.images)
    print(*[line for line in said.splitlines() if line.startswith("Top finding")] or ["the demo reported no finding"],
          sep="\n")
    print(f"audit demo: {args.images} images, settings {DEMO_SETTINGS}: {wall:.1f} s (a fresh process)")
    print(f"ratio: {wall / 180:.2f} of the 180 s budget")
    if before is not None:
        print(f"audit demo with {args.compare_ref[:10]}: {before:.1f} s; ratio before / now: {before / wall:.2f}x")


if __name__ == "__main__":
    main()
