"""The data model of a scan directory: every table's Arrow schema, its column docs and the schema version.

Every writer and reader imports this module; nothing else spells a column name of a stored table.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# 2: tokens and heatmaps gain `kind` (ascent words vs probe words).
# 3: kind 'concept' (the concept decomposition); tokens gain `weight`, images gain `concept_cosine`.
# 4: the embeddings table (each image's embedding, for `audit ask`).
# 5: an embedding is stored as its values' bytes (a list of numbers took 7x as long to read back: bench/ask_cost.py).
# 6: images gain each image's fingerprints (pixel_sha256, phash, phash_mirror), for `audit duplicates`.
SCHEMA_VERSION = 6

ASCENT = "ascent"
PROBE = "probe"
CONCEPT = "concept"
KINDS = (ASCENT, CONCEPT, PROBE)
# Older versions are read (and resumed) as this one: every column added since is null in their rows, and a
# word without a kind (version 1) is an ascent word. Parts of several versions may share one scan directory.
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6)
# Settings added since version 2, with the value an older scan was made with: a resume of an older scan
# compares its settings with these filled in.
SETTINGS_ADDED = {"opinion": "ascent", "refine_words": False}

# errors.stage: whose fault an error row is. 'decode': the file cannot be read as an image (the data's).
# 'internal': an exception audit did not expect while reading a file it should have read (audit's: a bug).
DECODE = "decode"
INTERNAL = "internal"
# Scans written before 'internal' existed stored audit's own failures as 'decode' rows with this reason.
INTERNAL_REASON = "unexpected decoder failure"


TABLES = ("images", "tokens", "heatmaps", "errors", "embeddings")

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
        pa.field("concept_cosine", pa.float32()),
        pa.field("pixel_sha256", pa.string()),
        pa.field("phash", pa.int64()),
        pa.field("phash_mirror", pa.int64()),
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
        pa.field("weight", pa.float32()),
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

# One row per scanned image: its un-augmented image embedding (the vector probe scores and the concept
# decomposition start from), as the image tower returns it (not normalised), in float16 (the default) or float32
# (--embeddings); a scan made with --embeddings none, or by an audit before schema 4, has no rows here.
# Stored as the D values' little-endian bytes, a fixed-size binary column whose field metadata names the dtype
# (schema 4 stored a list of numbers: read too). Read back as EMBEDDINGS, a list of float32, or as one matrix
# (embedding_matrix).
EMBEDDING_TYPES = {"float16": "<f2", "float32": "<f4"}
EMBEDDINGS = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),
    ]
)


def embeddings_schema(dtype: str, dim: int) -> pa.Schema:
    """The embeddings table as stored: D values at a precision (EMBEDDINGS is how it reads back)."""
    width = np.dtype(EMBEDDING_TYPES[dtype]).itemsize * dim
    return pa.schema([EMBEDDINGS.field("image_id"),
                      pa.field("embedding", pa.binary(width), nullable=False, metadata={"dtype": dtype})])


def embeddings_table(ids: pa.Array, vectors: np.ndarray, dtype: str) -> pa.Table:
    """Rows of the embeddings table, as stored: each image's vector [n, D] at the precision `dtype`."""
    n, dim = vectors.shape
    raw = np.ascontiguousarray(vectors, dtype=EMBEDDING_TYPES[dtype])
    schema = embeddings_schema(dtype, dim)
    column = pa.FixedSizeBinaryArray.from_buffers(schema.field("embedding").type, n, [None, pa.py_buffer(raw)])
    return pa.Table.from_arrays([pa.array(ids, pa.string()), column], schema=schema)


