"""[label_issues]: fail when more than `max_share` of the images with a value of `column` are label-issue
candidates (analysis.slices: a cross-fitted probe on the embeddings and cleanlab)."""

from __future__ import annotations

from audit.analysis.slices import slices_of
from audit.formats import percent
from audit.policy.base import EVIDENCE_ROWS, ParseContext, Rule, RuleKind, RuleResult, Table, records


class LabelIssues(RuleKind):
    table = "label_issues"
    keys = ("column", "max_share", "level")

    @classmethod
    def parse(cls, where: str, t: Table, ctx: ParseContext, index: int) -> list[Rule]:
        return [Rule(cls.table, cls.table, t.level(), {"column": t.get("column", str, "label"),
                                                       "max_share": t.share("max_share", required=True)})]

    @classmethod
    def evaluate(cls, check, rule: Rule) -> RuleResult:
        column, limit = rule.params["column"], rule.params["max_share"]
        found = slices_of(check.q.scan.root, [], labels=column)
        labelled = int(check.q.scalar(f"SELECT count({check.q.check_group_column(column)}) FROM images"))
        issues = found.label_issues
        share = len(issues) / labelled if labelled else 0.0
        broken = share > limit
        summary = (f"{len(issues)} of {labelled} images ({percent(share)}) are label-issue candidates in "
                   f"{column!r} (limit {percent(limit)})")
        if len(issues):
            top = issues.iloc[0]
            summary += f"; the most suspect: {top.image_id} given {top.given}, suggested {top.suggested}"
        ev = records(issues.head(EVIDENCE_ROWS), ["image_id", "given", "suggested", "quality"]) if broken else []
        return check.result(rule, broken, summary, ev, {"labelled": labelled, "candidates": len(issues),
                                                        "share": share})


KIND = LabelIssues
