"""`audit demo`: a generated dataset with a planted bias, scanned offline with the project's own CLIP.

The dataset's `label` is the shape of its one object (circle, square, triangle). The planted, spurious
correlation: most circles lie on grass, the other shapes rarely do. A model, or an audit, that links
"grass" to the circle label has found it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .scenes import BACKGROUNDS, COLOURS, make_scene

LABELS = ("circle", "square", "triangle")
# Measured with bench/demo_time.py to keep `make demo` within its time budget on a 2-core CPU.
DEMO_SETTINGS = dict(steps=40, candidates=8, views=16)


def make_dataset(root: Path, images: int = 48, seed: int = 0, bias: float = 0.85, size: int = 128) -> Path:
    """Images in label folders plus manifest.csv (path, label, colour, background, box). With bias > 0,
    circles lie on grass with probability `bias` and other shapes with probability 1 - bias; with bias
    None backgrounds are uniform."""
    rs = np.random.RandomState(seed)
    rows = ["path,label,colour,background,x0,y0,x1,y1"]
    others = [b for b in BACKGROUNDS if b != "grass"]
    for i in range(images):
        label = LABELS[i % len(LABELS)]
        if bias is None:
            background = BACKGROUNDS[rs.randint(len(BACKGROUNDS))]
        else:
            p_grass = bias if label == "circle" else 1 - bias
            background = "grass" if rs.rand() < p_grass else others[rs.randint(len(others))]
        colour = list(COLOURS)[rs.randint(len(COLOURS))]
        scene = make_scene(seed * 100_000 + i, size=size, n_objects=1, shape=label, colour=colour,
                           background=background)
        rel = f"{label}/{i:04d}.png"
        (root / label).mkdir(parents=True, exist_ok=True)
        scene.image.save(root / rel)
        x0, y0, x1, y1 = scene.objects[0].box
        rows.append(f"{rel},{label},{colour},{background},{x0},{y0},{x1},{y1}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return manifest


def summarize(scan) -> list[str]:
    """Per label, the words most over-represented against the other labels (share of images)."""
    tokens, imgs = scan.tokens(), scan.images()
    per_label = imgs.groupby("label").size()
    seen = tokens.merge(imgs[["image_id", "label"]], on="image_id")
    counts = seen.groupby(["label", "word"]).image_id.nunique().unstack(fill_value=0)
    lines = []
    for label in counts.index:
        share = counts.loc[label] / per_label[label]
        rest = counts.drop(index=label).sum() / (per_label.sum() - per_label[label])
        diff = (share - rest).sort_values(ascending=False).head(4)
        lines.append(f"  {label}: " + ", ".join(f"{w} ({share[w]:.0%} vs {rest[w]:.0%} of others)"
                                                for w in diff.index))
    return lines


def run_demo(out: str | Path, images: int = 48, quiet: bool = False, device: str = "auto") -> None:
    from ..scanner import run_scan

    out = Path(out)
    manifest = make_dataset(out / "dataset", images=images)
    scan = run_scan(str(manifest), str(out / "scan"), model="audit-demo", pretrained="auto", workers=0,
                    device=device, quiet=quiet, **DEMO_SETTINGS)
    print(f"\nDemo dataset: {manifest} ({len(scan.images())} images labelled by shape; planted bias: most "
          "circles lie on grass, other shapes rarely)")
    print(f"Scan: {out / 'scan'} (Parquet tables images, tokens, heatmaps, errors)")
    print("Words CLIP attaches to each label far more than to the others:")
    for line in summarize(scan):
        print(line)
    print(f"Read it back: python -c \"import audit; print(audit.Scan('{out / 'scan'}').tokens())\"", file=sys.stdout)
