"""Per-image ascent time on CPU by batch size, measured side by side in one run.

Why `--batch-size auto` on CPU keeps one vocabulary-sized tensor under 32 MB: above glibc's mmap ceiling a
freed tensor is unmapped and page-faulted again by the next op, so large CPU batches spend most of their time
in the kernel. The scan also raises glibc's mmap/trim thresholds (--no-tune shows the difference).

    .venv/bin/python bench/cpu_batch.py [--candidates 16] [--steps 3]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from audit.scanner.ascent import AscentConfig, run_ascent
from audit.scanner.device import tune_cpu_allocator
from audit.scanner.encoders import Towers
from audit.scanner.models import load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--sizes", default="1,2,4,8,16")
    ap.add_argument("--no-tune", action="store_true", help="leave glibc's allocator as it is")
    args = ap.parse_args()
    if not args.no_tune:
        tune_cpu_allocator()
    towers = Towers(load_model("audit-tiny", "none", device="cpu"))
    cfg = AscentConfig(steps=args.steps, candidates=args.candidates, views=8)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for b in sizes:
        imgs = torch.randn(b, 3, 64, 64)
        seeds = torch.arange(b)
        run_ascent(towers, imgs[:1], seeds[:1], AscentConfig(steps=1, candidates=2, views=2))  # warm-up
        t0, c0 = time.perf_counter(), os.times()
        run_ascent(towers, imgs, seeds, cfg)
        wall, c1 = time.perf_counter() - t0, os.times()
        rows.append((b, wall / (b * args.steps), c1.system - c0.system, c1.user - c0.user))
    print(f"audit-tiny ascent on CPU ({torch.get_num_threads()} threads), candidates={args.candidates}, "
          f"steps={args.steps}, allocator {'default' if args.no_tune else 'tuned'}")
    print(f"{'batch':>5} {'s/image-step':>13} {'sys s':>7} {'user s':>7}")
    for b, per, sys_s, user_s in rows:
        print(f"{b:>5} {per:>13.4f} {sys_s:>7.2f} {user_s:>7.2f}")
    best = min(rows, key=lambda r: r[1])
    worst = max(rows, key=lambda r: r[1])
    print(f"ratio: batch {worst[0]} is {worst[1] / best[1]:.2f}x slower per image than batch {best[0]}")


if __name__ == "__main__":
    main()
