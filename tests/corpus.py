"""A corpus of valid images of the kinds real datasets hold, generated at test time (nothing large is committed).

Sizes that phones, cameras and scrapes produce, every format and mode Pillow writes that a dataset may hold,
all eight EXIF orientations, and file names that are non-ASCII, very long or not UTF-8 at all. Each entry
records the size the image has once oriented, so a test can check what was stored, not only that something was.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# (width, height): sizes of photos, screenshots and scrapes, and the sizes issue #16 found dropped at 224 px
# (1280x853, 3009x3478, 3550x428, 1674x253, 2090x1758) and at the demo's 64 px (64x49).
PHOTO_SIZES = [
    (4032, 3024), (3024, 4032),  # 4:3 phone, both orientations
    (3000, 2000), (2000, 3000),  # 3:2 camera
    (1920, 1080), (1080, 1920),  # 16:9
    (8000, 1000), (1000, 8000),  # panoramas
    (150, 150), (32, 24), (1, 1), (3, 1000), (1000, 3), (997, 13),  # thumbnails and odd ones
    (1280, 853), (3009, 3478), (3550, 428), (1674, 253), (2090, 1758), (64, 49),
]
DROPPED_BEFORE = [(1280, 853), (3009, 3478), (3550, 428), (1674, 253), (2090, 1758), (64, 49)]


@dataclass(frozen=True)
class Item:
    name: str  # file name inside the corpus folder (may hold surrogate escapes)
    size: tuple[int, int]  # (width, height) after EXIF orientation


def smooth(size: tuple[int, int], seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A smooth colour field of any size, cheap to make and to compress (noise upsampled)."""
    rs = np.random.RandomState(seed)
    small = Image.fromarray(rs.randint(0, 255, (8, 8, 3), dtype=np.uint8))
    img = small.resize(size, Image.Resampling.BILINEAR)
    return img if mode == "RGB" else img.convert(mode)


def _save(img: Image.Image, path: Path, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)


def _formats(root: Path) -> list[Item]:
    """Every format and mode a dataset may hold, at an odd size so no format hides behind a square."""
    w, h = 301, 227
    base = smooth((w, h), seed=1)
    items: list[tuple[str, Image.Image, dict]] = [
        ("jpeg-baseline.jpg", base, {"quality": 90}),
        ("jpeg-progressive.jpg", base, {"progressive": True, "quality": 85}),
        ("jpeg-cmyk.jpg", base.convert("CMYK"), {}),
        ("jpeg-grey.jpg", base.convert("L"), {}),
        ("jpeg-444.jpeg", base, {"subsampling": 0}),
        ("png-1bit.png", base.convert("1"), {}),
        ("png-grey.png", base.convert("L"), {}),
        ("png-grey-alpha.png", base.convert("LA"), {}),
        ("png-palette.png", base.convert("P", palette=Image.Palette.ADAPTIVE), {}),
        ("png-rgba.png", base.convert("RGBA"), {}),
        ("png-16bit.png", Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257), {}),
        ("tiff-rgb.tif", base, {}),
        ("tiff-lzw.tiff", base, {"compression": "tiff_lzw"}),
        ("tiff-float.tif", Image.fromarray(np.asarray(base.convert("L"), np.float32) / 255.0), {}),
        ("tiff-16bit.tif", Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257), {}),
        ("webp-lossy.webp", base, {"quality": 80}),
        ("webp-lossless.webp", base, {"lossless": True}),
        ("webp-alpha.webp", base.convert("RGBA"), {}),
        ("bmp.bmp", base, {}),
        ("ppm.ppm", base, {}),
    ]
    pal = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    items.append(("png-palette-transparent.png", pal, {"transparency": 0}))
    rgba = np.asarray(base.convert("RGBA")).copy()
    rgba[: h // 2, :, 3] = 0  # half transparent, as cut-outs are
    items.append(("png-rgba-cutout.png", Image.fromarray(rgba), {}))
    out = []
    for name, img, kw in items:
        _save(img, root / "formats" / name, **kw)
        out.append(Item(f"formats/{name}", (w, h)))
    frames = [smooth((w, h), seed=s).convert("P", palette=Image.Palette.ADAPTIVE) for s in (2, 3, 4)]
    _save(frames[0], root / "formats" / "animated.gif", save_all=True, append_images=frames[1:], duration=80,
          loop=0)
    out.append(Item("formats/animated.gif", (w, h)))
    return out


def _orientations(root: Path) -> list[Item]:
    w, h = 320, 200
    out = []
    for o in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = o
        _save(smooth((w, h), seed=o), root / "orientation" / f"exif-{o}.jpg", exif=exif)
        out.append(Item(f"orientation/exif-{o}.jpg", (h, w) if o >= 5 else (w, h)))  # 5-8 turn by 90 degrees
    return out


def _sizes(root: Path) -> list[Item]:
    out = []
    for i, (w, h) in enumerate(PHOTO_SIZES):
        name = f"sizes/{w}x{h}.jpg"
        _save(smooth((w, h), seed=10 + i), root / name, quality=70)
        out.append(Item(name, (w, h)))
    return out


def _names(root: Path) -> list[Item]:
    names = ["names/фото 日本 ü.jpg", "names/" + "é" * 120 + ".jpg", "names/" + "x" * 240 + ".png",
             "names/spaces and 'quotes' & <tags>.png",
             "names/" + os.fsdecode(b"caf\xe9-latin1.png")]  # not valid UTF-8: stored with a \xNN escape
    out = []
    for k, name in enumerate(names):
        _save(smooth((97, 61), seed=40 + k), root / name)
        out.append(Item(name, (97, 61)))
    return out


def make_corpus(root: Path, parts: tuple[str, ...] = ("formats", "orientation", "sizes", "names")) -> list[Item]:
    """Write the corpus under `root`; returns what each file is."""
    makers = {"formats": _formats, "orientation": _orientations, "sizes": _sizes, "names": _names}
    return [item for part in parts for item in makers[part](root)]