def embedding_values(table: pa.Table) -> np.ndarray:
    """An embeddings table's vectors [n, D] as stored (float16 or float32; read-only, no copy when it can), whichever
    schema version stored them."""
    field = table.schema.field("embedding")
    column = table["embedding"].combine_chunks()
    if pa.types.is_fixed_size_binary(field.type):
        dtype = np.dtype(EMBEDDING_TYPES[(field.metadata or {}).get(b"dtype", b"").decode() or "float32"])
        width = field.type.byte_width
        data = np.frombuffer(column.buffers()[1], np.uint8, count=len(column) * width, offset=column.offset * width)
        return data.view(dtype).reshape(len(column), width // dtype.itemsize)
    return column.flatten().to_numpy(zero_copy_only=False).reshape(table.num_rows, -1)  # schema 4: a list


def embedding_matrix(table: pa.Table) -> np.ndarray:
    """An embeddings table's vectors as one float32 array [n, D], writable (float16 or float32 parts alike; a table
    of several parts' precisions is read part by part: Scan.embedding_parts)."""
    return np.require(embedding_values(table), dtype=np.float32, requirements="W")


def embedding_lists(table: pa.Table) -> pa.Table:
    """An embeddings table as it reads back (EMBEDDINGS): each vector a list of float32."""
    matrix = embedding_matrix(table)
    n, dim = matrix.shape if matrix.size else (table.num_rows, 0)
    offsets = pa.array(np.arange(0, n * dim + 1, max(dim, 1), dtype=np.int32)[:n + 1])
    values = pa.ListArray.from_arrays(offsets, pa.array(matrix.ravel(), pa.float32()))
    return pa.Table.from_arrays([table["image_id"], values], schema=EMBEDDINGS)


VERIFICATION_FOLDER = "verification"
# Written by `audit verify` into scan-dir/verification/ (never part of a scan's own commit): one row per
# (image, method, word) of the faithfulness part, one per (finding, image) of the grounding part.
VERIFICATION = pa.schema(
    [
        pa.field("part", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("word", pa.string(), nullable=False),
        pa.field("method", pa.string()),
        pa.field("deletion", pa.float32()),
        pa.field("insertion", pa.float32()),
        pa.field("deletion_curve", pa.list_(pa.float32())),
        pa.field("insertion_curve", pa.list_(pa.float32())),
        pa.field("column", pa.string()),
        pa.field("grp", pa.string()),
        pa.field("cells", pa.int16()),
        pa.field("cosine", pa.float32()),
        pa.field("drop_own", pa.float32()),
        pa.field("drop_random", pa.float32()),
        pa.field("drop_complement", pa.float32()),
        pa.field("drop_keep_random", pa.float32()),
        pa.field("drop_box", pa.float32()),
        pa.field("drop_outside_box", pa.float32()),
    ]
)

FINGERPRINTS_FOLDER = "fingerprints"
# Written by `audit duplicates` into scan-dir/fingerprints/fingerprints.parquet for a scan made before schema 6,
# whose images table holds no fingerprints: the same three columns, taken from the images read again.
FINGERPRINTS = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("pixel_sha256", pa.string(), nullable=False),
        pa.field("phash", pa.int64()),
        pa.field("phash_mirror", pa.int64()),
    ]
)

DUPLICATES_FOLDER = "duplicates"
# Written by `audit duplicates` (or by report, check, diff and verify on first use) into scan-dir/duplicates/, as
# whole files beside a settings.json that names the scan state they were computed from: one row per image that
# belongs to a cluster of copies (an image with no copy has no row), and one row per leak.
DUPLICATES = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("cluster", pa.int32(), nullable=False),
        pa.field("representative", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("similarity", pa.float32()),
        pa.field("hash_distance", pa.int16()),
    ]
)
LEAKS = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("side", pa.string(), nullable=False),
        pa.field("other_side", pa.string(), nullable=False),
        pa.field("other_image_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("similarity", pa.float32()),
        pa.field("hash_distance", pa.int16()),
    ]
)

DUPLICATES_DOCS: dict[str, str] = {
    "image_id": "An image that has at least one copy in the scan.",
    "cluster": "Its cluster of copies: 0 is the largest (ties by representative id).",
    "representative": "The image that stands for the cluster when copies are collapsed (the member with the most "
                      "confirmed copies; ties by id): every member is a copy of it.",
    "kind": "'representative'; 'exact' (the same decoded pixels as the representative, pixel_sha256); or 'near' "
            "(a near copy: close embeddings confirmed by close perceptual hashes, or embeddings closer than the "
            "tight threshold).",
    "similarity": "Cosine of its stored embedding with the representative's (1 for exact copies; null without "
                  "embeddings).",
    "hash_distance": "Bits that differ between its pHash and the representative's (or its mirror's, whichever is "
                     "fewer), of 64; null without fingerprints.",
}
LEAKS_DOCS: dict[str, str] = {
    "image_id": "An image of this scan with a copy on the other side.",
    "side": "Its side: its value of the --split-by column, or 'this scan' with --against.",
    "other_side": "The other side: another value of the --split-by column, or the --against scan's location.",
    "other_image_id": "Its copy there (the closest one).",
    "kind": "'exact' or 'near', as in the duplicates table.",
    "similarity": "Cosine of the two stored embeddings (1 for exact copies; null without embeddings).",
    "hash_distance": "Bits that differ between the two pHashes (or a mirror's), of 64; null without fingerprints.",
}

