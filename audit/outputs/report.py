"""`audit report`: one self-contained HTML file from a scan's findings (no network; one script of its own).

Findings first: every flagged association of every grouping in one table, then per grouping a table of its
groups, each group's detail drawn by the report's script from data embedded in the page when the reader opens
it. The page grows with findings and groups, not groups times words, so a grouping with a thousand values
stays readable and small."""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import io
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from markupsafe import Markup

from audit import formats
from audit.analysis import FDR, MIN_COUNT, MIN_RELATIVE_COSINE, PROCEDURE, STOP_WORDS
from audit.analysis.associations import (
    LOOK_STATS,
    Associations,
    associations,
    concept_weights,
    probes,
    word_filter,
)
from audit.analysis.duplicates import COPIES, collapse, open_query
from audit.analysis.duplicates import header as copies_header
from audit.analysis.verification import faithfulness_summary, grounding_summary, mean_curves
from audit.errors import AuditError, internal_errors_note
from audit.outputs import TOP
from audit.outputs.files import write_text
from audit.outputs.html import environment
from audit.outputs.overlay import overlay
from audit.sources.access import Fetched, SourceImages, open_fetched
from audit.sources.decode import DecodeError, fit
from audit.store.query import MISSING_GROUP, ScanQuery
from audit.store.schema import ASCENT, CONCEPT, PROBE

THUMB = 112
MATRIX_WORDS = 30
FLAGGED_WITH_EXAMPLES = 8  # per grouping and kind of word: the first findings get example thumbnails
EXAMPLES = 4  # thumbnails per finding
# With at most this many groups every group's detail is open on load and the word x group matrix is drawn: the
# page reads as a short report. With more, the reader searches the groups table and opens the groups they want.
OPEN_GROUPS = 12
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


def _fetch(q: ScanQuery, pairs) -> dict:
    """image_id -> its encoded image (audit.sources.access) for (image_id, path) pairs, read from the scan's source
    by their keys, whatever its kind."""
    return SourceImages(q.scan.config.get("source")).fetch(pairs)


