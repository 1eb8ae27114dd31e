"""What `audit ask` saves: a follow-up question answered from stored embeddings against a probe-only rescan of
the same images and words, and what the embeddings cost to keep.

1. Side by side on real scans (audit-tiny, random weights, CPU): a source scan of N noise photos, then `ask` of
   the probe words, then a probe-only rescan of them; images/s of each and the ratio (model loading apart: the
   ask's own phases, from its run record). The asked scores are checked against the rescan's.
2. Rates at scale, on stored embeddings laid out as a scan writes them (parts of `--part` images, float16):
   ViT-B-32 (random weights, 512 numbers an image) at 10,000 images and audit-tiny at 10,000 and 100,000; the probe-only rescan's
   rate measured on a sample of real photos. And `ask` of 100 phrases over `--million` stored embeddings: the
   seconds of each phase and the peak memory, against the same at a tenth of the images (flat memory: the
   embeddings are streamed one part at a time).
3. Storage: bytes per image the embeddings table adds (float16 and float32), from the files.

    .venv/bin/python bench/ask_cost.py [--images 2000] [--million 1000000] [--part 8192]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

import audit
from audit.store.writer import COMMIT_IMAGES

WORDS = "red,a blue car,dog,grass,a person in a wheelchair"
PHRASES = [f"phrase number {i}" for i in range(100)]


def noise_folder(root: Path, n: int) -> Path:
    from PIL import Image

    rs = np.random.RandomState(0)
    for i in range(n):
        path = root / ("a" if i % 2 else "b") / f"{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rs.randint(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
    return root


def asked_seconds(scan: audit.Scan) -> float:
    """The ask's wall time, its model's loading apart (its phases overlap: a unit is written while the next is read)."""
    run = scan.config["runs"][-1]
    return run["seconds"] - run["phases"]["model"]


def side_by_side(tmp: Path, n: int) -> dict:
    folder = noise_folder(tmp / "photos", n)
    common = dict(model="audit-tiny", pretrained="none", workers=0, device="cpu", quiet=True)
    audit.scan(folder, tmp / "src", opinion="probes", words="zebra", **common)
    asked = audit.ask(tmp / "src", tmp / "asked", words=WORDS, device="cpu", quiet=True)
    start = time.perf_counter()
    rescan = audit.scan(folder, tmp / "rescan", opinion="probes", words=WORDS, **common)
    rescan_s = time.perf_counter() - start
    a = asked.tokens().set_index(["image_id", "word"]).word_cosine.sort_index()
    b = rescan.tokens().set_index(["image_id", "word"]).word_cosine.sort_index()
    assert a.index.equals(b.index) and float((a - b).abs().max()) < 2e-3, "ask and the rescan disagree"
    ask_s = asked_seconds(asked)
    return {"images": n, "rescan": n / rescan_s, "ask": n / ask_s, "max_diff": float((a - b).abs().max()),
            "bytes16": bytes_per_image(tmp / "src")}


def bytes_per_image(scan_dir: Path) -> float:
    files = list((scan_dir / "embeddings").glob("part-*.parquet"))
    images = len(audit.Scan(scan_dir).images())
    return sum(p.stat().st_size for p in files) / images


def synthetic(seed_scan: Path, out: Path, n: int, part: int) -> Path:
    """A copy of a real scan's settings with n stored embeddings of its dimension, written in parts of `part`
    images through the scan's own writer (the layout `ask` reads)."""
    from audit.store.schema import embeddings_table
    from audit.store.writer import ScanWriter

    src = audit.Scan(seed_scan)
    dim = src.embeddings()[1].shape[1]
    writer = ScanWriter.open(out, src.config["settings"], src.config["source"], overwrite=True)
    rs = np.random.RandomState(1)
    block = rs.standard_normal((part, dim)).astype(np.float16)
    try:
        for lo in range(0, n, part):
            k = min(part, n - lo)
            ids = pa.array([f"img/{i:08d}.jpg" for i in range(lo, lo + k)])
            images = pa.table({"image_id": ids, "path": ids, "label": pa.array(np.where(np.arange(lo, lo + k) % 3,
                                                                                      "a", "b")),
                               "width": pa.array(np.full(k, 640, np.int32)), "height": pa.array(np.full(k, 480,
                                                                                                      np.int32))})
            writer.write_unit({"images": images, "embeddings": embeddings_table(ids, block[:k], "float16")})
        writer.record_run({"images": n, "preprocess": None})
    finally:
        writer.close()
    return out


