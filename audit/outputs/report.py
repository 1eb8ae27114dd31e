"""`audit report`: one self-contained HTML file from a scan's findings (no network, no scripts)."""

from __future__ import annotations

import base64
import datetime as _dt
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from audit.analysis import FDR, MIN_COUNT, MIN_RELATIVE_COSINE, PROCEDURE, STOP_WORDS
from audit.analysis.associations import (
    LOOK_STATS,
    Associations,
    associations,
    concept_weights,
    probes,
    word_filter,
)
from audit.errors import AuditError, internal_errors_note
from audit.outputs import TOP
from audit.outputs.files import write_text
from audit.outputs.html import environment
from audit.outputs.overlay import overlay
from audit.sources.decode import DecodeError, fit, open_rgb
from audit.store.query import ScanQuery
from audit.store.schema import ASCENT, CONCEPT, PROBE

THUMB = 112
MATRIX_WORDS = 30
FLAGGED_WITH_EXAMPLES = 8
EXAMPLES = 4
# The overview's settings, of those the scan has (an opinion's own are stored only when it ran); a hand-made
# scan may lack any of them, but these always have a line.
ALWAYS_SHOWN = ("model", "pretrained", "heatmap")
SETTINGS_SHOWN = ("model", "pretrained", "opinions", "steps", "candidates", "tokens_per_seq", "views", "seed", "prompt",
                  "kernel", "vocabulary", "concept_l1", "concepts_per_image", "concept_mean", "heatmap", "probe_words")
# The overview's count of each kind's rows.
PAIR_NAMES = {ASCENT: "(image, word) pairs from the ascent", CONCEPT: "(image, concept) pairs",
              PROBE: "(image, probe word) scores"}
# What each kind of word is called in the report's headings and sentences.
KIND_NAMES = {ASCENT: ("words the ascent found", "word"), CONCEPT: ("concepts of the decomposition", "concept")}


