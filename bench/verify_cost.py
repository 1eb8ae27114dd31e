"""What `audit verify` costs on a CPU: seconds per image for faithfulness and per (finding, image) for grounding,
on audit-demo and on ViT-B-32 with random weights, and the whole default verification of the demo scan (the
target: within a minute on a 2-core CPU).

The dataset is the demo's (60 photos, the planted grass bias). audit-demo scans it with the concept opinion (quick,
and the planted finding to ground); ViT-B-32 with random weights with three probe words (it finds no concepts and
no findings), so its grounding cost is measured as what a (finding, image) pair encodes: 3 + 2 * random_draws blanked
images (2 more with an object box), timed on the model.

The same demo images stored as WebDataset shards (16 a shard) and as a Parquet file give rows of their own: verify
reads each image again by its stored key (audit.sources.access), and the ratio to the manifest's row is printed
(issue 44's target: within 1.5x per verified finding).

    .venv/bin/python bench/verify_cost.py [--images 60] [--vit-images 8]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import audit
from audit.demo import make_dataset


def timed(call):
    start = time.perf_counter()
    out = call()
    return time.perf_counter() - start, out


def measure(scan: Path, faith_images: int, **kw) -> dict:
    """Faithfulness alone, then grounding alone (each a verification of its own), timed."""
    work = scan.parent / "timed"
    shutil.copytree(scan, work)
    seconds_f, summary_f = timed(lambda: audit.verify(work, faithfulness_images=faith_images, quiet=True,
                                                      device="cpu", **kw))
    shutil.rmtree(work / "verification")
    seconds_g, summary_g = timed(lambda: audit.verify(work, group_by="label", faithfulness_images=0, quiet=True,
                                                      device="cpu", **kw))
    shutil.rmtree(work)
    images = int(summary_f.faithfulness.images.max()) if len(summary_f.faithfulness) else 0
    pairs = int(summary_g.grounding.images.sum()) if len(summary_g.grounding) else 0
    return {"faith_s": seconds_f, "faith_images": images, "ground_s": seconds_g, "pairs": pairs,
            "findings": len(summary_g.grounding)}


def pair_seconds(model: str, repeats: int = 3) -> float:
    """What one grounding (finding, image) pair encodes, timed: 3 + 2 * random_draws images (2 more with a box)."""
    import torch

    from audit.scanner.encoders import Towers
    from audit.scanner.models import load_model
    from audit.scanner.options import VerifyOptions

    loaded = load_model(model, "none", device="cpu")
    towers = Towers(loaded)
    size = loaded.preprocess["size"]
    size = (size, size) if isinstance(size, int) else tuple(int(x) for x in size)
    images = torch.randn(3 + 2 * VerifyOptions().random_draws + 2, 3, *size)
    with torch.no_grad():
        towers.encode_images(images)  # warm
        start = time.perf_counter()
        for _ in range(repeats):
            towers.encode_images(images)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--vit-images", type=int, default=8, help="faithfulness sample for ViT-B-32")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = make_dataset(root / "dataset", images=args.images)
        rows = []
        demo = root / "demo" / "scan"
        audit.scan(manifest, demo, model="audit-demo", opinion="concepts", workers=0, device="cpu", quiet=True)
        rows.append(("audit-demo", measure(demo, args.images, min_count=3)))
        # The same images as shards and as a Parquet file, written by the tests' writer of every source kind.
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.source_kinds import write_kinds

        kinds = write_kinds(manifest, root / "kinds")
        for kind, name in (("webdataset", "audit-demo, WebDataset shards"), ("parquet", "audit-demo, Parquet")):
            scan = root / kind / "scan"
            audit.scan(kinds[kind][0], scan, model="audit-demo", opinion="concepts", workers=0, device="cpu",
                       quiet=True)
            rows.append((name, measure(scan, args.images, min_count=3)))
        vit = root / "vit" / "scan"
        audit.scan(manifest, vit, model="ViT-B-32", pretrained="none", opinion="probes", words="grass,red,circle",
                   workers=0, device="cpu", quiet=True)
        vit_row = measure(vit, args.vit_images, min_count=3)
        vit_row["pair_estimate"] = pair_seconds("ViT-B-32")
        rows.append(("ViT-B-32 (random)", vit_row))
        print("| model | faithfulness: images | s per image | grounding: findings | (finding, image) pairs | "
              "s per pair |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, r in rows:
            per_pair = (f"{r['ground_s'] / r['pairs']:.3f}" if r["pairs"] else
                        f"{r['pair_estimate']:.3f} (the encodes of one pair, timed)")
            print(f"| {name} | {r['faith_images']} | {r['faith_s'] / max(r['faith_images'], 1):.3f} | "
                  f"{r['findings']} | {r['pairs']} | {per_pair} |")
        by = dict(rows)

        def per(r, seconds, count):
            return r[seconds] / max(r[count], 1)

        base = by["audit-demo"]
        for name in ("audit-demo, WebDataset shards", "audit-demo, Parquet"):
            r = by[name]
            finding = per(r, "ground_s", "findings") / per(base, "ground_s", "findings")
            image = per(r, "faith_s", "faith_images") / per(base, "faith_s", "faith_images")
            print(f"ratio: {name} / manifest: per verified finding {finding:.2f}x, per faithfulness image "
                  f"{image:.2f}x")
        # The target: `audit verify` of the demo scan (the ascent's words, as `audit demo` scans) with the
        # defaults, within a minute.
        from audit.demo import DEMO_SETTINGS

        ascent = root / "ascent" / "scan"
        audit.scan(manifest, ascent, model="audit-demo", workers=0, device="cpu", quiet=True, **DEMO_SETTINGS)
        seconds, summary = timed(lambda: audit.verify(ascent, group_by="label", min_count=3, quiet=True,
                                                      device="cpu"))
        print(f"\n`audit verify` of the demo scan ({args.images} images, ascent words, --group-by label, "
              f"defaults): {seconds:.1f} s")
        print(summary.text())


if __name__ == "__main__":
    main()
