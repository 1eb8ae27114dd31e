"""`audit diff`: what changed between two scans of a dataset, as text, Markdown or one HTML file.

The numbers are drift.compare's, the same the drift rules of `audit check` gate on.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path

from audit.analysis import FDR, MIN_COUNT, MIN_RELATIVE_COSINE, STOP_WORDS
from audit.analysis.associations import word_filter
from audit.analysis.drift import Drift, compare
from audit.analysis.duplicates import COPIES, check_mode, collapse, collapsed_ids
from audit.analysis.duplicates import header as copies_header
from audit.analysis.embedding_drift import EmbeddingDrift, embedding_drift
from audit.errors import AuditError
from audit.formats import change, percent, q_value, ratio
from audit.outputs.check_output import md, plain
from audit.outputs.files import write_text
from audit.store.query import ScanQuery
from audit.store.schema import ASCENT, CONCEPT
from audit.store.settings import differences_note, held_kind

TOP_WORDS = 15
SHOWN_IDS = 10


@dataclass
class Diff:
    old: str
    new: str
    overall: Drift
    by_column: list[Drift]
    min_count: int
    fdr: float
    kind: str = ASCENT
    settings_note: str | None = None  # the settings the two scans differ in, one line (store.settings)
    embeddings: EmbeddingDrift | None = None  # the two-sample test on the stored image embeddings
    copies_note: str | None = None  # how copies were counted in each scan (analysis.duplicates.header)

    @property
    def words_label(self) -> str:
        """What the word tables count: ascent words (as before kinds existed) or concepts."""
        return "word" if self.kind == ASCENT else "concept"


def build_diff(old: str | os.PathLike, new: str | os.PathLike, group_by: list[str] | None = None, *,
               min_count: int = MIN_COUNT, fdr: float = FDR, kind: str | None = None, stop_words=STOP_WORDS,
               min_relative_cosine: float = MIN_RELATIVE_COSINE, copies: str = COPIES) -> Diff:
    """`kind`: the words compared; None: those the new scan holds (the ascent's, else the concepts)."""
    if kind is not None and kind not in (ASCENT, CONCEPT):
        raise AuditError(f"--kind must be ascent or concept, not {kind!r} (probe words have no distribution to diff)")
    words = word_filter(stop_words, min_relative_cosine)
    if not 0 < fdr < 1:
        raise AuditError(f"--fdr must be between 0 and 1, not {fdr}")
    if min_count < 1:
        raise AuditError("--min-count must be at least 1")
    check_mode(copies)
    qo, qn = ScanQuery.open(old), ScanQuery.open(new)
    kind = kind or held_kind(qn.scan.settings, (ASCENT, CONCEPT))
    for col in group_by or []:
        for which, q in (("old", qo), ("new", qn)):
            if col not in q.columns("images"):
                raise AuditError(f"--group-by column {col!r} is not in the {which} scan {q.scan.root}; its image "
                                 "columns are " + ", ".join(q.columns("images")))
    qo, qn = collapse(qo, copies), collapse(qn, copies)
    cols = [compare(qo, qn, c, min_count=min_count, fdr=fdr, kind=kind, keep=words) for c in group_by or []]
    # Every per-group comparison also holds the overall one; compute it again only without groups.
    overall = cols[0] if cols else compare(qo, qn, None, min_count=min_count, fdr=fdr, kind=kind, keep=words)
    note = differences_note(qo.scan.settings, qn.scan.settings, "the old scan")
    return Diff(str(old), str(new), overall, cols, min_count, fdr, kind, note,
                embedding_drift(qo.scan, qn.scan, skip=(collapsed_ids(qo), collapsed_ids(qn))),
                f"old {copies_header(qo.copies, copies)}; new {copies_header(qn.copies, copies)}")


def embeddings_sentence(e: EmbeddingDrift | None, fdr: float) -> str:
    """One sentence on the embedding test, the same in every format."""
    if e is None:
        return "Embeddings: not compared."
    if not e.available:
        return f"Embeddings: not compared: {e.missing}."
    verdict = ("what the images show moved beyond sampling noise" if e.p < fdr else
               "within sampling noise")
    sentence = (f"Embeddings: maximum mean discrepancy (MMD², Gaussian kernel of width {e.bandwidth:.2f}, the most "
                f"telling of 4) {e.mmd2:.4f} between {e.images_old} and {e.images_new} sampled images; shuffled "
                f"snapshots reach {e.noise:.4f} (95th percentile), p={e.p:.2g}: {verdict}.")
    if e.p < fdr and e.words is not None:
        return (f"{sentence} In the vocabulary's words, the new images are {e.words.said()} (r: how closely a "
                "word's zero-shot score follows the test's witness over the sampled images).")
    if e.p < fdr:
        return f"{sentence} It sees shifts no stored word names; no words for it: {e.words_missing}."
    return sentence


def _ids(ids: list[str]) -> str:
    shown = ", ".join(ids[:SHOWN_IDS])
    return shown + (f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else "")


def text(d: Diff) -> str:
    o = d.overall
    lines = [f"audit diff: {d.old} -> {d.new}",
             f"images: {o.images_old} -> {o.images_new} ({len(o.added)} added, {len(o.removed)} removed, "
             f"{o.kept} in both)"]
    if d.settings_note:
        lines.append(f"note: {d.settings_note}")
    if d.copies_note:
        lines.append(d.copies_note)
    if o.added:
        lines.append(f"  added: {_ids(o.added)}")
    if o.removed:
        lines.append(f"  removed: {_ids(o.removed)}")
    v = o.divergence
    lines.append(f"{d.words_label} distribution: Jensen-Shannon divergence {v.jsd:.3f} over the {o.vocabulary} "
                 f"{d.words_label}s seen in at "
                 f"least {o.min_count} images (0 = same, 1 = nothing in common); random splits of the pooled "
                 f"images reach {v.noise:.3f} (95th percentile), p={v.p:.2g}")
    lines.append(embeddings_sentence(d.embeddings, d.fdr))
    lines.append(f"{d.words_label}s that moved most (share of images showing the {d.words_label}):")
    for r in o.words.head(TOP_WORDS).itertuples():
        lines.append(f"  {r.word:<20} {percent(r.share_old):>6} -> {percent(r.share_new):>6}  ({change(r.delta)})")
    for c in d.by_column:
        lines.append(f"by {c.column}:")
        for r in c.groups.itertuples():
            jsd = "group new or gone" if r.jsd != r.jsd else f"word JSD {r.jsd:.3f} (noise {r.noise:.3f}, q={q_value(r.q)})"
            lines.append(f"  {r.grp}: {r.n_old} -> {r.n_new} images ({percent(r.share_old)} -> {percent(r.share_new)}), "
                         f"{jsd}")
        for label, df in (("appeared", c.appeared), ("vanished", c.vanished)):
            lines.append(f"  associations {label}: {len(df)}")
            for r in df.head(TOP_WORDS).itertuples():
                lines.append(f"    '{r.word}' with {c.column}={r.grp} ({percent(r.share_group)} vs {percent(r.share_rest)}, "
                             f"q={q_value(r.q)})")
    return "\n".join(plain(line) for line in lines) + "\n"


def markdown(d: Diff) -> str:
    o = d.overall
    lines = [f"## audit diff: {md(d.old)} → {md(d.new)}", "",
             f"**Images:** {o.images_old} → {o.images_new} ({len(o.added)} added, {len(o.removed)} removed, "
             f"{o.kept} in both).", ""]
    if d.settings_note:
        lines += [f"**Note:** {md(d.settings_note)}", ""]
    if d.copies_note:
        lines += [md(d.copies_note[0].upper() + d.copies_note[1:]), ""]
    if o.added:
        lines += [f"Added: {md(_ids(o.added))}", ""]
    if o.removed:
        lines += [f"Removed: {md(_ids(o.removed))}", ""]
    v = o.divergence
    lines += [f"**{d.words_label.capitalize()} distribution:** Jensen–Shannon divergence {v.jsd:.3f} over the "
              f"{o.vocabulary} {d.words_label}s seen in "
              f"at least {o.min_count} images (0 = same, 1 = nothing in common); random splits of the pooled images "
              f"reach {v.noise:.3f} (95th percentile), p = {v.p:.2g}.", "",
              md(embeddings_sentence(d.embeddings, d.fdr)), "",
              f"| {d.words_label} | before | after | change |", "|---|---:|---:|---:|"]
    for r in o.words.head(TOP_WORDS).itertuples():
        lines.append(f"| {md(r.word)} | {percent(r.share_old)} | {percent(r.share_new)} | {change(r.delta)} |")
    for c in d.by_column:
        lines += ["", f"### By {md(c.column)}", "",
                  "| group | images before | after | share before | after | word JSD | noise | q |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in c.groups.itertuples():
            jsd = "– | – | –" if r.jsd != r.jsd else f"{r.jsd:.3f} | {r.noise:.3f} | {r.q:.2g}"
            lines.append(f"| {md(r.grp)} | {r.n_old} | {r.n_new} | {percent(r.share_old)} | {percent(r.share_new)} | {jsd} |")
        for label, df in (("appeared", c.appeared), ("vanished", c.vanished)):
            lines += ["", f"Associations {label}: {len(df)}"]
            if len(df):
                lines += ["", "| group | word | in group | in the rest | odds ratio (95% CI) | q |", "|---|---|---:|---:|---:|---:|"]
                for r in df.head(TOP_WORDS).itertuples():
                    lines.append(f"| {md(r.grp)} | {md(r.word)} | {percent(r.share_group)} | {percent(r.share_rest)} | "
                                 f"{ratio(r.odds_ratio)} ({ratio(r.odds_ratio_lo)}–{ratio(r.odds_ratio_hi)}) | {q_value(r.q)} |")
    return "\n".join(lines) + "\n"


def html(d: Diff) -> str:
    from audit.outputs.html import environment
    from audit.version import __version__

    return environment().get_template("diff.html.j2").render(
        d=d, o=d.overall, embeddings=embeddings_sentence(d.embeddings, d.fdr), top=TOP_WORDS, shown_ids=SHOWN_IDS, tool_version=__version__,
        generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


def renderer(out: str | os.PathLike):
    """The rendering a diff file's name asks for (by its suffix); an AuditError for any other name."""
    render = {".md": markdown, ".markdown": markdown, ".html": html, ".htm": html}.get(Path(out).suffix.lower())
    if render is None:
        raise AuditError(f"--out {out}: the file name must end in .html or .md")
    return render


def write_diff(d: Diff, out: str | os.PathLike) -> Path:
    return write_text(out, renderer(out)(d), "diff.html")
