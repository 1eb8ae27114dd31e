"""`audit demo`: a generated, labelled dataset scanned offline.

Until the project's own trained demo CLIP exists, the scan uses audit-tiny with random weights: the words are
meaningless, but every stage (loader, ascent, relevancy, statistics, Parquet) runs end to end.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "yellow": (235, 210, 30), "white": (245, 245, 245)}
BACKGROUNDS = {"grass": (60, 150, 50), "sand": (210, 190, 130), "water": (40, 110, 190)}


def draw_scene(rs: np.random.RandomState, shape: str, colour: str, background: str, size: int = 96):
    """One object on a noisy background; returns (image, box in pixels)."""
    base = np.array(BACKGROUNDS[background], dtype=np.float64)
    noise = rs.normal(0, 18, (size, size, 3))
    img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    r = rs.randint(size // 7, size // 4)
    cx, cy = rs.randint(r, size - r), rs.randint(r, size - r)
    box = (cx - r, cy - r, cx + r, cy + r)
    d = ImageDraw.Draw(img)
    if shape == "circle":
        d.ellipse(box, fill=COLOURS[colour])
    else:
        d.rectangle(box, fill=COLOURS[colour])
    return img, box


def make_dataset(root: Path, images: int = 48, seed: int = 0, bias: float = 0.9) -> Path:
    """Labelled folders circle/ and square/ with a planted correlation: circles mostly lie on grass."""
    rs = np.random.RandomState(seed)
    rows = ["path,label,colour,background,x0,y0,x1,y1"]
    for i in range(images):
        shape = "circle" if i % 2 == 0 else "square"
        grass = rs.rand() < (bias if shape == "circle" else 1 - bias)
        background = "grass" if grass else str(rs.choice(["sand", "water"]))
        colour = str(rs.choice(list(COLOURS)))
        img, box = draw_scene(rs, shape, colour, background)
        rel = f"{shape}/{i:04d}.png"
        (root / shape).mkdir(parents=True, exist_ok=True)
        img.save(root / rel)
        rows.append(f"{rel},{shape},{colour},{background},{box[0]},{box[1]},{box[2]},{box[3]}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root / "manifest.csv"


def run_demo(out: str | Path, images: int = 48, quiet: bool = False) -> None:
    from ..scanner import run_scan

    out = Path(out)
    manifest = make_dataset(out / "dataset", images=images)
    scan = run_scan(str(manifest), str(out / "scan"), model="audit-tiny", pretrained="none", steps=20,
                    candidates=8, views=16, workers=0, quiet=quiet)
    tokens, imgs = scan.tokens(), scan.images()
    merged = tokens.merge(imgs[["image_id", "label", "background"]], on="image_id")
    top = (merged.groupby(["label", "word"]).size().rename("images").reset_index()
           .sort_values(["label", "images", "word"], ascending=[True, False, True]).groupby("label").head(5))
    print(f"\nDemo dataset: {manifest} ({len(imgs)} images; circles mostly on grass)", file=sys.stdout)
    print(f"Scan: {out / 'scan'} (tables images, tokens, heatmaps, errors as Parquet)")
    print("Most frequent words per label (random tiny model until the trained demo CLIP lands):")
    for label, group in top.groupby("label"):
        print(f"  {label}: " + ", ".join(f"{w} ({n})" for w, n in zip(group.word, group.images, strict=True)))
    print(f"Read it back: python -c \"import audit; s = audit.Scan('{out / 'scan'}'); print(s.tokens())\"")