def _thumbnail(fetched: Fetched | None, grid, gh: int, gw: int, preprocess: dict) -> str | None:
    """The image as the model saw it, as a data URL, with the heatmap `grid` over it (none: the image alone)."""
    if fetched is None:
        return None
    try:
        img = open_fetched(fetched)
    except (DecodeError, OSError):
        return None
    arr, _ = fit(img, THUMB, preprocess.get("resize_mode", "shortest"), "bicubic")
    from PIL import Image

    tile = Image.fromarray(arr) if grid is None else \
        overlay(Image.fromarray(arr), np.asarray(grid, dtype=np.float32).reshape(gh, gw))
    buf = io.BytesIO()
    tile.save(buf, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _detail_rows(t: pd.DataFrame, top: int) -> dict[str, list[dict]]:
    """Per group, its `top` most distinctive words as the detail shows them: numbers formatted here (one format
    for every output), the chart's three numbers raw."""
    head = t.groupby("grp", sort=False).head(top)
    cells = zip(
        [f"{a} ({formats.percent(s)})" for a, s in zip(head.a, head.share_group, strict=True)],
        [f"{c} ({formats.percent(s)})" for c, s in zip(head.c, head.share_rest, strict=True)],
        [f"{formats.number(v)} ({formats.number(lo)} to {formats.number(hi)})"
         for v, lo, hi in zip(head.log_odds, head.log_odds_lo, head.log_odds_hi, strict=True)],
        map(formats.number, head.lift), map(formats.number, head.npmi), map(formats.p_value, head.p), head.test,
        map(formats.p_value, head.q), strict=True)
    rows = [{"word": w, "flagged": bool(f), "lor": _finite(v), "lo": _finite(lo), "hi": _finite(hi),
             "cells": list(c)}
            for w, f, v, lo, hi, c in zip(head.word, head.flagged, head.log_odds, head.log_odds_lo, head.log_odds_hi,
                                          cells, strict=True)]
    out: dict[str, list[dict]] = {}
    for grp, row in zip(head.grp, rows, strict=True):
        out.setdefault(grp, []).append(row)
    return out


def _finite(v) -> float:
    return round(float(v), 4) if np.isfinite(v) else 0.0


def _looks_text(looks: list[dict]) -> list[str]:
    return [f"{lk['stat']} {formats.number(lk['median_group'])} vs {formats.number(lk['median_rest'])} "
            f"(q {formats.p_value(lk['q'])})" for lk in looks]


def _column_view(q: ScanQuery, assoc: Associations, top: int, preprocess: dict, section: str) -> tuple[dict, dict]:
    """One (kind of word, grouping column): its summary, findings, groups table and matrix for the template,
    and the data its groups' details are drawn from."""
    t = assoc.table
    name, singular = KIND_NAMES[assoc.kind]
    n_groups = len(assoc.groups)
    few = n_groups <= OPEN_GROUPS
    # The groups table: size, findings, and the strongest word (rows are ranked by the interval's lower bound).
    strongest = t.drop_duplicates("grp").set_index("grp")
    findings_per = assoc.findings.grp.value_counts()
    groups = []
    for i, (grp, n) in enumerate(zip(assoc.groups.grp, assoc.groups.n, strict=True)):
        top_row = strongest.loc[grp] if grp in strongest.index else None
        groups.append({"index": i, "name": grp, "n": int(n), "findings": int(findings_per.get(grp, 0)),
                       "word": None if top_row is None else top_row.word,
                       "word_flagged": False if top_row is None else bool(top_row.flagged),
                       "share": None if top_row is None else float(top_row.share_group)})
    details = _detail_rows(t, top)
    data = {"singular": singular, "open": few, "groups": [{"name": g["name"], "n": g["n"]} for g in groups],
            "rows": [details.get(g["name"], []) for g in groups]}
    flagged = []
    ordered = pd.concat([assoc.findings, assoc.flagged[assoc.flagged.names_group]])
    looks = assoc.looks
    by_pair = {k: v.to_dict("records") for k, v in looks.groupby(["grp", "word"], sort=False)} if len(looks) else {}
    records = ordered.to_dict("records")
    shown = [q.examples(assoc.column, r["grp"], r["word"], EXAMPLES, assoc.kind, assoc.words).to_dict("records")
             for r in records[:FLAGGED_WITH_EXAMPLES]]
    fetched = _fetch(q, ((ex["image_id"], ex["path"]) for examples in shown for ex in examples))
    for i, r in enumerate(records):
        examples = []
        if i < FLAGGED_WITH_EXAMPLES:
            for ex in shown[i]:
                examples.append({"image_id": ex["image_id"], "cosine": ex["word_cosine"],
                                 "src": _thumbnail(fetched.get(ex["image_id"]), ex["grid"], ex["grid_h"],
                                                   ex["grid_w"], preprocess)})
        flagged.append({**r, "column": assoc.column, "kind": assoc.kind, "kind_name": singular,
                        "looks": _looks_text(by_pair.get((r["grp"], r["word"]), [])), "examples": examples})
    matrix, weights, words = [], [], []
    if few:
        ranked = t.groupby("word").log_odds_lo.max().sort_values(ascending=False)
        flagged_words = list(dict.fromkeys(assoc.flagged.word))
        words = (flagged_words + [w for w in ranked.index if w not in flagged_words])[:MATRIX_WORDS]
        share = t.pivot_table(index="word", columns="grp", values="share_group", aggfunc="first")
        flagged_set = set(zip(assoc.flagged.grp, assoc.flagged.word, strict=True))
        matrix = [{"word": w, "cells": [{"share": float(share.loc[w, g]) if w in share.index and g in share.columns
                                         else 0.0, "flagged": (g, w) in flagged_set} for g in assoc.groups.grp]}
                  for w in words]
        if assoc.kind == CONCEPT:
            # Mean weight per group of the matrix's concepts: how much of the images' embeddings each one carries.
            w = concept_weights(q, assoc.column, words, assoc.words)
            for word in words:
                weights.append({"word": word, "cells": {r["grp"]: r for r in w[w.word == word].to_dict("records")}})
    view = {"id": section, "column": assoc.column, "groups": groups, "group_names": list(assoc.groups.grp),
            "matrix": matrix, "flagged": flagged, "tested": assoc.tested, "n_flagged": len(flagged),
            "n_findings": len(assoc.findings), "testable": assoc.testable, "kind": assoc.kind, "few": few,
            "kind_name": name, "singular": singular, "filtered": assoc.filtered, "weights": weights,
            "matrix_capped": t.word.nunique() > MATRIX_WORDS, "examples_capped": len(flagged) > FLAGGED_WITH_EXAMPLES}
    return view, data


COPY_CLUSTERS = 12  # clusters of copies shown, largest first
COPY_THUMBS = 6  # thumbnails per cluster


def _copies_view(q: ScanQuery, group_by: list[str], preprocess: dict) -> dict | None:
    """The Copies section: the largest clusters with thumbnails, clusters that span groups (the same picture under
    two labels: a label problem), and the leaks `audit duplicates` stored."""
    found = q.copies
    if found is None:
        return None
    largest = found.cluster_sizes().head(COPY_CLUSTERS)
    shown = (found.copies[found.copies.cluster.isin(largest.cluster)]
             .sort_values(["cluster", "kind"], key=lambda k: k != "representative" if k.name == "kind" else k)
             .groupby("cluster").head(COPY_THUMBS))
    paths = q.df("SELECT image_id, path FROM all_images WHERE image_id IN (SELECT unnest(?::VARCHAR[]))",
                 [list(shown.image_id)]).set_index("image_id").path
    fetched = _fetch(q, paths.items())
    clusters = []
    for r in largest.itertuples():
        members = shown[shown.cluster == r.cluster]
        thumbs = [{"id": m.image_id, "kind": m.kind, "src": _thumbnail(fetched.get(m.image_id), None, 0, 0, preprocess)}
                  for m in members.itertuples()]
        clusters.append({"cluster": int(r.cluster), "representative": r.representative, "size": int(r.size),
                         "exact": int(r.exact), "near": int(r.near), "thumbs": thumbs})
    conflicts = []
    if len(found.copies):
        for column in group_by:
            g = q.check_group_column(column)
            groups = q.df(f"SELECT image_id, coalesce(CAST({g} AS VARCHAR), ?) AS grp FROM all_images "
                          "WHERE image_id IN (SELECT image_id FROM copy_members)", [MISSING_GROUP])
            m = found.copies.merge(groups, on="image_id")
            spans = m.groupby("cluster").grp.agg(lambda v: sorted(set(v)))
            for cluster, values in spans[spans.map(len) > 1].items():
                conflicts.append({"column": column, "cluster": int(cluster), "groups": values,
                                  "size": int((m.cluster == cluster).sum())})
    return {"clusters": clusters, "total": found.clusters, "collapsed": found.collapsed, "images": found.images,
            "share": found.share, "conflicts": conflicts[:50], "conflict_count": len(conflicts),
            "leaks": found.leak_counts().to_dict("records"), "notes": found.notes, "settings": found.settings}


SLICES_SHOWN = 30  # slices in the report's section, flagged ones first
SLICE_THUMBS = 6
LABEL_ISSUES_SHOWN = 24


def _slices_view(q: ScanQuery, preprocess: dict) -> dict | None:
    """The Slices section: what `audit slices` stored for the scan's current parts (the report finds none itself:
    that is the slices command's work), flagged slices first, each with its words, skews and the images nearest its
    centroid; then the label-issue candidates."""
    from audit.analysis.slices import stored

    found = stored(q.scan)
    if found is None:
        return None
    sizes = found.sizes().set_index("slice")
    flagged = found.flagged
    order = list(dict.fromkeys(list(flagged.slice) + list(sizes.index)))[:SLICES_SHOWN]
    issues = found.label_issues.head(LABEL_ISSUES_SHOWN)
    wanted = {i for s in order for i in sizes.examples[s][:SLICE_THUMBS]} | set(issues.image_id)
    paths = q.df("SELECT image_id, path FROM all_images WHERE image_id IN (SELECT unnest(?::VARCHAR[]))",
                 [sorted(wanted)]).set_index("image_id").path
    fetched = _fetch(q, paths.items())
    rows = []
    for s in order:
        skews = flagged[flagged.slice == s]
        rows.append({"slice": int(s), "parent": int(sizes.parent[s]), "images": int(sizes.images[s]),
                     "share": float(sizes.share[s]), "stored": found.words_of(s, "stored")[:6],
                     "vocabulary": found.words_of(s, "vocabulary")[:6],
                     "skews": [{"column": r.column, "value": r.value, "share_slice": r.share_slice,
                                "share_rest": r.share_rest, "q": r.q} for r in skews.itertuples()],
                     "thumbs": [{"id": i, "src": _thumbnail(fetched.get(i), None, 0, 0, preprocess)}
                                for i in sizes.examples[s][:SLICE_THUMBS]]})
    candidates = [{"id": r.image_id, "given": r.given, "suggested": r.suggested, "quality": r.quality,
                   "src": _thumbnail(fetched.get(r.image_id), None, 0, 0, preprocess)} for r in issues.itertuples()]
    return {"slices": rows, "k": found.k, "total": len(sizes), "flagged": int(flagged.slice.nunique()),
            "by": found.by, "labels": found.labels, "label_issues": len(found.label_issues),
            "candidates": candidates, "notes": found.notes, "fdr": found.settings.get("fdr")}


def _probe_view(q: ScanQuery, column: str, fdr: float) -> dict:
    """Every (probe, group) row with a handful of groups; with more, the flagged rows (the page grows with
    findings, not groups times probes)."""
    p = probes(q, column, fdr)
    n_groups = p.cosines.grp.nunique()
    shown = p.cosines if n_groups <= OPEN_GROUPS else p.flagged
    looks = {(r["grp"], r["word"], r["stat"]): r for r in p.looks.to_dict("records")}
    rows = [{**r, "looks": {s: looks.get((r["grp"], r["word"], s)) for s in LOOK_STATS}}
            for r in shown.to_dict("records")]
    stats_shown = [s for s in LOOK_STATS if any(r["looks"][s] for r in rows)]
    return {"column": column, "rows": rows, "stats": stats_shown, "all": len(shown) == len(p.cosines),
            "tested": int(p.cosines.p.notna().sum()), "groups": n_groups}


def _script() -> tuple[str, str]:
    """The report's script and its Content-Security-Policy hash: the page runs that script and nothing else."""
    text = resources.files("audit.outputs").joinpath("templates/report.js").read_text(encoding="utf-8")
    return text, "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


def _json_block(data: dict) -> Markup:
    """Data for the script, safe inside <script type="application/json">: no '<', '>' or '&' can end the block."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return Markup(text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e"))


@dataclass
class RenderedReport:
    html: str
    associations: list[Associations]  # one per kind of word (ascent, concept) and --group-by column, as tested


METHOD_COLOURS = {"chefer": "#1f77b4", "occlusion": "#d62728", "legrad": "#2ca02c", "random": "#7f7f7f"}


def _curve_svg(curves: dict[str, np.ndarray], width: int = 220, height: int = 110) -> Markup:
    """A small plot of one kind of curve (deletion or insertion) per method: the word's mean cosine against the
    share of cells blanked (or shown). Numbers only go into it, so it needs no escaping."""
    pad = 6
    values = np.concatenate([c for c in curves.values()]) if curves else np.zeros(1)
    low, high = float(values.min()), float(values.max())
    span = high - low if high > low else 1.0
    lines = []
    for method, curve in curves.items():
        xs = np.linspace(pad, width - pad, len(curve))
        ys = height - pad - (curve - low) / span * (height - 2 * pad)
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))
        dash = ' stroke-dasharray="4 3"' if method == "random" else ""
        lines.append(f'<polyline fill="none" stroke="{METHOD_COLOURS.get(method, "#000")}" stroke-width="2"'
                     f'{dash} points="{points}"/>')
    frame = (f'<rect x="{pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}" fill="none" '
             'stroke="#ccc"/>')
    return Markup(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
                  f'viewBox="0 0 {width} {height}" role="img">{frame}{"".join(lines)}</svg>')


def _trust_view(rows: pd.DataFrame, fdr: float) -> dict | None:
    """The report's "How far to trust these maps": faithfulness per method and kind with its curves, and each
    finding's grounding verdict by (column, kind, group, word). None when `audit verify` has not run."""
    if not len(rows):
        return None
    faith = faithfulness_summary(rows)
    curves = mean_curves(rows)
    kinds = []
    for kind in sorted(faith.kind.unique()):
        methods = [m for m in ("chefer", "occlusion", "legrad", "random") if (m, kind) in curves]
        kinds.append({"kind": kind, "name": KIND_NAMES.get(kind, (kind, kind))[0],
                      "rows": faith[faith.kind == kind].to_dict("records"),
                      "deletion": _curve_svg({m: curves[m, kind]["deletion"] for m in methods}),
                      "insertion": _curve_svg({m: curves[m, kind]["insertion"] for m in methods})})
    grounding = grounding_summary(rows, fdr)
    verdicts = {(r["column"], r["kind"], r["grp"], r["word"]): r for r in grounding.to_dict("records")}
    return {"kinds": kinds, "verdicts": verdicts, "grounded": bool(len(grounding)),
            "colours": METHOD_COLOURS}


def render_report(scan_dir: str | os.PathLike, group_by: list[str], *, min_count: int = MIN_COUNT, fdr: float = FDR,
                  top: int = TOP, title: str | None = None, stop_words=STOP_WORDS,
                  min_relative_cosine: float = MIN_RELATIVE_COSINE, procedure: str = PROCEDURE,
                  copies: str = COPIES) -> RenderedReport:
    """The report as one HTML document, and the associations behind it. `copies`: "collapse" counts each cluster
    of copies once per group (analysis.duplicates), "keep" counts every image."""
    words = word_filter(stop_words, min_relative_cosine)
    if not group_by:
        raise AuditError("pass at least one --group-by COLUMN")
    if not 0 < fdr < 1:
        raise AuditError(f"--fdr must be between 0 and 1, not {fdr}")
    if min_count < 1 or top < 1:
        raise AuditError("--min-count and --top must be at least 1")
    q = open_query(scan_dir, "keep", group_by)
    scanned = int(q.scalar("SELECT count(*) FROM all_images"))
    if scanned == 0:
        raise AuditError(f"{scan_dir} holds no scanned images; nothing to report (run `audit scan` first)")
    q = collapse(q, copies)  # once every mistake is said: looking for copies may take a while, and says so
    counts = q.counts()
    counts["all_images"] = scanned
    counts["internal"] = q.internal_errors()
    config = q.scan.config
    runs = config.get("runs", [])
    preprocess = next((r["preprocess"] for r in reversed(runs) if r.get("preprocess")), {})
    # Ascent words and concepts are tested apart: each kind is its own family of tests, its own section.
    kinds = [k for k in q.kinds() if k in KIND_NAMES] or [ASCENT]
    tested = [associations(q, c, min_count, fdr, kind=k, words=words, procedure=procedure)
              for k in kinds for c in group_by]
    views = [_column_view(q, a, top, preprocess, f"s{i + 1}") for i, a in enumerate(tested)]
    columns = [v for v, _ in views]
    data = {"sections": {v["id"]: d for v, d in views}}
    findings = [f for c in columns for f in c["flagged"]]
    trust = _trust_view(q.scan.verification(), fdr)
    for f in findings:
        f["grounding"] = None if trust is None else trust["verdicts"].get((f["column"], f["kind"], f["grp"], f["word"]))
    script, script_hash = _script()
    probe_columns = [_probe_view(q, c, fdr) for c in group_by] if q.probe_words() else []
    settings = q.scan.settings
    pairs = q.pairs_per_kind() or {ASCENT: 0}
    html = environment().get_template("report.html.j2").render(
        title=title or f"CLIP audit of {Path(scan_dir).resolve().name}",
        generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        counts=counts, internal_note=internal_errors_note(counts["internal"]) if counts["internal"] else None,
        probe_columns=probe_columns, settings={k: settings.get(k) for k in SETTINGS_SHOWN if k in settings or k in ALWAYS_SHOWN},
        pairs=[(n, PAIR_NAMES[k]) for k, n in pairs.items()],
        columns=columns, findings=findings, trust=trust, data=_json_block(data), script=Markup(script),
        script_hash=script_hash, procedure=procedure, words=words, stop_words=str(stop_words),
        min_count=min_count, fdr=fdr, top=top, tool_version=config.get("tool_version"),
        matrix_words=MATRIX_WORDS, examples_per_word=EXAMPLES, flagged_with_examples=FLAGGED_WITH_EXAMPLES,
        copies_line=copies_header(q.copies, copies), copy_view=_copies_view(q, group_by, preprocess),
        slice_view=_slices_view(q, preprocess),
    )
    return RenderedReport(html, tested)


def build_report(scan_dir: str | os.PathLike, group_by: list[str], out: str | os.PathLike, *, min_count: int = MIN_COUNT,
                 fdr: float = FDR, top: int = TOP, title: str | None = None, **tests) -> Path:
    """Write the report to `out` (whole or not at all); `tests` are render_report's word filter and procedure."""
    rendered = render_report(scan_dir, group_by, min_count=min_count, fdr=fdr, top=top, title=title, **tests)
    return write_text(out, rendered.html, "report.html")
