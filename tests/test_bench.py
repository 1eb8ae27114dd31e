"""The GPU throughput benchmark (bench/scan_throughput.py) must keep running: a smoke run on the CPU with the
tiny model, so that the day a GPU is at hand the script works first time."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_scan_throughput_smoke_run_prints_every_measurement():
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scan_throughput.py"), "--device", "cpu", "--models", "audit-tiny",
         "--batch-sizes", "2", "--steps", "2", "--candidates", "4", "--views", "4", "--scan-images", "3",
         "--naive-images", "1", "--loader-images", "4", "--workers", "0"],
        capture_output=True, text=True, timeout=600, check=True).stdout
    assert re.search(r"loader: .* [\d.]+ img/s", out), out
    assert re.search(r"audit-tiny +batch +2 +ascent +[\d.]+ img/s +relevancy +[\d.]+ img/s", out), out
    assert re.search(r"full scan \(auto batch, used \d+\): +[\d.]+ img/s", out), out
    assert re.search(r"naive baseline .* [\d.]+ img/s", out), out
    for label in ("fast", "fast --resample-views"):
        m = re.search(rf"objective .*: {label} ([\d.-]+) +naive ([\d.-]+) +paired difference ([+-][\d.]+) "
                      r"\(95% half-width (nan|[\d.]+), sd (nan|[\d.]+)\) +(fast >= naive|below naive, within "
                      r"the paired spread|FAST BELOW NAIVE)", out)
        assert m, out
        fast, naive, paired, half, verdict = float(m[1]), float(m[2]), float(m[3]), float(m[4]), m[6]
        assert abs(paired - (fast - naive)) <= 2e-4, m[0]  # one image: the paired difference is the difference
        # The verdict is the one its own numbers give (printed to 4 decimals); one image has no spread.
        assert half != half
        want = "fast >= naive" if fast >= naive - 1e-4 else "FAST BELOW NAIVE"
        if abs(fast - naive) > 2e-4:
            assert verdict == want, m[0]
    m = re.search(r"^ratio: \S+ full scan ([\d.]+) img/s vs naive ascent-only ([\d.]+) img/s = (\d+)x", out, re.M)
    assert m, out
    full, naive_rate, ratio = float(m[1]), float(m[2]), int(m[3])
    assert naive_rate > 0 and abs(ratio - full / naive_rate) <= 0.02 * ratio + 1, m[0]


def test_fused_tiles_sweep_runs_and_names_its_fastest_tiling():
    """bench/fused_tiles.py under Triton's interpreter on a toy problem: every tiling gives the reference's hard
    tokens and soft embeddings, and the line bench/gpu.sh reads names one of the tilings measured."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fused_tiles.py"), "--device", "cpu", "--images", "1", "--widths",
         "32,48", "--vocab", "300", "--steps", "1", "--sweep", "2"],
        capture_output=True, text=True, timeout=600, check=True, cwd=ROOT).stdout
    rows = re.findall(r"^triton (\S+) +[\d.]+ +[\d.]+ +[\d.]+ +\d+ +[\d.]+ +([\d.]+) +(\S+)$", out, re.M)
    for _, same, err in rows:
        assert float(same) == 1.0 and float(err) < 1e-5, out
    best = re.search(r"^AUDIT_TRITON_TILES=(\S+)$", out, re.M)
    assert best and best[1] in {r[0] for r in rows[:2]}, out
    # Two tilings at the first width; at the second, the default and the winner (once if they are the same).
    assert len(rows) == 2 + len({"64,128,128,8,2", best[1]}), out
