"""`audit duplicates` as text: how many copies, the largest clusters, leaks, and what was not looked at."""

from __future__ import annotations

from audit.analysis.duplicates import Copies
from audit.formats import percent

SHOWN = 10


def text(found: Copies, scan: str) -> str:
    s = found.settings
    rule = (f"pHash within {s['same_hash_distance']} bits, or within {s['max_hash_distance']} bits with embedding "
            f"cosine >= {s['min_cosine']}" + (f", or cosine >= {s['tight_cosine']}" if s.get("tight_cosine") else ""))
    lines = [f"audit duplicates: {scan}",
             f"{found.images} images; {found.clusters} cluster{'s' if found.clusters != 1 else ''} of copies hold "
             f"{len(found.copies)} of them: "
             f"{found.collapsed} ({percent(found.share)}) are copies of another image and count once when "
             "copies are collapsed",
             f"near copies: {rule}"]
    lines += [f"note: {n}" for n in found.notes]
    sizes = found.cluster_sizes()
    if len(sizes):
        lines.append("largest clusters (size: representative, exact + near copies):")
        for r in sizes.head(SHOWN).itertuples():
            lines.append(f"  {int(r.size):>5}: {r.representative} ({int(r.exact)} exact, {int(r.near)} near)")
        if len(sizes) > SHOWN:
            lines.append(f"  and {len(sizes) - SHOWN} more clusters (scan-dir/duplicates/copies.parquet lists all)")
    if found.split_by or found.against:
        counts = found.leak_counts()
        where = ([f"across {found.split_by!r}"] if found.split_by else []) + [f"against {a}" for a in found.against]
        if len(counts):
            lines.append(f"leaks ({', '.join(where)}): images of one side with a copy on the other:")
            lines += [f"  {r.side} -> {r.other_side}: {int(r.images)}" for r in counts.itertuples()]
        else:
            lines.append(f"leaks ({', '.join(where)}): none")
    return "\n".join(lines) + "\n"