def timed_ask(source: Path, out: Path, words) -> dict:
    """`audit ask` in a process of its own: its phases and its peak memory (max RSS)."""
    code = ("import audit, json, resource, sys; s = audit.ask(sys.argv[1], sys.argv[2], words=sys.argv[3], "
            "device='cpu', quiet=True); print(json.dumps({'phases': s.config['runs'][-1]['phases'], "
            "'seconds': s.config['runs'][-1]['seconds'], 'rss': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))")
    out_ = subprocess.run([sys.executable, "-c", code, str(source), str(out), ",".join(words)], check=True,
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads(out_.stdout.strip().splitlines()[-1])


def rescan_rate(tmp: Path, model: str, n: int) -> float:
    folder = noise_folder(tmp / f"sample-{model}", n)
    start = time.perf_counter()
    audit.scan(folder, tmp / f"rescan-{model}", model=model, pretrained="none", opinion="probes", words=WORDS,
               workers=0, device="cpu", quiet=True)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="side by side: photos scanned, asked, rescanned")
    parser.add_argument("--million", type=int, default=1_000_000)
    parser.add_argument("--part", type=int, default=COMMIT_IMAGES,
                        help="images per stored part (a scan commits at most COMMIT_IMAGES, at least a minute's work)")
    parser.add_argument("--vit-sample", type=int, default=64, help="photos the ViT-B-32 rescan rate is timed on")
    args = parser.parse_args()
    logging.getLogger("audit").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        s = side_by_side(tmp, args.images)
        print(f"## ask against a probe-only rescan ({s['images']} photos, 5 words, audit-tiny, CPU)\n")
        print("| | images/s | ratio |\n|---|---:|---:|")
        print(f"| probe-only rescan | {s['rescan']:,.0f} | 1 |")
        print(f"| ask (model load apart) | {s['ask']:,.0f} | {s['ask'] / s['rescan']:,.0f}x |")
        print(f"\nlargest difference between the two scores: {s['max_diff']:.1e} (float16 storage)\n")

        rows = []
        for model, sizes in (("audit-tiny", (10_000, 100_000)), ("ViT-B-32", (10_000,))):
            seed = tmp / f"seed-{model}"
            audit.scan(noise_folder(tmp / f"seed-photos-{model}", 2), seed, model=model, pretrained="none",
                       opinion="probes", words="zebra", workers=0, device="cpu", quiet=True)
            rescan = rescan_rate(tmp, model, args.images if model == "audit-tiny" else args.vit_sample)
            for n in sizes:
                store = synthetic(seed, tmp / f"store-{model}", n, args.part)
                ask = timed_ask(store, tmp / f"asked-{model}-{n}", WORDS.split(","))
                seconds = ask["seconds"] - ask["phases"]["model"]
                rows.append((model, n, rescan, n / seconds, seconds, bytes_per_image(store)))
                shutil.rmtree(store)
        print("## stored images (5 words; the rescan timed on real photos)\n")
        print("| model | images | rescan images/s | ask images/s | ask s | ratio | embeddings, bytes per image "
              "(float16) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for model, n, rescan, ask, seconds, size in rows:
            print(f"| {model} | {n:,} | {rescan:,.1f} | {ask:,.0f} | {seconds:.3f} | {ask / rescan:,.0f}x | "
                  f"{size:,.0f} |")

        seed = tmp / "seed-ViT-B-32"
        print(f"\n## ask of 100 phrases over stored ViT-B-32 embeddings (parts of {args.part} images)\n")
        print("| images | text s | reading s | scoring s | waiting for writes s | total s (model load apart) | peak RSS MB |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for n in (args.million // 10, args.million):
            store = synthetic(seed, tmp / "store-big", n, args.part)
            ask = timed_ask(store, tmp / "asked-big", PHRASES)
            p = ask["phases"]
            total = ask["seconds"] - p["model"]
            print(f"| {n:,} | {p['text']:.1f} | {p['reading']:.1f} | {p['scoring']:.1f} | {p['writing']:.1f} | "
                  f"{total:.1f} | {ask['rss'] / 1024:,.0f} |")
            shutil.rmtree(store)
            shutil.rmtree(tmp / "asked-big")


if __name__ == "__main__":
    main()
