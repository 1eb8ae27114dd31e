"""Scale: probe-only scans of generated WebDataset shards at two dataset sizes, local engine against Ray with 2
workers, all in one run: images/s, and peak resident memory of the driver and of the workers (sampled from
/proc every 0.2 s). The point: throughput holds and host memory does not grow with the number of images.

    .venv/bin/python bench/scale.py [--sizes 5000 50000] [--per-shard 1000] [--workers 2]

Each scan runs as its own `audit scan` process; "driver" is that process, "workers" its descendants (DataLoader
workers for the local engine; Ray's raylet, object store and actors for Ray; the largest one is reported).
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ARGS = ["--model", "audit-tiny", "--pretrained", "none", "--words", "red,grass", "--opinion", "probes", "--device", "cpu",
        "-q"]


def write_shards(root: Path, n: int, per_shard: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rs = np.random.RandomState(0)
    tiles = []
    for _ in range(64):  # a pool of distinct small photos, reused with a different key each time
        arr = rs.randint(0, 255, (rs.randint(40, 80), rs.randint(40, 80), 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=85)
        tiles.append(buf.getvalue())
    for s in range(0, n, per_shard):
        with tarfile.open(root / f"{s // per_shard:05d}.tar", "w") as tar:
            for i in range(s, min(n, s + per_shard)):
                for name, data in ((f"{i:08d}.jpg", tiles[i % len(tiles)]), (f"{i:08d}.cls", b"abc"[i % 3:i % 3 + 1])):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def run(shards: str, out: Path, engine: str, workers: int) -> dict:
    cmd = [sys.executable, "-m", "audit", "scan", shards, "--out", str(out), *ARGS, "--engine", engine,
           "--workers", str(workers)]
    peak = {"driver": 0, "worker": 0}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak["driver"] = max(peak["driver"], _rss_kb(proc.pid))
            for child in _descendants(proc.pid):
                peak["worker"] = max(peak["worker"], _rss_kb(child))
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _, err = proc.communicate()
    stop.set()
    thread.join()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{engine} scan failed: {err.decode()[-2000:]}")
    return {"seconds": seconds, "driver_mb": peak["driver"] / 1024, "worker_mb": peak["worker"] / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    ap.add_argument("--per-shard", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="audit-scale-") as tmp:
        for n in args.sizes:
            root = Path(tmp) / f"n{n}"
            write_shards(root / "shards", n, args.per_shard)
            for engine in ("local", "ray"):
                r = run(str(root / "shards"), root / f"scan-{engine}", engine, args.workers)
                r.update(n=n, engine=engine, rate=n / r["seconds"])
                rows.append(r)
                print(f"{n:>7} images  {engine:5s}  {r['rate']:8.1f} images/s  ({r['seconds']:6.1f} s, start-up "
                      f"included)  driver peak RSS {r['driver_mb']:7.1f} MB  largest worker {r['worker_mb']:7.1f} MB",
                      flush=True)
    small, large = min(args.sizes), max(args.sizes)
    print()
    for engine in ("local", "ray"):
        a = next(r for r in rows if r["engine"] == engine and r["n"] == small)
        b = next(r for r in rows if r["engine"] == engine and r["n"] == large)
        print(f"{engine:5s}: {large}/{small} images -> driver RSS x{b['driver_mb'] / a['driver_mb']:.2f}, largest "
              f"worker x{b['worker_mb'] / max(a['worker_mb'], 1e-9):.2f}, images/s x{b['rate'] / a['rate']:.2f}")
    for n in args.sizes:
        loc = next(r for r in rows if r["engine"] == "local" and r["n"] == n)
        ray = next(r for r in rows if r["engine"] == "ray" and r["n"] == n)
        print(f"{n:>7} images: ray/local images/s x{ray['rate'] / loc['rate']:.2f}")


if __name__ == "__main__":
    main()
