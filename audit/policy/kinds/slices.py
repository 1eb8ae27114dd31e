"""[slices]: fail when a slice (analysis.slices) holding at least `min_share` of the images is skewed across a
column: one of the column's values significantly over-represented in it (the FDR-controlled test) with a lift
above `max_lift`."""

from __future__ import annotations

from audit.analysis.slices import slices_of
from audit.formats import percent, q_value
from audit.policy.base import EVIDENCE_ROWS, ParseContext, Rule, RuleKind, RuleResult, Table, records


class Slices(RuleKind):
    table = "slices"
    keys = ("column", "min_share", "max_lift", "level")

    @classmethod
    def parse(cls, where: str, t: Table, ctx: ParseContext, index: int) -> list[Rule]:
        return [Rule(cls.table, cls.table, t.level(), {"column": t.get("column", str, "label"),
                                                       "min_share": t.share("min_share", 0.05),
                                                       "max_lift": t.positive("max_lift", float, 2.0)})]

    @classmethod
    def evaluate(cls, check, rule: Rule) -> RuleResult:
        column, min_share, max_lift = rule.params["column"], rule.params["min_share"], rule.params["max_lift"]
        found = slices_of(check.q.scan.root, [column])
        sizes = found.sizes().set_index("slice")
        t = found.flagged
        t = t[(t.column == column) & (t.lift > max_lift)]
        t = t[t.slice.map(sizes.share).fillna(0) >= min_share]
        if len(t):
            top = t.iloc[0]
            summary = (f"{t.slice.nunique()} slice(s) of at least {percent(min_share)} of the images are skewed "
                       f"across {column!r} beyond a lift of {max_lift}: slice {int(top.slice)} "
                       f"({int(sizes.images[top.slice])} images; words: "
                       f"{', '.join(found.words_of(int(top.slice))[:4]) or '-'}) holds {column}={top.value} "
                       f"{percent(top.share_slice)} against {percent(top.share_rest)} elsewhere (q={q_value(top.q)})")
        else:
            summary = (f"no slice of at least {percent(min_share)} of the images is skewed across {column!r} beyond "
                       f"a lift of {max_lift} ({found.k} slices)")
        ev = records(t.head(EVIDENCE_ROWS), ["slice", "value", "in_slice", "slice_size", "share_slice", "share_rest",
                                             "lift", "q"])
        return check.result(rule, bool(len(t)), summary, ev, {"slices": found.k, "skewed": int(t.slice.nunique())})


KIND = Slices
