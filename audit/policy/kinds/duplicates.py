"""[duplicates]: fail when more than `max_share` of the images are copies of another image."""

from __future__ import annotations

from audit.analysis.duplicates import copies_of
from audit.formats import percent
from audit.policy.base import EVIDENCE_ROWS, ParseContext, Rule, RuleKind, RuleResult, Table, records


class Duplicates(RuleKind):
    table = "duplicates"
    keys = ("max_share", "level")

    @classmethod
    def parse(cls, where: str, t: Table, ctx: ParseContext, index: int) -> list[Rule]:
        return [Rule(cls.table, cls.table, t.level(), {"max_share": t.share("max_share", required=True)})]

    @classmethod
    def evaluate(cls, check, rule: Rule) -> RuleResult:
        found = check.q.copies if check.q.copies is not None else copies_of(check.q.scan)
        limit = rule.params["max_share"]
        broken = found.share > limit
        sizes = found.cluster_sizes()
        summary = (f"{found.collapsed} of {found.images} images ({percent(found.share)}) are copies of another, "
                   f"in {found.clusters} clusters (limit {percent(limit)})")
        if len(sizes):
            top = sizes.iloc[0]
            summary += f"; the largest holds {int(top['size'])} images ({top.representative})"
        ev = records(sizes.head(EVIDENCE_ROWS), ["cluster", "representative", "size", "exact", "near"]) if broken else []
        return check.result(rule, broken, summary, ev, {"images": found.images, "copies": found.collapsed,
                                                        "clusters": found.clusters, "share": found.share})


KIND = Duplicates