VOCABULARY_FOLDER = "vocabulary"
# A vocabulary's text embeddings under the scan's own model, written by the pass that embedded them (a concepts
# scan, `audit slices --vocabulary`), so that torch-free readers (the drift's words in `audit check` and `audit
# diff`) can name directions in the embedding space. One file, the last vocabulary written; stored like the
# embeddings table (float16 bytes), with `word` for `image_id`.
VOCABULARY = pa.schema(
    [
        pa.field("word", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),
    ]
)
VOCABULARY_DOCS: dict[str, str] = {
    "word": "A vocabulary entry (a word or phrase), as the vocabulary file or list names it.",
    "embedding": "Its unit text embedding under the scan's model (stored as float16 bytes, like the embeddings "
                 "table).",
}


def vocabulary_table(words: list[str], vectors: np.ndarray) -> pa.Table:
    """The vocabulary table as stored: each entry's text embedding [V, D] in float16."""
    return embeddings_table(pa.array(words, pa.string()), vectors, "float16").rename_columns(["word", "embedding"])


SLICES_FOLDER = "slices"
# Written by `audit slices` (or by check on first use of a [slices] or [label_issues] rule) into scan-dir/slices/,
# as whole files beside a settings.json that names the scan state and settings they were computed from.
SLICES = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("slice", pa.int32(), nullable=False),
        pa.field("parent", pa.int32(), nullable=False),
        pa.field("cosine", pa.float32(), nullable=False),
    ]
)
SLICE_WORDS = pa.schema(
    [
        pa.field("slice", pa.int32(), nullable=False),
        pa.field("word", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("share_slice", pa.float64()),
        pa.field("share_rest", pa.float64()),
        pa.field("q", pa.float64()),
    ]
)
SLICE_TESTS = pa.schema(
    [
        pa.field("slice", pa.int32(), nullable=False),
        pa.field("column", pa.string(), nullable=False),
        pa.field("value", pa.string(), nullable=False),
        pa.field("in_slice", pa.int64(), nullable=False),
        pa.field("slice_size", pa.int64(), nullable=False),
        pa.field("share_slice", pa.float64(), nullable=False),
        pa.field("share_rest", pa.float64(), nullable=False),
        pa.field("lift", pa.float64(), nullable=False),
        pa.field("p", pa.float64(), nullable=False),
        pa.field("q", pa.float64()),
        pa.field("flagged", pa.bool_(), nullable=False),
    ]
)
LABEL_ISSUES = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("column", pa.string(), nullable=False),
        pa.field("given", pa.string(), nullable=False),
        pa.field("suggested", pa.string(), nullable=False),
        pa.field("quality", pa.float64(), nullable=False),
    ]
)
SLICES_DOCS: dict[str, str] = {
    "image_id": "An image with a stored embedding: one row in its top slice, and one in a sub-slice where its top "
                "slice splits further.",
    "slice": "The slice: top slices are numbered 0..k-1 by size (0 the largest), sub-slices after them.",
    "parent": "-1 for a top slice; for a sub-slice, the top slice it splits.",
    "cosine": "Cosine of its embedding with its slice's centroid (higher: more typical of the slice).",
}
SLICE_WORDS_DOCS: dict[str, str] = {
    "slice": "The slice the word describes.",
    "word": "A word that sets the slice apart.",
    "source": "'stored' (a word of the scan's own kind, over-represented among the slice's images, tested like a "
              "finding) or 'vocabulary' (a vocabulary entry whose text embedding points from the rest's mean "
              "embedding to the slice's: Domino's description).",
    "score": "stored: the word's lift (share in the slice over share in the rest); vocabulary: the cosine of its "
             "text embedding with the difference of the two means.",
    "share_slice": "stored: the share of the slice's images that hold the word (null for vocabulary words).",
    "share_rest": "stored: the share of the other images that hold it (null for vocabulary words).",
    "q": "stored: the q-value of the one-sided test of the word's over-representation (null where untestable "
         "and for vocabulary words).",
}
SLICE_TESTS_DOCS: dict[str, str] = {
    "slice": "The slice tested.",
    "column": "The image column its skew was tested across (--by).",
    "value": "One value of that column.",
    "in_slice": "The slice's images with that value (copies counted once when collapsed).",
    "slice_size": "The slice's images that have a value of the column.",
    "share_slice": "in_slice / slice_size.",
    "share_rest": "The same share among the images outside the slice.",
    "lift": "share_slice / share_rest (inf where the rest holds none).",
    "p": "One-sided p of the value's over-representation in the slice (the report's test of a 2x2 table).",
    "q": "Its q-value under the report's multiplicity procedure over every (slice, column, value) tested "
         "(null where it could not reach significance at all).",
    "flagged": "q at most the false discovery rate: the slice is skewed toward the value.",
}
LABEL_ISSUES_DOCS: dict[str, str] = {
    "image_id": "An image whose given label disagrees with what images like it carry: a candidate, not a verdict.",
    "column": "The label column checked.",
    "given": "Its given value.",
    "suggested": "The value a probe fitted without it (cross-fitted on the stored embeddings) finds likeliest.",
    "quality": "cleanlab's self-confidence: the probe's probability of the given value (lower: more suspect).",
}

