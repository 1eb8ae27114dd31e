"""[min_images_per_group]: groups too small for their statistics to say much."""

from __future__ import annotations

from audit.policy.base import ParseContext, Rule, RuleKind, RuleResult, Table


class MinImagesPerGroup(RuleKind):
    table = "min_images_per_group"
    keys = ("limit", "level")

    @classmethod
    def parse(cls, where: str, t: Table, ctx: ParseContext, index: int) -> list[Rule]:
        ctx.needs_groups(where)
        return [Rule(cls.table, cls.table, t.level(), {"limit": t.positive("limit", int, required=True)})]

    @classmethod
    def evaluate(cls, check, rule: Rule) -> RuleResult:
        limit = rule.params["limit"]
        small = []
        n_groups = 0
        for col in check.policy.group_by:
            g = check.q.group_sizes(col)
            n_groups += len(g)
            small += [{"column": col, "grp": r.grp, "n": int(r.n)} for r in g.itertuples() if r.n < limit]
        summary = (f"{len(small)} of {n_groups} groups have fewer than {limit} images"
                   + (": " + ", ".join(f"{s['column']}={s['grp']} ({s['n']})" for s in small[:5]) if small else ""))
        return check.result(rule, bool(small), summary, small, {"groups": n_groups, "too_small": len(small)})


KIND = MinImagesPerGroup
