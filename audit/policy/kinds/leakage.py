"""[leakage]: fail on any image with a copy across the values of a split column, or in another scan (a test set
leaking into training, a release's images coming back)."""

from __future__ import annotations

from pathlib import Path

from audit.analysis.duplicates import leaks_of
from audit.errors import AuditError
from audit.policy.base import EVIDENCE_ROWS, ParseContext, Rule, RuleKind, RuleResult, Table, records


class Leakage(RuleKind):
    table = "leakage"
    keys = ("split_by", "against", "level")

    @classmethod
    def parse(cls, where: str, t: Table, ctx: ParseContext, index: int) -> list[Rule]:
        split_by = t.get("split_by", str)
        # A scan named in a policy is found next to the policy, wherever the check runs from.
        against = [a if Path(a).is_absolute() else str(Path(ctx.path).parent / a) for a in t.get("against", list, [])]
        if split_by is None and not against:
            raise AuditError(f"{ctx.path}: {where} needs split_by (a column whose values must not share a copy) "
                             "or against (scans that must not hold a copy of this one's images)")
        return [Rule(cls.table, cls.table, t.level(), {"split_by": split_by, "against": against})]

    @classmethod
    def evaluate(cls, check, rule: Rule) -> RuleResult:
        split_by, against = rule.params["split_by"], rule.params["against"]
        leaks = leaks_of(check.q.scan, split_by, against)
        counts = (leaks.groupby(["side", "other_side"]).image_id.nunique().to_dict() if len(leaks) else {})
        where = ([f"across {split_by!r}"] if split_by else []) + [f"against {a}" for a in against]
        if counts:
            summary = f"{leaks.image_id.nunique()} images have a copy {' and '.join(where)}: " + "; ".join(
                f"{n} of {side} in {other}" for (side, other), n in sorted(counts.items()))
        else:
            summary = f"no copy {' or '.join(where)}"
        ev = records(leaks.head(EVIDENCE_ROWS), ["image_id", "side", "other_side", "other_image_id", "kind"])
        return check.result(rule, bool(len(leaks)), summary, ev,
                            {"leaked_images": int(leaks.image_id.nunique()) if len(leaks) else 0,
                             "pairs": {f"{s} -> {o}": int(n) for (s, o), n in counts.items()}})


KIND = Leakage