def _thumbnail(path: str, grid, gh: int, gw: int, preprocess: dict) -> str | None:
    try:
        img = open_rgb(path, None)
    except DecodeError:
        return None
    arr, _ = fit(img, THUMB, preprocess.get("resize_mode", "shortest"), "bicubic")
    from PIL import Image

    tile = overlay(Image.fromarray(arr), np.asarray(grid, dtype=np.float32).reshape(gh, gw))
    buf = io.BytesIO()
    tile.save(buf, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _chart(rows) -> dict:
    """Geometry of one horizontal log-odds chart (bars with 95% whiskers), computed here so the template
    only places numbers."""
    if not rows:
        return {"rows": [], "height": 0}
    span = max(1e-9, max(max(abs(r["log_odds_lo"]), abs(r["log_odds_hi"])) for r in rows))
    left, width, row_h = 150, 300, 18
    zero = left + width / 2
    scale = (width / 2) / span
    out = []
    for i, r in enumerate(rows):
        y = 6 + i * row_h
        x0, x1 = sorted((zero, zero + r["log_odds"] * scale))
        out.append({"word": r["word"], "y": y, "bar_x": x0, "bar_w": max(1.0, x1 - x0),
                    "lo": zero + r["log_odds_lo"] * scale, "hi": zero + r["log_odds_hi"] * scale,
                    "flagged": r["flagged"]})
    return {"rows": out, "height": 12 + len(rows) * row_h, "zero": zero, "width": left + width + 10}


def _column_view(q: ScanQuery, assoc: Associations, top: int, preprocess: dict) -> dict:
    t = assoc.table
    groups = []
    for grp, n in zip(assoc.groups.grp, assoc.groups.n, strict=True):
        rows = t[t.grp == grp].head(top).to_dict("records")
        groups.append({"name": grp, "n": int(n), "rows": rows, "chart": _chart(rows)})
    ranked = t.groupby("word").log_odds_lo.max().sort_values(ascending=False)
    flagged_words = list(dict.fromkeys(assoc.flagged.word))
    words = (flagged_words + [w for w in ranked.index if w not in flagged_words])[:MATRIX_WORDS]
    share = t.pivot_table(index="word", columns="grp", values="share_group", aggfunc="first")
    flagged_set = set(zip(assoc.flagged.grp, assoc.flagged.word, strict=True))
    matrix = [{"word": w, "cells": [{"share": float(share.loc[w, g]) if w in share.index and g in share.columns
                                     else 0.0, "flagged": (g, w) in flagged_set} for g in assoc.groups.grp]}
              for w in words]
    flagged = []
    ordered = pd.concat([assoc.findings, assoc.flagged[assoc.flagged.names_group]])
    for i, r in enumerate(ordered.to_dict("records")):
        looks = assoc.looks
        look_rows = looks[(looks.grp == r["grp"]) & (looks.word == r["word"])].to_dict("records") if len(looks) else []
        examples = []
        if i < FLAGGED_WITH_EXAMPLES:
            for ex in q.examples(assoc.column, r["grp"], r["word"], EXAMPLES, assoc.kind, assoc.words).to_dict("records"):
                examples.append({"image_id": ex["image_id"], "cosine": ex["word_cosine"],
                                 "src": _thumbnail(ex["path"], ex["grid"], ex["grid_h"], ex["grid_w"], preprocess)})
        flagged.append({**r, "looks": look_rows, "examples": examples})
    weights = []
    if assoc.kind == CONCEPT:
        # Mean weight per group of the matrix's concepts: how much of the images' embeddings each one carries.
        w = concept_weights(q, assoc.column, words, assoc.words)
        for word in words:
            rows = w[w.word == word].to_dict("records")
            weights.append({"word": word, "cells": {r["grp"]: r for r in rows}})
    name, singular = KIND_NAMES[assoc.kind]
    return {"column": assoc.column, "groups": groups, "group_names": list(assoc.groups.grp), "matrix": matrix,
            "flagged": flagged, "tested": assoc.tested, "n_flagged": len(flagged),
            "n_findings": len(assoc.findings), "testable": assoc.testable, "kind": assoc.kind,
            "kind_name": name, "singular": singular, "filtered": assoc.filtered, "weights": weights,
            "matrix_capped": len(ranked) > MATRIX_WORDS,
            "examples_capped": len(flagged) > FLAGGED_WITH_EXAMPLES}



def _probe_view(q: ScanQuery, column: str, fdr: float) -> dict:
    p = probes(q, column, fdr)
    looks = {(r["grp"], r["word"], r["stat"]): r for r in p.looks.to_dict("records")}
    rows = [{**r, "looks": {s: looks.get((r["grp"], r["word"], s)) for s in LOOK_STATS}}
            for r in p.cosines.to_dict("records")]
    shown = [s for s in LOOK_STATS if any(r["looks"][s] for r in rows)]
    return {"column": column, "rows": rows, "stats": shown}


@dataclass
class RenderedReport:
    html: str
    associations: list[Associations]  # one per kind of word (ascent, concept) and --group-by column, as tested


def render_report(scan_dir: str | os.PathLike, group_by: list[str], *, min_count: int = MIN_COUNT, fdr: float = FDR,
                  top: int = TOP, title: str | None = None, stop_words=STOP_WORDS,
                  min_relative_cosine: float = MIN_RELATIVE_COSINE, procedure: str = PROCEDURE) -> RenderedReport:
    """The report as one HTML document, and the associations behind it."""
    words = word_filter(stop_words, min_relative_cosine)
    if not group_by:
        raise AuditError("pass at least one --group-by COLUMN")
    if not 0 < fdr < 1:
        raise AuditError(f"--fdr must be between 0 and 1, not {fdr}")
    if min_count < 1 or top < 1:
        raise AuditError("--min-count and --top must be at least 1")
    q = ScanQuery.open(scan_dir)
    for column in group_by:
        q.check_group_column(column)
    counts = q.counts()
    counts["internal"] = q.internal_errors()
    if counts["images"] == 0:
        raise AuditError(f"{scan_dir} holds no scanned images; nothing to report (run `audit scan` first)")
    config = q.scan.config
    runs = config.get("runs", [])
    preprocess = next((r["preprocess"] for r in reversed(runs) if r.get("preprocess")), {})
    # Ascent words and concepts are tested apart: each kind is its own family of tests, its own section.
    kinds = [k for k in q.kinds() if k in KIND_NAMES] or [ASCENT]
    tested = [associations(q, c, min_count, fdr, kind=k, words=words, procedure=procedure)
              for k in kinds for c in group_by]
    columns = [_column_view(q, a, top, preprocess) for a in tested]
    probe_columns = [_probe_view(q, c, fdr) for c in group_by] if q.probe_words() else []
    settings = q.scan.settings
    pairs = q.pairs_per_kind() or {ASCENT: 0}
    html = environment().get_template("report.html.j2").render(
        title=title or f"CLIP audit of {Path(scan_dir).resolve().name}",
        generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        counts=counts, internal_note=internal_errors_note(counts["internal"]) if counts["internal"] else None,
        probe_columns=probe_columns, settings={k: settings.get(k) for k in SETTINGS_SHOWN if k in settings or k in ALWAYS_SHOWN},
        pairs=[(n, PAIR_NAMES[k]) for k, n in pairs.items()],
        columns=columns, procedure=procedure, words=words, stop_words=str(stop_words),
        min_count=min_count, fdr=fdr, top=top, tool_version=config.get("tool_version"),
        matrix_words=MATRIX_WORDS, examples_per_word=EXAMPLES, flagged_with_examples=FLAGGED_WITH_EXAMPLES,
    )
    return RenderedReport(html, tested)


def build_report(scan_dir: str | os.PathLike, group_by: list[str], out: str | os.PathLike, *, min_count: int = MIN_COUNT,
                 fdr: float = FDR, top: int = TOP, title: str | None = None, **tests) -> Path:
    """Write the report to `out` (whole or not at all); `tests` are render_report's word filter and procedure."""
    rendered = render_report(scan_dir, group_by, min_count=min_count, fdr=fdr, top=top, title=title, **tests)
    return write_text(out, rendered.html, "report.html")
