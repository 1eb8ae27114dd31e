"""`audit explain`: the single-image view. For each image, every word's heatmap as a labelled overlay tile,
and one mosaic of the image with all its tiles.

The images are scanned like any dataset (a manifest of their paths into OUT/scan, so re-running resumes),
then drawn from the stored rows: what the tiles show is exactly what a scan stores.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from audit.errors import AuditError
from audit.outputs.overlay import overlay
from audit.scanner.decode import DecodeError, fit, open_rgb
from audit.scanner.sources import IMAGE_EXTENSIONS
from audit.store.schema import ASCENT

FONT = Path(__file__).with_name("fonts") / "DejaVuSans-Bold.ttf"
TILE = 256
LABEL_H = 40
MAX_NAME = 48


@dataclass
class Explained:
    image_id: str
    folder: Path
    mosaic: Path
    tiles: list[Path] = field(default_factory=list)
    words: list[tuple[str, str, float]] = field(default_factory=list)  # kind, word, cosine


def safe_name(text: str, limit: int = MAX_NAME) -> str:
    """A file-name fragment for any string: ASCII letters, digits, '-' and '_' only, never empty, never
    '.' or '..', at most `limit` characters. Distinct inputs are kept apart by the caller's prefix."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", ascii_text).strip("-_")[:limit].strip("-_")
    return slug or "x" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def _image_folder(image_id: str) -> str:
    stem = safe_name(Path(image_id).stem, 32)
    return f"{stem}-{hashlib.sha256(image_id.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def collect_images(inputs: list[str | os.PathLike]) -> list[Path]:
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            found.append(p)
        else:
            raise AuditError(f"{p} does not exist; pass image files or folders")
    unique = list(dict.fromkeys(f.resolve() for f in found))
    if not unique:
        raise AuditError("no images found in " + ", ".join(map(str, inputs)))
    return unique


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONT), size)


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def label_tile(picture: Image.Image, title: str, subtitle: str) -> Image.Image:
    """The picture with a white strip below it holding the title (the word) and a subtitle (its cosine)."""
    w, h = picture.size
    tile = Image.new("RGB", (w, h + LABEL_H), "white")
    tile.paste(picture, (0, 0))
    draw = ImageDraw.Draw(tile)
    big, small = _font(16), _font(12)
    draw.text((6, h + 3), _fit_text(draw, title, big, w - 12), fill=(20, 20, 20), font=big)
    draw.text((6, h + 23), _fit_text(draw, subtitle, small, w - 12), fill=(90, 90, 90), font=small)
    return tile


def caption(kind: str, cosine: float, grid: np.ndarray) -> str:
    """The line under a tile. A grid without positive relevance draws as a uniformly dark tile; say so, or
    it reads as a rendering fault."""
    text = ("" if kind == ASCENT else "probe · ") + f"cosine {cosine:.3f}"
    return text + (" · no positive relevance" if not (grid > 0).any() else "")


def mosaic(tiles: list[Image.Image], gap: int = 6) -> Image.Image:
    """Tiles of equal size in a square-ish grid (columns = ceil(sqrt(n)))."""
    n = len(tiles)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    w, h = tiles[0].size
    out = Image.new("RGB", (cols * w + (cols + 1) * gap, rows * h + (rows + 1) * gap), (235, 235, 235))
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        out.paste(t, (gap + c * (w + gap), gap + r * (h + gap)))
    return out


def render(scan_dir: str | os.PathLike, out: str | os.PathLike, tile: int = TILE,
           only: set[str] | None = None) -> list[Explained]:
    """Tiles and mosaics for the images of a scan (all, or the image_ids in `only`), into out/<image>/."""
    from audit.store.reader import Scan

    scan = Scan(scan_dir)
    runs = scan.config.get("runs", [])
    preprocess = next((r["preprocess"] for r in reversed(runs) if r.get("preprocess")), {})
    size = preprocess.get("size", [224, 224])
    images = scan.images()
    tokens = scan.tokens()[["image_id", "kind", "word", "word_rank", "word_cosine"]]
    heat = scan.heatmaps()[["image_id", "kind", "word", "grid", "grid_h", "grid_w"]]
    rows = tokens.merge(heat, on=["image_id", "kind", "word"])
    rows["order"] = (rows.kind != ASCENT).astype(int)  # the ascent's words first, then the probes
    rows = rows.sort_values(["image_id", "order", "word_rank"])
    by_image = dict(iter(rows.groupby("image_id", sort=False)))
    done = []
    for im in images.sort_values("image_id").itertuples():
        if only is not None and im.image_id not in only:
            continue
        try:
            arr, _ = fit(open_rgb(im.path, None), size if isinstance(size, int) else tuple(size),
                         preprocess.get("resize_mode", "shortest"), "bicubic")
        except DecodeError as e:
            print(f"audit explain: cannot redraw {im.path}: {e}", file=sys.stderr)
            continue
        frame = Image.fromarray(arr).resize((tile, round(tile * arr.shape[0] / arr.shape[1])),
                                            Image.Resampling.BICUBIC)
        folder = Path(out) / _image_folder(im.image_id)
        folder.mkdir(parents=True, exist_ok=True)
        result = Explained(im.image_id, folder, folder / "mosaic.png")
        pictures = [label_tile(frame, Path(im.image_id).name, "the image as the model sees it")]
        words = by_image.get(im.image_id, pd.DataFrame(columns=rows.columns))
        for k, r in enumerate(words.itertuples()):
            grid = np.asarray(r.grid, dtype=np.float32).reshape(r.grid_h, r.grid_w)
            picture = label_tile(overlay(frame, grid), r.word, caption(r.kind, r.word_cosine, grid))
            path = folder / f"{k + 1:02d}-{'' if r.kind == ASCENT else 'probe-'}{safe_name(r.word)}.png"
            picture.save(path)
            pictures.append(picture)
            result.tiles.append(path)
            result.words.append((r.kind, r.word, float(r.word_cosine)))
        mosaic(pictures).save(result.mosaic)
        done.append(result)
    return done


def _manifest(paths: list[Path], out: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "images.parquet"
    table = pa.table({"path": [str(p) for p in paths]})
    tmp = out / ".tmp-images.parquet"
    pq.write_table(table, tmp)
    tmp.replace(manifest)
    return manifest


def explain(inputs: list[str | os.PathLike], out: str | os.PathLike, tile: int = TILE,
            **scan_options) -> list[Explained]:
    """Scan the given images (files or folders) into out/scan and draw their tiles and mosaics."""
    from audit.scanner.pipeline import run_scan

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AuditError(f"--out {out} is a file; pass a folder")
    paths = collect_images(inputs)
    scan_options.setdefault("workers", 0)
    # One scan per output folder: its manifest is rewritten for this call, and images scanned before under
    # the same folder stay (resume); --overwrite starts the folder's scan over.
    run_scan(str(_manifest(paths, out)), str(out / "scan"), **scan_options)
    if tile < 64:
        raise AuditError(f"--tile must be at least 64 pixels, not {tile}")
    return render(out / "scan", out, tile, only={str(p) for p in paths})
