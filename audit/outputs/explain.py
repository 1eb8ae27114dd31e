"""Drawing `audit explain`'s single-image view from a scan: for each image, every word's heatmap as a labelled
overlay tile, and one mosaic of the image with all its tiles. What the tiles show is exactly what a scan
stores (audit.api.explain scans the images first).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from audit.outputs.overlay import overlay
from audit.sources.decode import DecodeError, fit, open_rgb
from audit.store.schema import ASCENT, CONCEPT, PROBE

log = logging.getLogger("audit.explain")
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


def caption(kind: str, cosine: float, grid: np.ndarray, weight: float | None = None) -> str:
    """The line under a tile. A grid without positive relevance draws as a uniformly dark tile; say so, or
    it reads as a rendering fault."""
    prefix = {ASCENT: "", CONCEPT: "concept · " + ("" if weight is None else f"weight {weight:.3f} · "),
              PROBE: "probe · "}[kind]
    text = prefix + f"cosine {cosine:.3f}"
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
    tokens = scan.tokens()[["image_id", "kind", "word", "word_rank", "word_cosine", "weight"]]
    heat = scan.heatmaps()[["image_id", "kind", "word", "grid", "grid_h", "grid_w"]]
    rows = tokens.merge(heat, on=["image_id", "kind", "word"])
    rows["order"] = rows.kind.map({ASCENT: 0, CONCEPT: 1, PROBE: 2})  # the ascent's words, concepts, probes
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
            log.warning(f"audit explain: cannot redraw {im.path}: {e}")
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
            weight = None if pd.isna(r.weight) else float(r.weight)
            picture = label_tile(overlay(frame, grid), r.word, caption(r.kind, r.word_cosine, grid, weight))
            path = folder / f"{k + 1:02d}-{'' if r.kind == ASCENT else r.kind + '-'}{safe_name(r.word)}.png"
            picture.save(path)
            pictures.append(picture)
            result.tiles.append(path)
            result.words.append((r.kind, r.word, float(r.word_cosine)))
        mosaic(pictures).save(result.mosaic)
        done.append(result)
    return done