SCHEMAS: dict[str, pa.Schema] = {"images": IMAGES, "tokens": TOKENS, "heatmaps": HEATMAPS, "errors": ERRORS,
                                  "embeddings": EMBEDDINGS}

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
        "concept_cosine": "Concept opinion (--opinion concepts|both): cosine between the image's centred embedding "
                          "and its reconstruction from all its concept weights, in [0, 1]: how much of what sets "
                          "the image apart the words explain. Null without the concept opinion.",
        "pixel_sha256": "SHA-256 (hex) of the decoded, oriented 8-bit RGB pixels and their size: equal for exact "
                        "copies whatever the file format (a lossless re-encode too). Null in scans before schema 6.",
        "phash": "64-bit DCT perceptual hash of the image (imagehash's pHash), as a signed integer: a few bits "
                 "apart for a re-encoded, resized or recoloured copy. Null for an image without structure (a flat "
                 "colour: its hash would be noise) and in scans before schema 6.",
        "phash_mirror": "The same hash of the image flipped left to right: a mirrored copy's phash is close to "
                        "it. Null in scans before schema 6.",
    },
    "tokens": {
        "image_id": "The image.",
        "kind": "'ascent': a word the ascent found; 'concept': a concept of the sparse decomposition "
                "(--opinion concepts|both); 'probe': a word or phrase the user asked about (--words).",
        "word": "Ascent: a word of one of the best sequences, cleaned (no special tokens or punctuation). "
                "Concept: the vocabulary entry (a word or phrase). "
                "Probe: the word or phrase as given, lower case, spaces collapsed.",
        "word_rank": "Ascent: 0 = the word of the best sequence that came first. Concept: 0 = the largest "
                     "weight. Probe: its place in --words. Unique per (image, kind).",
        "seq_rank": "Ascent: rank (0 = best) of the sequence the word first appears in. Concept and probe: -1.",
        "seq_text": "Ascent: that sequence, decoded. Concept and probe: the word or phrase.",
        "seq_cosine": "Ascent: mean cosine of that sequence with the augmented views of the image. Concept and "
                      "probe: equal to word_cosine.",
        "word_cosine": "Cosine of the word (or phrase) alone, tokenized as text, with the un-augmented image.",
        "weight": "Concept: its weight in the image's decomposition (non-negative; the image's centred, "
                  "normalised embedding is approximated by the weighted sum of centred, normalised concept "
                  "embeddings). Null for ascent and probe words.",
    },
    "heatmaps": {
        "image_id": "The image.",
        "kind": "As in tokens: 'ascent', 'concept' or 'probe'.",
        "word": "The word the heatmap explains (same text and kind as in tokens).",
        "grid_h": "Rows of the relevancy grid (the ViT patch grid).",
        "grid_w": "Columns of the relevancy grid.",
        "grid": "Relevancy of each patch for the word, row-major; the method (scan.json settings.heatmap) is "
                "'chefer' (gradient-weighted attention, raw, not normalized), 'occlusion' (mean fall of the logit "
                "when windows covering the patch are blanked, raw) or 'legrad' (rectified gradients of the last "
                "layers' own scores with respect to their attention, summed, scaled to 0-1 per word).",
        "peak_x": "Centre of the most relevant cell, 0 = left edge, 1 = right edge of the model's input.",
        "peak_y": "Centre of the most relevant cell, 0 = top, 1 = bottom.",
        "entropy": "Entropy of the normalized grid divided by log(cells): 1 = spread evenly, 0 = one cell.",
        "top10_mass": "Share of relevance in the top 10% of cells (at least one cell).",
        "centre_mass": "Share of relevance in cells whose centres lie in the middle half of both axes.",
        "border_mass": "Share of relevance in the outermost ring of cells.",
        "box_mass": "Share of relevance inside the source's object box (cells weighted by overlap); null without box.",
        "peak_in_box": "Whether the peak cell's centre lies inside the object box; null without box.",
        "text_relevance": "Relevancy of each of the word's (or phrase's) tokens in the text tower (between SOT "
                          "and EOT): Chefer's, or with heatmap 'occlusion' the logit's fall without the token; "
                          "empty with heatmap 'legrad', which explains the image only.",
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
    "embeddings": {
        "image_id": "The image.",
        "embedding": "Its un-augmented image embedding as the image tower returns it (not normalised): what probe "
                     "scores and the concept decomposition start from, so that `audit ask` answers without the "
                     "image. float16 by default, float32 with --embeddings float32 (read back as float32); no "
                     "row with --embeddings none. Stored as the values' little-endian bytes (the field's metadata "
                     "names the dtype; schema 4 stored a list of numbers).",
    },
}


