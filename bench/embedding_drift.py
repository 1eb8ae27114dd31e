"""Embedding drift against the word distribution, on generated snapshots scanned with audit-demo (concepts).

Per repeat, three snapshots of `--images` single-object scenes drawn at random (new seeds each time): A; B from
the same generator (no drift: the false-alarm case); C the same but with a share `--moved` of its scenes shifted
(a planted shift): `--shift snow` puts them on one background, which a concept can name; `--shift dark` halves
their brightness (night); `--shift blur` blurs them (another camera, a Gaussian of 1.5 pixels), which no word
of the demo's captions (colours, shapes, backgrounds) names. A is compared with B and with C by the embedding test (audit diff's and
[drift] embeddings = true's: MMD, permutation p) and by the word distribution's Jensen-Shannon divergence over
the concepts (its permutation p, as drift.words reads it). Printed: how often each says p < 0.05.

    .venv/bin/python bench/embedding_drift.py [--repeats 8] [--images 200] [--moved 0.2] [--shift snow|dark|blur]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import audit
from audit.analysis.drift import compare
from audit.analysis.embedding_drift import embedding_drift
from audit.demo.scenes import make_scene
from audit.store.query import ScanQuery
from audit.store.schema import CONCEPT


def snapshot(root: Path, n: int, seed: int, moved: float, shift: str = "snow") -> Path:
    from PIL import ImageEnhance, ImageFilter

    folder = root / "photos"
    folder.mkdir(parents=True)
    for i in range(n):
        planted = i < round(moved * n)
        image = make_scene(seed * 1_000_000 + i, size=64, n_objects=1,
                           background="snow" if planted and shift == "snow" else None).image
        if planted and shift == "dark":
            image = ImageEnhance.Brightness(image).enhance(0.5)
        if planted and shift == "blur":
            image = image.filter(ImageFilter.GaussianBlur(1.5))
        image.save(folder / f"{i:05d}.png")
    audit.scan(folder, root / "scan", model="audit-demo", opinion="concepts", workers=0, device="cpu",
               quiet=True)
    return root / "scan"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--moved", type=float, default=0.2)
    parser.add_argument("--shift", choices=("snow", "dark", "blur"), default="snow")
    args = parser.parse_args()
    logging.getLogger("audit").setLevel(logging.WARNING)
    found = {("null", "embeddings"): 0, ("null", "words"): 0, ("shift", "embeddings"): 0, ("shift", "words"): 0}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        for r in range(args.repeats):
            a = snapshot(tmp / f"a{r}", args.images, 3 * r + 1, 0.0)
            b = snapshot(tmp / f"b{r}", args.images, 3 * r + 2, 0.0)
            c = snapshot(tmp / f"c{r}", args.images, 3 * r + 3, args.moved, args.shift)
            for case, other in (("null", b), ("shift", c)):
                e = embedding_drift(audit.Scan(a), audit.Scan(other), seed=r)
                words = compare(ScanQuery.open(a), ScanQuery.open(other), None, kind=CONCEPT).divergence
                found[case, "embeddings"] += e.p < 0.05
                found[case, "words"] += words.p < 0.05
                print(f"repeat {r} {case}: embeddings p={e.p:.3f}, concept words p={words.p:.3f}", flush=True)
    n = args.repeats
    what = {"snow": "on snow", "dark": "at half brightness", "blur": "blurred"}[args.shift]
    print(f"\n{n} repeats of {args.images} images a snapshot; the shift: {args.moved:.0%} of one snapshot's scenes "
          f"{what}\n")
    print("| test | false alarms (same generator) | planted shift found |\n|---|---:|---:|")
    for test, label in (("embeddings", "embeddings (MMD, permutation p < 0.05)"),
                        ("words", "concept distribution (JSD, permutation p < 0.05)")):
        print(f"| {label} | {found['null', test]} of {n} | {found['shift', test]} of {n} |")


if __name__ == "__main__":
    main()
