"""[grounding]: every finding `audit verify` judged must be grounded in its image region; a finding whose word
does not fall when its own region goes is read from the whole image or its context, and says so here."""

from __future__ import annotations

from audit.policy.base import ParseContext, Rule, RuleKind, RuleResult, Table, records


class Grounding(RuleKind):
    table = "grounding"
    keys = ("kind", "level")

    @classmethod
    def parse(cls, where: str, t: Table, ctx: ParseContext, index: int) -> list[Rule]:
        ctx.needs_groups(where)
        return [Rule(cls.table, cls.table, t.level(), {"kind": t.kind(("ascent", "concept"))})]

    @classmethod
    def evaluate(cls, check, rule: Rule) -> RuleResult:
        kind = rule.params["kind"]
        judged = check.grounding()
        judged = judged[judged.kind.eq(kind) & judged.column.isin(check.policy.group_by)]
        if not len(judged):
            return RuleResult(rule, "skip", "no finding was verified: run `audit verify SCAN --group-by "
                              f"{' --group-by '.join(check.policy.group_by)}` first", [], {})
        loose = judged[judged.verdict != "grounded"]
        rows = records(loose, ["column", "grp", "word", "images", "needed", "enough", "effect", "q",
                                "verdict"])
        summary = f"{len(loose)} of {len(judged)} verified finding(s) not localised"
        if rows:
            r = rows[0]
            summary += (f"; first: '{r['word']}' with {r['column']}={r['grp']} (its cells needed "
                        f"{r['needed']:.3f}, enough {r['enough']:.3f} beyond random cells)")
        return check.result(rule, bool(rows), summary, rows, {"verified": len(judged), "not_localised": len(loose)})


KIND = Grounding