VERIFICATION_DOCS: dict[str, str] = {
    "part": "'faithfulness' (deletion and insertion curves of one word on one image) or 'grounding' (one image of "
            "one flagged finding).",
    "image_id": "The image.",
    "kind": "The word's kind, as in tokens.",
    "word": "The word.",
    "method": "Faithfulness: the relevancy method whose order blanked the cells (chefer, occlusion, legrad), or "
              "'random' (random orders, the baseline). Grounding: the scan's method, whose stored map chose the "
              "cells.",
    "deletion": "Faithfulness: area under the deletion curve (the word's cosine as cells are blanked in the "
                "order, over the blanked share 0 to 1); lower means a more faithful map.",
    "insertion": "Faithfulness: area under the insertion curve (cells revealed in the order on a blank image); "
                 "higher means a more faithful map.",
    "deletion_curve": "Faithfulness: the word's cosine at each step of deletion, from the whole image to a blank one.",
    "insertion_curve": "Faithfulness: the word's cosine at each step of insertion, from a blank image to the whole.",
    "column": "Grounding: the grouping column of the finding.",
    "grp": "Grounding: the finding's group.",
    "cells": "Grounding: how many cells hold the top half of the word's relevance (the cells blanked).",
    "cosine": "Grounding: the word's cosine with the whole image.",
    "drop_own": "Grounding: the cosine's fall when the word's own cells are blanked.",
    "drop_random": "Grounding: the mean fall when as many cells are blanked at random (seeded draws).",
    "drop_complement": "Grounding: the fall when every other cell is blanked (only the word's own cells kept).",
    "drop_keep_random": "Grounding: the mean fall when only as many cells, drawn at random, are kept (the same draws "
                        "as drop_random, the other way round).",
    "drop_box": "Grounding: the fall when the cells mostly inside the source's object box are blanked (null "
                "without a box).",
    "drop_outside_box": "Grounding: the fall when the other cells are blanked (null without a box).",
}


def empty_table(name: str) -> pa.Table:
    return SCHEMAS[name].empty_table()


