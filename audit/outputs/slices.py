"""`audit slices` as text: the slices with their words, the skews found, and the label-issue candidates."""

from __future__ import annotations

from audit.analysis.slices import Slices
from audit.formats import percent, q_value

SHOWN = 20


def text(found: Slices, scan: str) -> str:
    sizes = found.sizes()
    chosen = (f"chosen by silhouette among k = {min(found.silhouette)}..{max(found.silhouette)}"
              if found.silhouette else "as asked")
    subs = len(sizes) - found.k
    lines = [f"audit slices: {scan}",
             f"{found.images} images in {found.k} slices ({chosen})"
             + (f" and {subs} sub-slices" if subs else "") + f"; the tests count {found.counted} images "
             f"(copies: {found.settings.get('copies', 'collapse')})"]
    lines += [f"note: {n}" for n in found.notes]
    for row in sizes.head(SHOWN).itertuples():
        stored = ", ".join(found.words_of(row.slice, "stored")[:5]) or "-"
        vocab = ", ".join(found.words_of(row.slice, "vocabulary")[:5])
        words = f"words: {stored}" + (f"; vocabulary: {vocab}" if vocab else "")
        within = f" (in slice {int(row.parent)})" if row.parent >= 0 else ""
        lines.append(f"  slice {int(row.slice):>3}{within}: {int(row.images):>7} images ({percent(row.share)}); {words}")
    if len(sizes) > SHOWN:
        lines.append(f"  and {len(sizes) - SHOWN} more (scan-dir/slices/ holds them all)")
    flagged = found.flagged
    if found.by:
        if len(flagged):
            lines.append(f"skewed slices (q <= {found.settings.get('fdr')}, across {', '.join(found.by)}):")
            for r in flagged.head(SHOWN).itertuples():
                lines.append(f"  slice {int(r.slice)}: {r.column}={r.value} is {percent(r.share_slice)} of it against "
                             f"{percent(r.share_rest)} of the rest ({int(r.in_slice)} of {int(r.slice_size)}, "
                             f"q={q_value(r.q)})")
        else:
            lines.append(f"skewed slices across {', '.join(found.by)}: none at q <= {found.settings.get('fdr')}")
    if found.labels is not None:
        issues = found.label_issues
        lines.append(f"label-issue candidates in {found.labels!r}: {len(issues)} (a cross-fitted probe on the "
                     "embeddings disagrees with the given label; candidates to look at, not verdicts)")
        for r in issues.head(SHOWN).itertuples():
            lines.append(f"  {r.image_id}: given {r.given}, suggested {r.suggested} "
                         f"(probability of the given {r.quality:.3f})")
    return "\n".join(lines) + "\n"
