"""Issue #42's copies case: 150 unbiased demo scenes (north and south alternating, the same objects and backgrounds
at both sites) plus 25 near copies of one north photograph, a purple star on snow (each cropped by 1-3 pixels a
side, its brightness times 0.9-1.1, saved as JPEG at quality 60-95). Shared by tests/test_duplicates.py and
bench/duplicates.py."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import ImageEnhance

from audit.demo.scenes import BACKGROUNDS, COLOURS, SHAPES, make_scene

POLICY = """group_by = "label"
min_count = 3

[[watch]]
name = "copied"
words = ["purple", "star", "snow"]
"""


def make_case(root: Path, copies: int = 25, scenes: int = 150, seed: int = 0) -> Path:
    """The images in label folders and a manifest (path, label); returns the manifest."""
    rs = np.random.RandomState(seed)
    rows = ["path,label"]
    colours = list(COLOURS)
    for i in range(scenes):
        label = ("north", "south")[i % 2]
        j = i // 2  # each object and background once at each site
        scene = make_scene(50_000 + i, size=128, n_objects=1, shape=SHAPES[j % 8], colour=colours[(j + j // 8) % 8],
                           background=BACKGROUNDS[(j // 3) % 5])
        (root / label).mkdir(parents=True, exist_ok=True)
        scene.image.save(root / label / f"{i:04d}.png")
        rows.append(f"{label}/{i:04d}.png,{label}")
    if copies:
        original = make_scene(99_999, size=128, n_objects=1, shape="star", colour="purple", background="snow").image
        original.save(root / "north" / "star-00.png")
        rows.append("north/star-00.png,north")
        w, h = original.size
        for k in range(1, copies):
            a, b, c, d = rs.randint(1, 4, 4)
            img = ImageEnhance.Brightness(original.crop((a, b, w - c, h - d))).enhance(rs.uniform(0.9, 1.1))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=int(rs.randint(60, 96)))
            (root / "north" / f"star-{k:02d}.jpg").write_bytes(buf.getvalue())
            rows.append(f"north/star-{k:02d}.jpg,north")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return manifest
