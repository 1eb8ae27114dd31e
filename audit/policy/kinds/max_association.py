"""[max_association]: no (group, word) association stronger than a bound, whatever the word."""

from __future__ import annotations

from audit.formats import association, ratio
from audit.policy.base import ASSOC_EVIDENCE, ParseContext, Rule, RuleKind, RuleResult, Table, records


class MaxAssociation(RuleKind):
    table = "max_association"
    keys = ("max_odds_ratio", "include_group_names", "kind", "level")

    @classmethod
    def parse(cls, where: str, t: Table, ctx: ParseContext, index: int) -> list[Rule]:
        ctx.needs_groups(where)
        bound = t.get("max_odds_ratio", float, required=True)
        if bound < 1:
            raise t.fail("max_odds_ratio", f"must be at least 1 (no association), not {bound}")
        return [Rule(cls.table, cls.table, t.level(),
                     {"max_odds_ratio": bound, "kind": t.kind(("ascent", "concept")),
                      "include_group_names": t.get("include_group_names", bool, False)})]

    @classmethod
    def evaluate(cls, check, rule: Rule) -> RuleResult:
        bound, own, kind = rule.params["max_odds_ratio"], rule.params["include_group_names"], rule.params["kind"]
        hits = check.assoc_rows(lambda t: t.flagged & (own | ~t.names_group) & (t.odds_ratio_lo > bound), kind)
        rows = records(hits, ASSOC_EVIDENCE)
        tested = sum(check.assoc(c, kind=kind).tested for c in check.policy.group_by)
        summary = (f"{len(rows)} of {tested} tested pairs have an odds ratio CI above {ratio(bound)}"
                   + (f"; strongest: {association(rows[0])}" if rows else ""))
        return check.result(rule, bool(rows), summary, rows, {"associations": len(rows), "tested_pairs": tested})


KIND = MaxAssociation
