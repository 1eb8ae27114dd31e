"""What each rule of the example policy catches on demo data: a planted-bias snapshot and two unbiased
ones (different seeds), each checked alone and against an unbiased baseline.

    .venv/bin/python bench/check_demo.py [--images 60]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from audit.demo import DEMO_SETTINGS, POLICY, make_dataset
from audit.policy.parse import load_policy
from audit.policy.rules import run_check
from audit.scanner.pipeline import run_scan


def scan(tmp: Path, name: str, seed: int, bias, images: int) -> Path:
    manifest = make_dataset(tmp / name, images=images, seed=seed, bias=bias)
    out = tmp / f"{name}-scan"
    run_scan(str(manifest), str(out), model="audit-demo", pretrained="auto", workers=0, quiet=True, device="cpu",
             **DEMO_SETTINGS)
    return out


def show(label: str, result) -> None:
    print(f"\n{label}: exit {result.exit_code}")
    for r in result.results:
        print(f"  {r.status.upper():4}  {r.rule.id:24} {r.summary[:150]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=60)
    args = ap.parse_args()
    policy = load_policy(POLICY)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        biased = scan(tmp, "biased", 0, 0.85, args.images)
        flat1 = scan(tmp, "flat1", 1, None, args.images)
        flat2 = scan(tmp, "flat2", 2, None, args.images)
        show("planted bias, no baseline", run_check(biased, policy))
        show("no bias (seed 1), no baseline", run_check(flat1, policy))
        show("planted bias against the seed-1 baseline", run_check(biased, policy, flat1))
        show("no bias (seed 2) against the seed-1 baseline", run_check(flat2, policy, flat1))


if __name__ == "__main__":
    main()
