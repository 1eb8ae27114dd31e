"""Drawing `audit explain`'s single-image view from a scan: for each image, every word's heatmap as a labelled
overlay tile, and one mosaic of the image with all its tiles. What the tiles show is exactly what a scan
stores (audit.api.explain scans the images first).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
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

from audit.outputs.files import write_text
from audit.outputs.overlay import overlay
from audit.sources.access import SourceImages, open_fetched
from audit.sources.decode import DecodeError, fit
from audit.store.query import WordFilter
from audit.store.schema import ASCENT, CONCEPT, PROBE
from audit.words import clean_words

log = logging.getLogger("audit.explain")
FONT = Path(__file__).with_name("fonts") / "DejaVuSans-Bold.ttf"
TILE = 256
SHOWN_SEQUENCES = 3  # sequences printed per image on the terminal; opinion.txt has them all
LABEL_H = 40
MAX_NAME = 48


@dataclass
class ExplainedWord:
    kind: str  # ascent, concept or probe
    word: str
    cosine: float  # the word alone with the un-augmented image
    weight: float | None  # a concept's weight in the decomposition
    filtered: str | None  # why the statistics leave it out ('stop word', 'cosine'); None: it is counted
    reason: str  # `filtered` in words, with the numbers behind it ("" when counted)
    tile: Path

    @property
    def counted(self) -> bool:
        return self.filtered is None


@dataclass
class Sequence:
    rank: int  # 0 = the best
    text: str  # decoded, special tokens removed: what a text-to-image prompt can take as it is
    cosine: float  # mean cosine with the image's augmented views
    words: list[str]


@dataclass
class Explained:
    image_id: str
    folder: Path
    mosaic: Path
    opinion: Path
    words: list[ExplainedWord] = field(default_factory=list)  # counted words first, then the filtered ones
    sequences: list[Sequence] = field(default_factory=list)  # the ascent's stored sequences, best first

    @property
    def tiles(self) -> list[Path]:
        return [w.tile for w in self.words]

    def as_dict(self) -> dict:
        return {"image_id": self.image_id, "mosaic": str(self.mosaic), "opinion": str(self.opinion),
                "sequences": [dataclasses.asdict(q) for q in self.sequences],
                "words": [{**{k: v for k, v in dataclasses.asdict(w).items() if k != "tile"},
                           "counted": w.counted, "tile": str(w.tile)} for w in self.words]}


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


def label_tile(picture: Image.Image, title: str, subtitle: str, muted: bool = False) -> Image.Image:
    """The picture with a strip below it holding the title (the word) and a subtitle (its cosine); a muted
    strip (grey, grey text) marks a word the statistics leave out."""
    w, h = picture.size
    tile = Image.new("RGB", (w, h + LABEL_H), (222, 222, 222) if muted else "white")
    tile.paste(picture, (0, 0))
    draw = ImageDraw.Draw(tile)
    big, small = _font(16), _font(12)
    draw.text((6, h + 3), _fit_text(draw, title, big, w - 12), fill=(110, 110, 110) if muted else (20, 20, 20),
              font=big)
    draw.text((6, h + 23), _fit_text(draw, subtitle, small, w - 12), fill=(90, 90, 90), font=small)
    return tile


def caption(kind: str, cosine: float, grid: np.ndarray, weight: float | None = None, reason: str = "") -> str:
    """The line under a tile. A grid without positive relevance draws as a uniformly dark tile; say so, or
    it reads as a rendering fault. A word the statistics leave out says so first, with the reason."""
    prefix = {ASCENT: "", CONCEPT: "concept · " + ("" if weight is None else f"weight {weight:.3f} · "),
              PROBE: "probe · "}[kind]
    text = prefix + (f"not counted: {reason}" if reason else f"cosine {cosine:.3f}")
    return text + (" · no positive relevance" if not (grid > 0).any() else "")


def reason_text(filtered: str | None, cosine: float, best: float | None, words: WordFilter,
                short: bool = False) -> str:
    """Why the statistics leave a word out, with the numbers behind it; `short` fits a tile's caption."""
    if filtered == "cosine":
        if short:
            return f"cosine {cosine:.3f} < {words.min_relative_cosine * best:.3f}"
        return f"cosine {cosine:.3f} < {words.min_relative_cosine:g} × best {best:.3f}"
    return filtered or ""


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
           only: set[str] | None = None, words: WordFilter | None = None) -> list[Explained]:
    """Tiles, mosaics and opinion.txt for the images of a scan (all, or the image_ids in `only`), into
    out/<image>/. `words` is the filter the statistics count words with (default: the report's); the words
    it leaves out come after the counted ones, marked, with the reason."""
    from audit.analysis.associations import word_filter
    from audit.store.query import ScanQuery

    words = word_filter() if words is None else words
    q = ScanQuery.open(scan_dir)
    scan = q.scan
    runs = scan.config.get("runs", [])
    preprocess = next((r["preprocess"] for r in reversed(runs) if r.get("preprocess")), {})
    size = preprocess.get("size", [224, 224])
    images = scan.images().sort_values("image_id")
    if only is not None:
        images = images[images.image_id.isin(only)]
    rows = q.judged(words, list(images.image_id))
    # Probe words are compared by their cosines over every image whatever they are: no filter applies.
    rows.loc[rows.kind == PROBE, "filtered"] = None
    heat = scan.heatmaps()[["image_id", "kind", "word", "grid", "grid_h", "grid_w"]]
    rows = rows.merge(heat, on=["image_id", "kind", "word"])
    rows["order"] = rows.kind.map({ASCENT: 0, CONCEPT: 1, PROBE: 2})  # the ascent's words, concepts, probes
    rows["left_out"] = rows.filtered.notna()
    rows = rows.sort_values(["image_id", "left_out", "order", "word_rank"])
    by_image = dict(iter(rows.groupby("image_id", sort=False)))
    settings = scan.config.get("settings", {})
    done = []
    # The images, read again by their keys whatever the source, in the rows' order.
    fetched = SourceImages(scan.config.get("source")).stream(zip(images.image_id, images.path, strict=True))
    for im, (_, image) in zip(images.itertuples(), fetched, strict=True):
        try:
            arr, _ = fit(open_fetched(image), size if isinstance(size, int) else tuple(size),
                         preprocess.get("resize_mode", "shortest"), "bicubic")
        except (DecodeError, OSError) as e:
            log.warning(f"audit explain: cannot redraw {im.path}: {e}")
            continue
        frame = Image.fromarray(arr).resize((tile, round(tile * arr.shape[0] / arr.shape[1])),
                                            Image.Resampling.BICUBIC)
        folder = Path(out) / _image_folder(im.image_id)
        folder.mkdir(parents=True, exist_ok=True)
        result = Explained(im.image_id, folder, folder / "mosaic.png", folder / "opinion.txt")
        pictures = [label_tile(frame, Path(im.image_id).name, "the image as the model sees it")]
        found = by_image.get(im.image_id, pd.DataFrame(columns=rows.columns))
        for k, r in enumerate(found.itertuples()):
            grid = np.asarray(r.grid, dtype=np.float32).reshape(r.grid_h, r.grid_w)
            weight = None if pd.isna(r.weight) else float(r.weight)
            filtered = None if pd.isna(r.filtered) else str(r.filtered)
            best = None if pd.isna(r.best) else float(r.best)
            reason = reason_text(filtered, float(r.word_cosine), best, words)
            short = reason_text(filtered, float(r.word_cosine), best, words, short=True)
            picture = label_tile(overlay(frame, grid), r.word, caption(r.kind, r.word_cosine, grid, weight, short),
                                 muted=filtered is not None)
            path = folder / (f"{k + 1:02d}-{'' if filtered is None else 'not-counted-'}"
                             f"{'' if r.kind == ASCENT else r.kind + '-'}{safe_name(r.word)}.png")
            picture.save(path)
            pictures.append(picture)
            result.words.append(ExplainedWord(r.kind, r.word, float(r.word_cosine), weight, filtered, reason, path))
        ascent = found[found.kind == ASCENT].drop_duplicates("seq_rank").sort_values("seq_rank")
        result.sequences = [Sequence(int(s.seq_rank), s.seq_text, float(s.seq_cosine), clean_words(s.seq_text))
                            for s in ascent.itertuples()]
        mosaic(pictures).save(result.mosaic)
        write_text(result.opinion, opinion_text(result, settings), "opinion.txt")
        done.append(result)
    return done


