"""The GPU throughput benchmark (bench/scan_throughput.py) must keep running: a smoke run on the CPU with the
tiny model, so that the day a GPU is at hand the script works first time."""

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

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
    assert re.search(r"full scan's time: waiting for images \d+%, model \d+%, writing \d+%", out), out
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
    assert "full scan with --kernel triton: CUDA-only; not run on cpu" in out, out


def test_the_triton_full_scan_line_and_its_kernel(monkeypatch, capsys):
    """The triton full scan runs only on a GPU, so its bookkeeping is checked here with the scan stubbed: the
    scan is asked for the triton kernel (as a setting: the environment is left alone), a failure is reported
    rather than ending the benchmark, and the ratios printed are the ones its figures give."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("scan_throughput", ROOT / "bench" / "scan_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    seen = []

    def scan(name, device, folder, out, cfg, batch, workers, kernel="auto"):
        seen.append(kernel)
        if len(seen) == 2:
            raise RuntimeError("out of resources: shared memory")
        return 60.0, 1024

    monkeypatch.setattr(bench, "full_scan", scan)
    monkeypatch.setattr(bench, "peak_gb", lambda device: 99.0)
    monkeypatch.setenv("AUDIT_KERNEL", "compile")
    cuda = torch.device("cuda")
    bench.triton_scan("ViT-B-32", cuda, Path("."), Path("."), None, 8, (20.0, 600), 0.05)
    bench.triton_scan("ViT-B-32", cuda, Path("."), Path("."), None, 8, (20.0, 600), 0.05)
    assert seen == ["triton", "triton"] and os.environ["AUDIT_KERNEL"] == "compile"
    out = capsys.readouterr().out
    assert re.search(r"full scan, triton \(auto batch, used 1024\): +60.00 img/s peak +99.00 GB; 3.00x the "
                     r"default scan \(20.00 img/s at batch 600\); 1200x the naive baseline", out), out
    assert "full scan, triton: FAILED: RuntimeError: out of resources" in out, out


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


def test_the_step_time_measurement_runs_and_prints_what_cuda_graphs_could_save(capsys):
    """bench/scan_throughput.py's host-overhead line on the CPU with the tiny model: both step times measured,
    the bound printed as a share."""
    import importlib.util

    from audit.scanner.ascent import AscentConfig
    from audit.scanner.encoders import Towers
    from audit.scanner.models import load_model

    spec = importlib.util.spec_from_file_location("scan_throughput", ROOT / "bench" / "scan_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    loaded = load_model("audit-tiny", "none", device="cpu")
    cpu = torch.device("cpu")
    x = bench.random_images(4, bench.input_size(loaded), cpu)
    small, full = bench.host_overhead("audit-tiny", Towers(loaded), x, AscentConfig(candidates=2, views=2), cpu,
                                      "eager", "eager")
    assert small >= 0 and full >= 0
    out = capsys.readouterr().out
    assert re.search(r"paths: audit-tiny eager: a step takes [\d.]+ ms at batch 2 .* and [\d.]+ ms at batch 4; "
                     r"CUDA graphs could save at most (\d+%|nan%) of the step", out), out
