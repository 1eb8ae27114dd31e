"""`audit report` and `audit check` over a scan of 1,000,000 token rows (50,000 images x 20 words), built
synthetically, for each number of groups asked.

Prints, per number of groups, the time to build the report and its HTML size, and the time of `audit check` with
the example policy (audit/demo/audit-policy.toml) on the same scan. Targets on a 2-core CPU: 1,000 groups: report
<= 30 s, HTML <= 20 MB, check <= 30 s; 5 groups: no slower than before. With --diff, a second snapshot (another
seed, the same groups) is built and `audit diff` (to HTML) and `audit check --baseline` (the drift rules too) are
timed against it.

    .venv/bin/python bench/report_1m.py [--groups 5,100,1000] [--images 50000] [--words-per-image 20] [--diff]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from audit.outputs.report import build_report
from audit.store.writer import ScanWriter


def synthetic_scan(out: Path, images: int, per_image: int, vocab: int = 3000, groups: int = 5, seed: int = 0):
    rs = np.random.RandomState(seed)
    writer = ScanWriter.open(out, {"model": "synthetic"}, {"kind": "bench"})
    ids = np.array([f"img{i:07d}.jpg" for i in range(images)], dtype=object)
    label = rs.randint(0, groups, images)
    chunk = 10_000
    try:
        for lo in range(0, images, chunk):
            hi = min(images, lo + chunk)
            n_img = hi - lo
            # Zipf-like word frequencies, plus a planted word for group 0.
            w = np.minimum(rs.zipf(1.3, (n_img, per_image)) - 1, vocab - 1)
            w[:, 0] = np.where((label[lo:hi] == 0) & (rs.rand(n_img) < 0.6), vocab, w[:, 0])
            words = np.array([f"w{k}" for k in range(vocab)] + ["grass"], dtype=object)[w]
            image_id = np.repeat(ids[lo:hi], per_image)
            n = n_img * per_image
            grids = pa.ListArray.from_arrays(np.arange(0, (n + 1) * 49, 49, dtype=np.int32),
                                             pa.array(rs.rand(n * 49).astype(np.float32)))
            kind = np.full(n, "ascent", dtype=object)
            tokens = pa.table({"image_id": image_id, "kind": kind, "word": words.ravel(),
                               "word_rank": np.tile(np.arange(per_image, dtype=np.int16), n_img),
                               "seq_rank": np.zeros(n, np.int16), "seq_text": words.ravel(),
                               "seq_cosine": rs.rand(n).astype(np.float32),
                               "word_cosine": rs.rand(n).astype(np.float32)})
            heat = pa.table({"image_id": image_id, "kind": kind, "word": words.ravel(), "grid_h": np.full(n, 7, np.int16),
                             "grid_w": np.full(n, 7, np.int16), "grid": grids,
                             **{k: rs.rand(n).astype(np.float32) for k in ("peak_x", "peak_y", "entropy",
                                                                           "top10_mass", "centre_mass",
                                                                           "border_mass", "box_mass")},
                             "peak_in_box": rs.rand(n) < 0.5,
                             "text_relevance": pa.array([[1.0]] * n, type=pa.list_(pa.float32()))})
            imgs = pa.table({"image_id": ids[lo:hi], "path": ids[lo:hi],
                             "label": np.array([f"group{g}" for g in label[lo:hi]], dtype=object),
                             "width": np.full(n_img, 640, np.int32), "height": np.full(n_img, 480, np.int32),
                             **{k: pa.nulls(n_img, pa.float64()) for k in ("x0", "y0", "x1", "y1")}})
            errors = pa.table({"image_id": pa.array([], pa.string()), "path": pa.array([], pa.string()),
                               "stage": pa.array([], pa.string()), "reason": pa.array([], pa.string())})
            writer.write_unit({"images": imgs, "tokens": tokens, "heatmaps": heat, "errors": errors})
    finally:
        writer.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--words-per-image", type=int, default=20)
    ap.add_argument("--groups", default="5", help="comma-separated numbers of groups, one scan each")
    ap.add_argument("--skip-report", action="store_true", help="time only the check")
    ap.add_argument("--skip-check", action="store_true", help="time only the report")
    ap.add_argument("--diff", action="store_true", help="also time diff and check --baseline against a second scan")
    args = ap.parse_args()
    from audit.demo import POLICY
    from audit.policy.parse import load_policy
    from audit.policy.rules import run_check

    rows = args.images * args.words_per_image
    extra = " diff s | diff MiB | check --baseline s |" if args.diff else ""
    print("| groups | report s | HTML MiB | check s | findings (check's watch) |" + extra)
    print("|---:|---:|---:|---:|---|" + ("---:|---:|---:|" if args.diff else ""))
    for groups in map(int, args.groups.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            scan = Path(tmp) / "scan"
            synthetic_scan(scan, args.images, args.words_per_image, groups=groups)
            report, size = float("nan"), float("nan")
            if not args.skip_report:
                t0 = time.perf_counter()
                out = build_report(scan, ["label"], Path(tmp) / "report.html")
                report, size = time.perf_counter() - t0, out.stat().st_size / 2**20
            check, said = float("nan"), "not run"
            if not args.skip_check:
                t0 = time.perf_counter()
                checked = run_check(scan, load_policy(POLICY))
                check = time.perf_counter() - t0
                watch = next(r for r in checked.results if r.rule.id == "watch:backgrounds")
                said = f"{watch.status}: {watch.summary[:60]}"
            line = f"| {groups} | {report:.2f} | {size:.2f} | {check:.2f} | {said} |"
            if args.diff:
                from audit.outputs.diff import build_diff, write_diff

                old = Path(tmp) / "old"
                synthetic_scan(old, args.images, args.words_per_image, groups=groups, seed=1)
                t0 = time.perf_counter()
                page = write_diff(build_diff(old, scan, ["label"]), Path(tmp) / "diff.html")
                diff = time.perf_counter() - t0
                t0 = time.perf_counter()
                run_check(scan, load_policy(POLICY), baseline=old)
                line += f" {diff:.2f} | {page.stat().st_size / 2**20:.2f} | {time.perf_counter() - t0:.2f} |"
        print(line, flush=True)
    print(f"({args.images} images, {rows} token rows each)")


if __name__ == "__main__":
    main()
