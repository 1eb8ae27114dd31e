"""[[heatmap]]: where CLIP looks for a word must not differ between a group and the rest by more than a bound."""

from __future__ import annotations

import pandas as pd

from audit.analysis.associations import LOOK_STATS, compare_looks
from audit.errors import AuditError
from audit.policy.base import ParseContext, Rule, RuleKind, RuleResult, Table, phrases, records, words
from audit.store.query import WordFilter
from audit.store.schema import PROBE


class Heatmap(RuleKind):
    table = "heatmap"
    keys = ("name", "stat", "words", "max_difference", "kind", "level")

    @classmethod
    def parse(cls, where: str, t: Table, ctx: ParseContext, index: int) -> list[Rule]:
        ctx.needs_groups(where)
        stat = t.get("stat", str, "box_mass")
        if stat not in LOOK_STATS:
            raise AuditError(f"{ctx.path}: {where}.stat is one of {', '.join(LOOK_STATS)}, not {stat!r}")
        name = t.get("name", str, f"{stat}{index + 1}" if index else stat)
        kind = t.kind(("ascent", "concept", "probe"))
        chosen = words(t, "words") if kind != "probe" else phrases(t, "words")
        return [Rule(cls.table, name, t.level(), {"stat": stat, "words": chosen, "kind": kind,
                                                  "max_difference": t.share("max_difference", required=True)})]

    @classmethod
    def evaluate(cls, check, rule: Rule) -> RuleResult:
        stat, bound, kind = rule.params["stat"], rule.params["max_difference"], rule.params["kind"]
        q = check.q
        if q.scalar(f'SELECT count("{stat}") FROM all_heatmaps WHERE kind = ?', [kind]) == 0:
            return RuleResult(rule, "skip", f"the scan has no {stat} values (no object boxes in the source)"
                              if stat == "box_mass" else f"the scan has no {stat} values of {kind} words")
        frames = []
        for col in check.policy.group_by:
            grps = q.group_sizes(col).grp
            if kind == PROBE:
                chosen = rule.params["words"] or q.probe_words()
            else:
                chosen = rule.params["words"] or sorted(set(check.assoc(col, kind=kind).table.word))
            pairs = [(g, w) for w in chosen for g in grps]
            looks = compare_looks(q, col, pairs, [stat], kind=kind,
                                  word_filter=check.words if kind != PROBE else WordFilter())
            frames.append(looks.assign(column=col))
        looks = pd.concat(frames, ignore_index=True)
        looks["difference"] = looks.median_group - looks.median_rest
        bad = looks[(looks.q < check.policy.fdr) & (looks.difference.abs() > bound)]
        bad = bad.sort_values("difference", key=lambda d: -d.abs())
        rows = records(bad, ["column", "grp", "word", "stat", "median_group", "median_rest", "difference",
                             "n_group", "n_rest", "q"])
        summary = f"{len(rows)} of {len(looks)} (group, word) comparisons differ in median {stat} by more than {bound:g}"
        if rows:
            r = rows[0]
            summary += (f"; largest: '{r['word']}' in {r['column']}={r['grp']} {r['median_group']:.2f} vs "
                        f"{r['median_rest']:.2f} in the rest (q={r['q']:.2g})")
        return check.result(rule, bool(rows), summary, rows, {"violations": len(rows), "comparisons": len(looks)})


KIND = Heatmap
