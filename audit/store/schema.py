"""The data model of a scan directory: every table's Arrow schema, its column docs and the schema version.

Every writer and reader imports this module; nothing else spells a column name of a stored table.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

SCHEMA_VERSION = 2  # 2: tokens and heatmaps gain `kind` (ascent words vs probe words)

ASCENT = "ascent"
PROBE = "probe"
READABLE_VERSIONS = (1, 2)  # version 1 is read as version 2 with every word of kind 'ascent'

# errors.stage: whose fault an error row is. 'decode': the file cannot be read as an image (the data's).
# 'internal': an exception audit did not expect while reading a file it should have read (audit's: a bug).
DECODE = "decode"
INTERNAL = "internal"
# Scans written before 'internal' existed stored audit's own failures as 'decode' rows with this reason.
INTERNAL_REASON = "unexpected decoder failure"


TABLES = ("images", "tokens", "heatmaps", "errors")

# Metadata columns carried from a source are stored as strings next to these; a source column that
# collides with one of these names is rejected when the source is read.
IMAGES = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("x0", pa.float64()),
        pa.field("y0", pa.float64()),
        pa.field("x1", pa.float64()),
        pa.field("y1", pa.float64()),
    ]
)

TOKENS = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("word", pa.string(), nullable=False),
        pa.field("word_rank", pa.int16(), nullable=False),
        pa.field("seq_rank", pa.int16(), nullable=False),
        pa.field("seq_text", pa.string(), nullable=False),
        pa.field("seq_cosine", pa.float32(), nullable=False),
        pa.field("word_cosine", pa.float32(), nullable=False),
    ]
)

HEATMAPS = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("word", pa.string(), nullable=False),
        pa.field("grid_h", pa.int16(), nullable=False),
        pa.field("grid_w", pa.int16(), nullable=False),
        pa.field("grid", pa.list_(pa.float32()), nullable=False),
        pa.field("peak_x", pa.float32()),
        pa.field("peak_y", pa.float32()),
        pa.field("entropy", pa.float32()),
        pa.field("top10_mass", pa.float32()),
        pa.field("centre_mass", pa.float32()),
        pa.field("border_mass", pa.float32()),
        pa.field("box_mass", pa.float32()),
        pa.field("peak_in_box", pa.bool_()),
        pa.field("text_relevance", pa.list_(pa.float32()), nullable=False),
    ]
)

ERRORS = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {"images": IMAGES, "tokens": TOKENS, "heatmaps": HEATMAPS, "errors": ERRORS}

COLUMN_DOCS: dict[str, dict[str, str]] = {
    "images": {
        "image_id": "Stable id: path relative to the source folder or as written in the manifest.",
        "path": "Where the file was read from (absolute).",
        "label": "First-level sub-folder for folder sources (null at the root); the manifest's label column.",
        "width": "Width in pixels after EXIF orientation.",
        "height": "Height in pixels after EXIF orientation.",
        "x0": "Object box from the source, pixels of the oriented image (null when the source has none).",
        "y0": "See x0.",
        "x1": "See x0.",
        "y1": "See x0.",
    },
    "tokens": {
        "image_id": "The image.",
        "kind": "'ascent': a word the ascent found; 'probe': a word or phrase the user asked about (--words).",
        "word": "Ascent: a word of one of the best sequences, cleaned (no special tokens or punctuation). "
                "Probe: the word or phrase as given, lower case, spaces collapsed.",
        "word_rank": "Ascent: 0 = the word of the best sequence that came first. Probe: its place in --words. "
                     "Unique per (image, kind).",
        "seq_rank": "Ascent: rank (0 = best) of the sequence the word first appears in. Probe: -1.",
        "seq_text": "Ascent: that sequence, decoded. Probe: the phrase.",
        "seq_cosine": "Ascent: mean cosine of that sequence with the augmented views of the image. Probe: "
                      "equal to word_cosine.",
        "word_cosine": "Cosine of the word (or phrase) alone, tokenized as text, with the un-augmented image.",
    },
    "heatmaps": {
        "image_id": "The image.",
        "kind": "As in tokens: 'ascent' or 'probe'.",
        "word": "The word the heatmap explains (same text and kind as in tokens).",
        "grid_h": "Rows of the relevancy grid (the ViT patch grid).",
        "grid_w": "Columns of the relevancy grid.",
        "grid": "Raw relevancy of each patch for logit(image, word), row-major, not normalized; the method "
                "(scan.json settings.heatmap) is 'chefer' (gradient-weighted attention) or 'occlusion' (mean fall "
                "of the logit when windows covering the patch are blanked).",
        "peak_x": "Centre of the most relevant cell, 0 = left edge, 1 = right edge of the model's input.",
        "peak_y": "Centre of the most relevant cell, 0 = top, 1 = bottom.",
        "entropy": "Entropy of the normalized grid divided by log(cells): 1 = spread evenly, 0 = one cell.",
        "top10_mass": "Share of relevance in the top 10% of cells (at least one cell).",
        "centre_mass": "Share of relevance in cells whose centres lie in the middle half of both axes.",
        "border_mass": "Share of relevance in the outermost ring of cells.",
        "box_mass": "Share of relevance inside the source's object box (cells weighted by overlap); null without box.",
        "peak_in_box": "Whether the peak cell's centre lies inside the object box; null without box.",
        "text_relevance": "Relevancy of each of the word's (or phrase's) tokens in the text tower (between SOT "
                          "and EOT): Chefer's, or with heatmap 'occlusion' the logit's fall without the token.",
    },
    "errors": {
        "image_id": "The image that could not be scanned.",
        "path": "Where it was read from.",
        "stage": "Whose fault: 'decode' (the file could not be read as an image) or 'internal' (audit failed "
                 "on a file it should have read: a bug of audit, not of the data; older scans stored these as "
                 "'decode' with a reason starting 'unexpected decoder failure' and are read as 'internal').",
        "reason": "What went wrong, in one line. Only an image's latest failed attempt is read back, and none "
                  "for an image that a later run (--retry-errors) scanned.",
    },
}


def empty_table(name: str) -> pa.Table:
    return SCHEMAS[name].empty_table()


def conform(name: str, table: pa.Table) -> pa.Table:
    """Cast a freshly built table to its stored schema; extra image columns (source metadata) stay strings."""
    schema = SCHEMAS[name]
    if name == "images":
        extra = [f for f in table.schema if f.name not in schema.names]
        schema = pa.schema(list(schema) + [pa.field(f.name, pa.string()) for f in extra])
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise ValueError(f"table {name!r} lacks columns {missing}")
    return table.select(schema.names).cast(schema)


def upgrade(name: str, table: pa.Table, version) -> pa.Table:
    """Rows of an older schema version (or an older audit of this version) in the current layout."""
    if name == "errors" and table.num_rows:
        legacy = pc.and_(pc.equal(table["stage"], DECODE), pc.starts_with(table["reason"], INTERNAL_REASON))
        stage = pc.if_else(legacy, INTERNAL, table["stage"]).cast(pa.string())
        table = table.set_column(table.schema.get_field_index("stage"), table.schema.field("stage"), stage)
    if version == 1 and name in ("tokens", "heatmaps") and "kind" not in table.column_names:
        table = table.add_column(1, pa.field("kind", pa.string(), nullable=False),
                                 pa.array([ASCENT] * table.num_rows, pa.string()))
    return table
