"""[[watch]]: words that must not be linked to any group (ascent words, concepts, or probe words by cosine)."""

from __future__ import annotations

import pandas as pd

from audit.analysis.associations import probes
from audit.errors import AuditError
from audit.formats import association, ratio
from audit.policy.base import (
    ASSOC_EVIDENCE,
    ParseContext,
    Rule,
    RuleKind,
    RuleResult,
    Table,
    phrases,
    records,
    words,
)
from audit.store.schema import PROBE


class Watch(RuleKind):
    table = "watch"
    keys = ("name", "words", "min_odds_ratio", "grounded_only", "kind", "level")

    @classmethod
    def parse(cls, where: str, t: Table, ctx: ParseContext, index: int) -> list[Rule]:
        ctx.needs_groups(where)
        name = t.get("name", str, f"list{index + 1}")
        kind = t.kind(("ascent", "concept", "probe"))
        watched = words(t, "words") if kind != "probe" else phrases(t, "words")
        if not watched:
            raise AuditError(f"{ctx.path}: {where}.words is empty; list the words to watch")
        bound = t.get("min_odds_ratio", float, 1.0)
        if bound < 1:
            raise t.fail("min_odds_ratio", f"must be at least 1 (no association), not {bound}")
        grounded_only = t.get("grounded_only", bool, False)
        if grounded_only and kind == "probe":
            raise t.fail("grounded_only", "applies to ascent and concept words, whose findings `audit verify` judges")
        return [Rule(cls.table, name, t.level(), {"words": watched, "min_odds_ratio": bound, "kind": kind,
                                                  "grounded_only": grounded_only})]

    @classmethod
    def evaluate(cls, check, rule: Rule) -> RuleResult:
        watched, bound, kind = rule.params["words"], rule.params["min_odds_ratio"], rule.params["kind"]
        if kind == PROBE:
            return cls.evaluate_probes(check, rule)
        hits = check.assoc_rows(lambda t: t.word.isin(watched) & t.flagged & (t.odds_ratio_lo > bound), kind)
        tested = set().union(*(set(check.assoc(c, kind=kind).table.word) for c in check.policy.group_by))
        untested = [w for w in watched if w not in tested]
        excused = 0
        if rule.params.get("grounded_only") and len(hits):
            # Only a finding `audit verify` judged not localised is let off; one never verified still counts.
            judged = check.grounding()
            loose = set(zip(*(judged[judged.verdict != "grounded"][c] for c in ("column", "kind", "grp", "word")),
                            strict=True))
            keep = [(c, kind, g, w) not in loose for c, g, w in zip(hits.column, hits.grp, hits.word, strict=True)]
            excused = len(hits) - sum(keep)
            hits = hits[keep]
        rows = records(hits, ASSOC_EVIDENCE)
        if rows:
            summary = f"{len(rows)} watched association(s); strongest: {association(rows[0])}"
            if excused:
                summary += f"; {excused} more verified as not localised"
        else:
            summary = (f"no watched word is linked to a group (q<{check.policy.fdr}, odds ratio CI above "
                       f"{ratio(bound)}); {len(watched) - len(untested)} of {len(watched)} words seen in at least "
                       f"{check.policy.min_count} images and tested")
        if excused and not rows:
            summary = f"{excused} watched association(s), each verified as not localised in its images"
        return check.result(rule, bool(rows), summary, rows, {"associations": len(rows), "untested_words": untested,
                                                              "not_localised": excused})

    @classmethod
    def evaluate_probes(cls, check, rule: Rule) -> RuleResult:
        """A watched probe word fails when a group's images score it higher than the rest's (q < fdr)."""
        watched = rule.params["words"]
        frames = []
        for col in check.policy.group_by:
            t = probes(check.q, col, check.policy.fdr).cosines
            frames.append(t[t.word.isin(watched) & t.flagged & (t.difference > 0)].assign(column=col))
        hits = pd.concat(frames, ignore_index=True).sort_values("difference", ascending=False)
        asked = set(check.q.probe_words())
        missing = [w for w in watched if w not in asked]
        rows = records(hits, ["column", "grp", "word", "n", "mean", "mean_rest", "difference", "q"])
        if rows:
            r = rows[0]
            summary = (f"{len(rows)} watched probe association(s); strongest: '{r['word']}' with "
                       f"{r['column']}={r['grp']}, mean cosine {r['mean']:.3f} vs {r['mean_rest']:.3f} in the rest "
                       f"(q={r['q']:.2g})")
        else:
            summary = (f"no watched probe word scores higher in a group (q<{check.policy.fdr}); "
                       f"{len(watched) - len(missing)} of {len(watched)} were probe words of the scan")
        return check.result(rule, bool(rows), summary, rows, {"associations": len(rows), "untested_words": missing})


KIND = Watch