def opinion_text(e: Explained, settings: dict) -> str:
    """CLIP's opinion of one image as text, as the origin script gave it: the best token sequences (to paste
    into a text-to-image prompt, odd tokens and all), then every word, counted or not and why."""
    model = f"{settings.get('model', '?')} ({settings.get('pretrained', '?')})"
    lines = [f"CLIP's opinion of {e.image_id}", f"model: {model}", ""]
    status = {(w.kind, w.word): w for w in e.words}
    if e.sequences:
        lines += ["The best token sequences the ascent found, best first, with their cosine with the image's",
                  "augmented views. Paste one into a text-to-image prompt to see what CLIP makes of the image.", ""]
        for s in e.sequences:
            marks = [w + ("" if status.get((ASCENT, w)) is None or status[(ASCENT, w)].counted else " (not counted)")
                     for w in s.words]
            lines += [f"{s.rank + 1:>3}. {s.cosine:.3f}  {s.text}", f"     words: {', '.join(marks) or '-'}"]
        lines.append("")
    for title, kind in (("Ascent words", ASCENT), ("Concepts", CONCEPT), ("Probe words", PROBE)):
        rows = [w for w in e.words if w.kind == kind]
        if not rows:
            continue
        lines.append(f"{title} (cosine of the word alone with the image" + (", weight" if kind == CONCEPT else "")
                     + "):")
        for w in rows:
            weight = "" if w.weight is None else f"  weight {w.weight:.3f}"
            mark = "counted" if w.counted else f"not counted: {w.reason}"
            lines.append(f"  {w.word:<24} {w.cosine:.3f}{weight}  {mark}")
        lines.append("")
    return "\n".join(lines)


def explained_text(done: list[Explained]) -> str:
    """What `audit explain` prints: per image its best sequences, its counted and left-out words, its files."""
    lines = []
    for e in done:
        lines.append(e.image_id)
        for s in e.sequences[:SHOWN_SEQUENCES]:
            lines.append(f"  {s.cosine:.3f}  {s.text}")
        if len(e.sequences) > SHOWN_SEQUENCES:
            lines.append(f"  ... {len(e.sequences) - SHOWN_SEQUENCES} more sequence(s) in opinion.txt")
        counted = [f"{w.word} ({w.cosine:.2f})" for w in e.words if w.counted]
        left_out = [f"{w.word} ({w.reason})" for w in e.words if not w.counted]
        lines.append(f"  counted: {', '.join(counted) or 'none'}")
        if left_out:
            lines.append(f"  not counted: {', '.join(left_out)}")
        lines.append(f"  mosaic: {e.mosaic} ({len(e.tiles)} tiles); opinion: {e.opinion}")
    return "\n".join(lines) + ("\n" if lines else "")


def explained_json(done: list[Explained]) -> str:
    return json.dumps({"images": [e.as_dict() for e in done]}, indent=2, ensure_ascii=False) + "\n"


def write_json(done: list[Explained], path: str | os.PathLike) -> Path:
    return write_text(path, explained_json(done), "explain.json")
