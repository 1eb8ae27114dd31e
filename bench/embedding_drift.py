"""Embedding drift against the word distribution, on generated snapshots scanned with audit-demo (concepts).

Per repeat, three snapshots of `--images` single-object scenes drawn at random (new seeds each time): A; B from
the same generator (no drift: the false-alarm case); C the same but with a share `--moved` of its scenes shifted
(a planted shift): `--shift snow` puts them on one background; `--shift dark` halves their brightness (night);
`--shift noise` adds pixel noise (another camera, Gaussian, 25 levels); `--shift blur` blurs them (1.5 pixels).
The words stored are the concepts of `--vocabulary`: objects (the demo's shapes and colours: what a scan that
asked about the objects keeps, and none of it names a background or a camera) or all (the demo's own vocabulary,
which also names the backgrounds). A is compared with B and with C by the embedding test (audit diff's and
[drift] embeddings = true's: MMD over several kernel widths, permutation p), by the same test with the median
width alone (the usual rule), and by the word distribution's Jensen-Shannon divergence over the concepts (its
permutation p, as drift.words reads it). Printed: how often each says p < 0.05. Then, without a model, the two
embedding tests on generated clusters (`--clusters` repeats): a share of one sample moved to a new, tight cluster.
Also: whether the drift is said in words (the vocabulary entries that follow the test's witness, analysis.drift_words)
and whether the shift's own word (--shift snow: "snow") is among the first five.

    .venv/bin/python bench/embedding_drift.py [--repeats 8] [--images 400] [--moved 0.2]
        [--shift snow|dark|noise|blur] [--vocabulary objects|all]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import audit
from audit.analysis.drift import compare
from audit.analysis.embedding_drift import embedding_drift, mmd_test, sample
from audit.demo.scenes import COLOURS, SHAPES, make_scene
from audit.store.query import ScanQuery
from audit.store.schema import CONCEPT


def snapshot(root: Path, n: int, seed: int, moved: float, shift: str = "snow", vocabulary: str | None = None) -> Path:
    import numpy as np
    from PIL import Image, ImageEnhance, ImageFilter

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
        if planted and shift == "noise":
            noisy = np.asarray(image, np.float32) + np.random.default_rng(seed * 1_000_000 + i).normal(
                0, 25, (image.height, image.width, 3))
            image = Image.fromarray(noisy.clip(0, 255).astype(np.uint8))
        image.save(folder / f"{i:05d}.png")
    audit.scan(folder, root / "scan", model="audit-demo", opinion="concepts", vocabulary=vocabulary, workers=0,
               device="cpu", quiet=True)
    return root / "scan"


def generated_clusters(repeats: int, moved: float = 0.08, dim: int = 64, n: int = 200) -> tuple[int, int, int]:
    """How often the aggregated test and the median width alone find `moved` of one sample of unit vectors
    around 10 centres moved to an 11th, tight one: (found by aggregated, found by median alone, repeats)."""
    import numpy as np

    rs = np.random.default_rng(3)
    centres, new = rs.standard_normal((10, dim)), rs.standard_normal(dim)

    def draw(share: float) -> np.ndarray:
        x = centres[rs.integers(0, 10, n)] * 3 + rs.standard_normal((n, dim)) * 0.5
        k = int(share * n)
        x[:k] = new * 3 + rs.standard_normal((k, dim)) * 0.3
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    agg = median = 0
    for seed in range(repeats):
        x, y = draw(0.0), draw(moved)
        agg += mmd_test(x, y, 200, seed)[2] < 0.05
        median += mmd_test(x, y, 200, seed, scales=(1.0,))[2] < 0.05
    return agg, median, repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--moved", type=float, default=0.2)
    parser.add_argument("--shift", choices=("snow", "dark", "noise", "blur"), default="snow")
    parser.add_argument("--vocabulary", choices=("objects", "all"), default="objects")
    parser.add_argument("--clusters", type=int, default=40)
    args = parser.parse_args()
    logging.getLogger("audit").setLevel(logging.WARNING)
    tests = ("embeddings", "median", "words")
    found = {(case, test): 0 for case in ("null", "shift") for test in tests}
    spoke, named = {"null": 0, "shift": 0}, {"null": 0, "shift": 0}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        vocabulary = None
        if args.vocabulary == "objects":
            vocabulary = str(tmp / "objects.txt")
            Path(vocabulary).write_text("\n".join([*SHAPES, *COLOURS]) + "\n", encoding="utf-8")
        for r in range(args.repeats):
            a = snapshot(tmp / f"a{r}", args.images, 3 * r + 1, 0.0, vocabulary=vocabulary)
            b = snapshot(tmp / f"b{r}", args.images, 3 * r + 2, 0.0, vocabulary=vocabulary)
            c = snapshot(tmp / f"c{r}", args.images, 3 * r + 3, args.moved, args.shift, vocabulary)
            for case, other in (("null", b), ("shift", c)):
                drift = embedding_drift(audit.Scan(a), audit.Scan(other), seed=r)
                p = {"embeddings": drift.p,
                     "median": mmd_test(sample(audit.Scan(a).embedding_parts(), 1000, r),
                                        sample(audit.Scan(other).embedding_parts(), 1000, r), seed=r,
                                        scales=(1.0,))[2],
                     "words": compare(ScanQuery.open(a), ScanQuery.open(other), None, kind=CONCEPT).divergence.p}
                for test in tests:
                    found[case, test] += p[test] < 0.05
                # The drift in words is said only when the test finds drift (audit diff, [drift] embeddings).
                said = [w for w, _ in drift.words.arrived] if drift.p < 0.05 and drift.words is not None else []
                spoke[case] += bool(said)
                named[case] += args.shift in said  # the shift's own word ("snow") among the first five
                print(f"repeat {r} {case}: " + ", ".join(f"{k} p={v:.3f}" for k, v in p.items())
                      + (f"; more like {', '.join(said)}" if said else ""), flush=True)
    n = args.repeats
    what = {"snow": "on snow", "dark": "at half brightness", "noise": "with pixel noise", "blur": "blurred"}
    words = {"objects": "the objects' shapes and colours", "all": "the demo's whole vocabulary"}[args.vocabulary]
    print(f"\n{n} repeats of {args.images} images a snapshot, concepts over {words}; the shift: {args.moved:.0%} of "
          f"one snapshot's scenes {what[args.shift]}\n")
    print("| test | false alarms (same generator) | planted shift found |\n|---|---:|---:|")
    for test, label in (("embeddings", "embeddings (MMD over 4 kernel widths, audit's test)"),
                        ("median", "embeddings (MMD, the median width alone)"),
                        ("words", "concept distribution (JSD)")):
        print(f"| {label} | {found['null', test]} of {n} | {found['shift', test]} of {n} |")
    print(f"\nThe drift in words (analysis.drift_words, said when the embedding test finds drift): words said in "
          f"{spoke['null']} of {n} null pairs; on the shifted pairs, '{args.shift}' among the first five in "
          f"{named['shift']} of {n} (words said in {spoke['shift']}).")
    agg, median, k = generated_clusters(args.clusters)
    print(f"\nGenerated clusters (200 unit vectors a sample, 64 numbers, 8% of one moved to a new tight cluster), "
          f"found in {k} repeats: MMD over 4 widths {agg}, the median width alone {median}.")


if __name__ == "__main__":
    main()
