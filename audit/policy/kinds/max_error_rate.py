"""[max_error_rate]: the share of images that could not be read, audit's own failures listed first."""

from __future__ import annotations

from audit.errors import internal_errors_note
from audit.formats import percent
from audit.policy.base import EVIDENCE_ROWS, ParseContext, Rule, RuleKind, RuleResult, Table, records
from audit.store.schema import INTERNAL


class MaxErrorRate(RuleKind):
    table = "max_error_rate"
    keys = ("limit", "level")

    @classmethod
    def parse(cls, where: str, t: Table, ctx: ParseContext, index: int) -> list[Rule]:
        return [Rule(cls.table, cls.table, t.level(), {"limit": t.share("limit", required=True)})]

    @classmethod
    def evaluate(cls, check, rule: Rule) -> RuleResult:
        q = check.q
        bad, internal = q.unreadable(), q.internal_errors()
        total = bad + int(q.scalar("SELECT count(*) FROM all_images"))
        rate = bad / total if total else 0.0
        limit = rule.params["limit"]
        ev = []
        if rate > limit or internal:
            # audit's own failures first: they are the ones a user should report, whatever the rate.
            ev = records(q.df("SELECT image_id, path, stage, reason FROM errors "
                              "ORDER BY stage <> ?, image_id LIMIT ?", [INTERNAL, EVIDENCE_ROWS]),
                         ["image_id", "path", "stage", "reason"])
        summary = f"{bad} of {total} images unreadable ({percent(rate)}; limit {percent(limit)})"
        if internal:
            summary += f"; {internal_errors_note(internal)}"
        return check.result(rule, rate > limit, summary, ev,
                            {"unreadable": bad, "internal_errors": internal, "images_seen": total, "error_rate": rate})


KIND = MaxErrorRate
