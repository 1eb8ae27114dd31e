"""[drift]: what may change against a --baseline scan: the words overall, each group's words, each group's share
of the images, associations that appear, and what the images show (their stored embeddings). One table, up to
five rules."""

from __future__ import annotations

from audit.errors import AuditError
from audit.formats import association, percent
from audit.policy.base import (
    ASSOC_EVIDENCE,
    EVIDENCE_ROWS,
    ParseContext,
    Rule,
    RuleKind,
    RuleResult,
    Table,
    records,
)

BOUNDS = {"drift.words": "max_jsd", "drift.group_words": "max_group_jsd", "drift.group_shares": "max_share_change"}


class Drift(RuleKind):
    table = "drift"
    keys = ("max_jsd", "max_group_jsd", "max_share_change", "new_associations", "embeddings", "kind", "level")
    kinds = (*BOUNDS, "drift.new_associations", "drift.embeddings")

    @classmethod
    def parse(cls, where: str, t: Table, ctx: ParseContext, index: int) -> list[Rule]:
        level = t.level()
        kind = t.kind(("ascent", "concept"))
        bounds = {rule: (key, t.share(key)) for rule, key in BOUNDS.items()}
        new_assoc = t.get("new_associations", bool, False)
        rules = []
        for rule, (key, bound) in bounds.items():
            if bound is not None:
                if rule != "drift.words":
                    ctx.needs_groups(f"{where}.{key}")
                rules.append(Rule(rule, rule, level, {key: bound, "kind": kind}))
        if new_assoc:
            ctx.needs_groups(f"{where}.new_associations")
            rules.append(Rule("drift.new_associations", "drift.new_associations", level, {"kind": kind}))
        if t.get("embeddings", bool, False):
            rules.append(Rule("drift.embeddings", "drift.embeddings", level, {"kind": kind}))
        if not rules:
            raise AuditError(f"{ctx.path}: {where} sets no bound; give max_jsd, max_group_jsd, max_share_change, "
                             "new_associations = true or embeddings = true")
        return rules

    @classmethod
    def evaluate(cls, check, rule: Rule) -> RuleResult:
        if check.base is None:
            return RuleResult(rule, "skip", "no --baseline scan given")
        kind, words = rule.kind, rule.params["kind"]
        fdr = check.policy.fdr
        if kind == "drift.embeddings":
            return cls._embeddings(check, rule, words, fdr)
        if kind == "drift.words":
            d, bound = check.drift(None, words), rule.params["max_jsd"]
            v = d.divergence
            top = d.words.head(5)
            moved = ", ".join(f"'{w}' {percent(o)}->{percent(n)}" for w, o, n in
                              zip(top.word, top.share_old, top.share_new, strict=True))
            summary = (f"Jensen-Shannon divergence {v.jsd:.3f} over the {d.vocabulary} words seen in at least "
                       f"{d.min_count} images (limit {bound:g}; random splits of the pooled images reach "
                       f"{v.noise:.3f}, p={v.p:.2g}); moved most: {moved or 'none'}")
            return check.result(rule, v.jsd > bound and v.p < fdr, summary,
                                records(d.words.head(EVIDENCE_ROWS), ["word", "n_old", "n_new", "share_old",
                                                                      "share_new", "delta"]),
                                {"jsd": v.jsd, "p": v.p, "noise": v.noise, "vocabulary": d.vocabulary,
                                 "images_added": len(d.added), "images_removed": len(d.removed)})
        rows: list[dict] = []
        for col in check.policy.group_by:
            d = check.drift(col, words)
            g = d.groups.assign(column=col)
            if kind == "drift.group_words":
                bound = rule.params["max_group_jsd"]
                moved = g[(g.jsd > bound) & (g.q < fdr)].sort_values("jsd", ascending=False)
                rows += records(moved, ["column", "grp", "n_old", "n_new", "jsd", "noise", "q"])
            elif kind == "drift.group_shares":
                bound = rule.params["max_share_change"]
                rows += records(g[g.delta.abs() > bound].sort_values("delta", key=lambda x: -x.abs()),
                                ["column", "grp", "n_old", "n_new", "share_old", "share_new", "delta"])
            else:
                rows += records(d.appeared.assign(column=col), ASSOC_EVIDENCE)
        if kind == "drift.group_words":
            summary = (f"{len(rows)} group(s) whose word distribution moved by more than {bound:g} (Jensen-Shannon, "
                       f"q<{fdr} against random splits)"
                       + "".join(f"; {r['column']}={r['grp']} {r['jsd']:.3f} (noise {r['noise']:.3f})"
                                 for r in rows[:3]))
        elif kind == "drift.group_shares":
            summary = (f"{len(rows)} group share(s) moved by more than {percent(bound)}"
                       + "".join(f"; {r['column']}={r['grp']} {percent(r['share_old'])}->{percent(r['share_new'])}"
                                 for r in rows[:3]))
        else:
            summary = (f"{len(rows)} association(s) significant now but not in the baseline"
                       + (f"; strongest: {association(rows[0])}" if rows else ""))
        return check.result(rule, bool(rows), summary, rows, {"violations": len(rows)})


    @classmethod
    def _embeddings(cls, check, rule: Rule, words: str, fdr: float) -> RuleResult:
        e = check.embeddings()
        if not e.available:
            return RuleResult(rule, "skip", f"embeddings not compared: {e.missing}")
        top = check.drift(None, words).words.head(5)
        moved = ", ".join(f"'{w}' {percent(o)}->{percent(n)}" for w, o, n in
                          zip(top.word, top.share_old, top.share_new, strict=True))
        drifted = e.p < fdr
        said = f"; the new images are {e.words.said()}" if drifted and e.words is not None else ""
        summary = (f"maximum mean discrepancy of the image embeddings {e.mmd2:.4f} ({e.images_old} vs "
                   f"{e.images_new} sampled images; shuffled snapshots reach {e.noise:.4f}, p={e.p:.2g}){said}; "
                   f"{words} words that moved most: {moved or 'none'}")
        measured = {"mmd2": e.mmd2, "noise": e.noise, "p": e.p, "images_old": e.images_old,
                    "images_new": e.images_new}
        if drifted and e.words is not None:
            measured["more_like"] = [{"word": w, "r": s} for w, s in e.words.arrived]
            measured["less_like"] = [{"word": w, "r": s} for w, s in e.words.left]
        return check.result(rule, drifted, summary,
                            records(top, ["word", "n_old", "n_new", "share_old", "share_new", "delta"]), measured)


KIND = Drift
