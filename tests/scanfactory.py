"""Build scan directories by hand (no model): exact counts for testing queries, statistics and reports."""

import numpy as np
import pyarrow as pa
from PIL import Image

from audit.store.schema import embeddings_table
from audit.store.writer import ScanWriter

SETTINGS = {"model": "hand-made", "pretrained": "none", "steps": 0}


def write_scan(out, images: list[dict], words: dict[str, list[str]], image_dir=None, errors=(), box_mass=None,
               probes: dict[str, list[tuple[str, float]]] | None = None, word_cosine=None,
               concepts: dict[str, list[tuple[str, float]]] | None = None, embeddings=None):
    """images: dicts with image_id and label (and other columns); words: image_id -> ascent words; box_mass:
    an optional function (image_id, word) -> value instead of the default pattern; probes: image_id ->
    (probe word, cosine) pairs; word_cosine: an optional function (image_id, word) -> an ascent word's own
    cosine (default 0.25; every image's best sequence scores 0.3); concepts: image_id -> (concept, weight);
    embeddings: an optional [n, D] array, one row per image, stored as float16 like a scan's."""
    writer = ScanWriter.open(out, SETTINGS, {"kind": "test"})
    try:
        paths = [""] * len(images)
        if image_dir is not None:
            for k in range(len(images)):
                paths[k] = str(image_dir / f"{k}.png")
                rs = np.random.RandomState(k)
                Image.fromarray(rs.randint(0, 255, (40, 40, 3), dtype=np.uint8)).save(paths[k])
        extra = sorted({k for im in images for k in im} - {"image_id", "label"})
        img_table = {
            "image_id": [im["image_id"] for im in images], "path": paths,
            "label": [im.get("label") for im in images], "width": [40] * len(images), "height": [40] * len(images),
            "x0": [10.0] * len(images), "y0": [10.0] * len(images), "x1": [30.0] * len(images),
            "y1": [30.0] * len(images), **{k: [im.get(k) for im in images] for k in extra},
        }
        pairs = [(i, w) for i, ws in words.items() for w in ws]
        n_ascent = len(pairs)
        probe_rows = [(i, w, c) for i, ps in (probes or {}).items() for w, c in ps]
        pairs += [(i, w) for i, w, _ in probe_rows]
        concept_rows = [(i, w, c) for i, cs in (concepts or {}).items() for w, c in cs]
        pairs += [(i, w) for i, w, _ in concept_rows]
        kinds = ["ascent"] * n_ascent + ["probe"] * len(probe_rows) + ["concept"] * len(concept_rows)
        grids = [np.eye(7, dtype=np.float32).ravel() * (1 + k % 3) for k in range(len(pairs))]
        n = len(pairs)
        own = [word_cosine(i, w) if word_cosine else 0.25 for i, w in pairs[:n_ascent]]
        tokens = {"image_id": [i for i, _ in pairs], "kind": kinds,
                  "word": [w for _, w in pairs], "word_rank": [0] * n,
                  "seq_rank": [0] * n_ascent + [-1] * (len(probe_rows) + len(concept_rows)),
                  "seq_text": [w for _, w in pairs],
                  "seq_cosine": [0.3] * n_ascent + [c for *_, c in probe_rows] + [0.2] * len(concept_rows),
                  "word_cosine": own + [c for *_, c in probe_rows] + [0.2] * len(concept_rows),
                  "weight": pa.array([None] * (n_ascent + len(probe_rows)) + [c for *_, c in concept_rows],
                                     pa.float32())}
        heat = {"image_id": tokens["image_id"], "kind": tokens["kind"], "word": tokens["word"], "grid_h": [7] * n,
                "grid_w": [7] * n,
                "grid": pa.array(grids, type=pa.list_(pa.float32())),
                "peak_x": [0.5] * n, "peak_y": [0.5] * n, "entropy": [0.1 * (k % 10) for k in range(n)],
                "top10_mass": [0.5] * n, "centre_mass": [0.5] * n,
                "border_mass": [0.05 * (k % 7) for k in range(n)],
                "box_mass": [box_mass(i, w) if box_mass else 0.1 * (k % 9) for k, (i, w) in enumerate(pairs)],
                "peak_in_box": [True] * n, "text_relevance": pa.array([[1.0]] * n, type=pa.list_(pa.float32()))}
        errs = {"image_id": [e for e in errors], "path": [e for e in errors], "stage": ["decode"] * len(errors),
                "reason": ["not an image file Pillow can read"] * len(errors)}
        unit = {"images": pa.table(img_table), "tokens": pa.table(tokens), "heatmaps": pa.table(heat),
                "errors": pa.table(errs)}
        if embeddings is not None:
            unit["embeddings"] = embeddings_table(pa.array(img_table["image_id"]), np.asarray(embeddings), "float16")
        writer.write_unit(unit)
        writer.record_run({"images": len(images), "preprocess": {"size": [224, 224], "resize_mode": "shortest"}})
    finally:
        writer.close()
    return out