def conform(name: str, table: pa.Table) -> pa.Table:
    """Cast a freshly built table to its stored schema; extra image columns (source metadata) stay strings."""
    schema = SCHEMAS[name]
    if name == "embeddings" and table.num_columns:  # stored as embeddings_table made it: at its precision and size
        schema = pa.schema([EMBEDDINGS.field("image_id"), table.schema.field("embedding")])
    if name == "images":
        extra = [f for f in table.schema if f.name not in schema.names]
        schema = pa.schema(list(schema) + [pa.field(f.name, pa.string()) for f in extra])
    for field in schema:  # a column that may be null anyway (a concept weight, a box) need not be built
        if field.name not in table.column_names and field.nullable:
            table = table.append_column(field.name, pa.nulls(table.num_rows, field.type))
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise ValueError(f"table {name!r} lacks columns {missing}")
    # A string column built as a dictionary (the same word or image on many rows) is written as one: Parquet stores
    # both alike, and the writer need not hash every row's string again (readers get strings: plain).
    schema = pa.schema([f.with_type(table.schema.field(f.name).type) if f.type == pa.string()
                        and _string_dictionary(table.schema.field(f.name).type) else f for f in schema])
    return table.select(schema.names).cast(schema)


def _string_dictionary(t: pa.DataType) -> bool:
    return pa.types.is_dictionary(t) and t.value_type == pa.string()


def plain(table: pa.Table) -> pa.Table:
    """A table read from a part with its dictionary columns (conform) as plain strings."""
    for i, field in enumerate(table.schema):
        if _string_dictionary(field.type):
            table = table.set_column(i, field.with_type(pa.string()), table.column(i).cast(pa.string()))
    return table


def compression(table: pa.Table) -> dict[str, str]:
    """Each column's Parquet codec: zstd, but none for numbers that barely compress: an embedding's float bytes
    (a tenth smaller; decompressing them was most of the time `audit ask` took to read them back) and a float
    column such as a cosine (8% smaller, a sixth of the time to write a hundred million probe rows)."""
    return {f.name: "none" if pa.types.is_fixed_size_binary(f.type) or pa.types.is_floating(f.type) else "zstd"
            for f in table.schema}


def statistics_columns(table: pa.Table) -> list[str]:
    """The columns whose min and max a part's footer keeps: all but strings built as dictionaries (a few words
    repeated on a hundred million rows of `audit ask`: a pass over every row to say little), and an embedding."""
    return [f.name for f in table.schema if not _string_dictionary(f.type) and not pa.types.is_fixed_size_binary(f.type)]


def dictionary_columns(table: pa.Table) -> list[str]:
    """The columns worth a Parquet dictionary: strings and integers (names, words, ranks repeat); floats rarely
    repeat, and trying one on a hundred million cosines costs more than writing them."""
    return [f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_integer(f.type)
            or _string_dictionary(f.type)]


def upgrade(name: str, table: pa.Table) -> pa.Table:
    """Rows of older schema versions (or an older audit of this version) in the current layout. Works column by
    column, so a scan whose parts were written by several versions (an older scan resumed) reads as one."""
    if name == "errors" and table.num_rows:
        legacy = pc.and_(pc.equal(table["stage"], DECODE), pc.starts_with(table["reason"], INTERNAL_REASON))
        stage = pc.if_else(legacy, INTERNAL, table["stage"]).cast(pa.string())
        table = table.set_column(table.schema.get_field_index("stage"), table.schema.field("stage"), stage)
    if name in ("tokens", "heatmaps"):
        if "kind" not in table.column_names:
            table = table.add_column(1, pa.field("kind", pa.string()), pa.nulls(table.num_rows, pa.string()))
        kind = pc.fill_null(table["kind"], ASCENT)  # version 1 knew ascent words only
        table = table.set_column(table.schema.get_field_index("kind"), pa.field("kind", pa.string(), nullable=False),
                                 kind)
    schema = SCHEMAS[name]
    for field in schema:
        if field.name not in table.column_names and field.nullable:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    if name == "images":  # audit's own columns first, then the source's metadata, as written
        table = table.select(schema.names + [c for c in table.column_names if c not in schema.names])
    return table
