"""`audit check`: a scan (and optionally a baseline scan) against a policy; findings and an exit code.

Exit 0 when every rule passes (warnings and skipped rules included), 1 when a rule at level "fail" fails.
Usage errors (bad policy, unknown column, missing scan) are AuditErrors, which the CLI turns into exit 2.
Every number comes from analysis.py and drift.py, the same code the report and `audit diff` use.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import pandas as pd

from audit.analysis.associations import Associations, associations, compare_looks, probes, word_filter
from audit.analysis.drift import Drift, compare
from audit.errors import AuditError, internal_errors_note
from audit.formats import association, percent, ratio
from audit.policy.parse import Policy, Rule
from audit.store.query import ScanQuery, WordFilter
from audit.store.schema import ASCENT, INTERNAL, PROBE
from audit.store.settings import differences_note

EVIDENCE_ROWS = 20  # per rule in the outputs; the count of all rows is always given


@dataclass
class RuleResult:
    rule: Rule
    status: str  # pass | fail | warn | skip
    summary: str
    evidence: list[dict] = field(default_factory=list)
    measured: dict = field(default_factory=dict)  # the rule's headline numbers, for the JSON output

    @property
    def failed(self) -> bool:
        return self.status == "fail"


@dataclass
class CheckResult:
    scan: str
    baseline: str | None
    policy: Policy
    images: int
    unreadable: int
    results: list[RuleResult]
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if any(r.failed for r in self.results) else 0

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)


def _records(df: pd.DataFrame, columns: list[str]) -> list[dict]:
    out = []
    for r in df[columns].to_dict("records"):
        out.append({k: (None if isinstance(v, float) and math.isnan(v) else
                        v.item() if hasattr(v, "item") else v) for k, v in r.items()})
    return out


ASSOC_EVIDENCE = ["column", "grp", "word", "a", "n_group", "share_group", "share_rest", "odds_ratio",
                  "odds_ratio_lo", "odds_ratio_hi", "q"]


class _Checker:
    def __init__(self, q: ScanQuery, policy: Policy, base: ScanQuery | None):
        self.q, self.policy, self.base = q, policy, base
        self.words = word_filter(policy.stop_words, policy.min_relative_cosine)
        self._assoc: dict[tuple[str, str, str], Associations] = {}
        self._drift: dict[tuple[str | None, str], Drift] = {}

    def assoc(self, column: str, which: str = "new", kind: str = ASCENT) -> Associations:
        key = (which, column, kind)
        if key not in self._assoc:
            q = self.q if which == "new" else self.base
            self._assoc[key] = associations(q, column, self.policy.min_count, self.policy.fdr, kind=kind,
                                            words=self.words)
        return self._assoc[key]

    def drift(self, column: str | None, kind: str = ASCENT) -> Drift:
        if column is None and self.policy.group_by:  # a per-group comparison carries the overall one too
            return self.drift(self.policy.group_by[0], kind)
        if (column, kind) not in self._drift:
            kw = {}
            if column is not None:
                kw = {"assoc_old": self.assoc(column, "old", kind), "assoc_new": self.assoc(column, "new", kind)}
            self._drift[column, kind] = compare(self.base, self.q, column, min_count=self.policy.min_count,
                                                fdr=self.policy.fdr, kind=kind, keep=self.words, **kw)
        return self._drift[column, kind]

    def assoc_rows(self, pick, kind: str = ASCENT) -> pd.DataFrame:
        frames = []
        for col in self.policy.group_by:
            t = self.assoc(col, kind=kind).table
            frames.append(t[pick(t)].assign(column=col))
        return pd.concat(frames, ignore_index=True).sort_values("odds_ratio_lo", ascending=False) if frames else \
            pd.DataFrame(columns=ASSOC_EVIDENCE)

    # ---- rules -------------------------------------------------------------------------------------
    def max_error_rate(self, rule: Rule) -> RuleResult:
        bad, internal = self.q.unreadable(), self.q.internal_errors()
        total = bad + int(self.q.scalar("SELECT count(*) FROM images"))
        rate = bad / total if total else 0.0
        limit = rule.params["limit"]
        ev = []
        if rate > limit or internal:
            # audit's own failures first: they are the ones a user should report, whatever the rate.
            ev = _records(self.q.df("SELECT image_id, path, stage, reason FROM errors "
                                    "ORDER BY stage <> ?, image_id LIMIT ?", [INTERNAL, EVIDENCE_ROWS]),
                          ["image_id", "path", "stage", "reason"])
        summary = f"{bad} of {total} images unreadable ({percent(rate)}; limit {percent(limit)})"
        if internal:
            summary += f"; {internal_errors_note(internal)}"
        return self.result(rule, rate > limit, summary, ev,
                           {"unreadable": bad, "internal_errors": internal, "images_seen": total, "error_rate": rate})

    def min_images_per_group(self, rule: Rule) -> RuleResult:
        limit = rule.params["limit"]
        small = []
        n_groups = 0
        for col in self.policy.group_by:
            g = self.q.group_sizes(col)
            n_groups += len(g)
            small += [{"column": col, "grp": r.grp, "n": int(r.n)} for r in g.itertuples() if r.n < limit]
        summary = (f"{len(small)} of {n_groups} groups have fewer than {limit} images"
                   + (": " + ", ".join(f"{s['column']}={s['grp']} ({s['n']})" for s in small[:5]) if small else ""))
        return self.result(rule, bool(small), summary, small, {"groups": n_groups, "too_small": len(small)})

    def watch(self, rule: Rule) -> RuleResult:
        words, bound, kind = rule.params["words"], rule.params["min_odds_ratio"], rule.params["kind"]
        if kind == PROBE:
            return self.watch_probes(rule)
        hits = self.assoc_rows(lambda t: t.word.isin(words) & t.flagged & (t.odds_ratio_lo > bound), kind)
        tested = set().union(*(set(self.assoc(c, kind=kind).table.word) for c in self.policy.group_by))
        untested = [w for w in words if w not in tested]
        rows = _records(hits, ASSOC_EVIDENCE)
        if rows:
            summary = f"{len(rows)} watched association(s); strongest: {association(rows[0])}"
        else:
            summary = (f"no watched word is linked to a group (q<{self.policy.fdr}, odds ratio CI above "
                       f"{ratio(bound)}); {len(words) - len(untested)} of {len(words)} words seen in at least "
                       f"{self.policy.min_count} images and tested")
        return self.result(rule, bool(rows), summary, rows, {"associations": len(rows), "untested_words": untested})

    def watch_probes(self, rule: Rule) -> RuleResult:
        """A watched probe word fails when a group's images score it higher than the rest's (q < fdr)."""
        words = rule.params["words"]
        frames = []
        for col in self.policy.group_by:
            t = probes(self.q, col, self.policy.fdr).cosines
            frames.append(t[t.word.isin(words) & t.flagged & (t.difference > 0)].assign(column=col))
        hits = pd.concat(frames, ignore_index=True).sort_values("difference", ascending=False)
        asked = set(self.q.probe_words())
        missing = [w for w in words if w not in asked]
        rows = _records(hits, ["column", "grp", "word", "n", "mean", "mean_rest", "difference", "q"])
        if rows:
            r = rows[0]
            summary = (f"{len(rows)} watched probe association(s); strongest: '{r['word']}' with "
                       f"{r['column']}={r['grp']}, mean cosine {r['mean']:.3f} vs {r['mean_rest']:.3f} in the rest "
                       f"(q={r['q']:.2g})")
        else:
            summary = (f"no watched probe word scores higher in a group (q<{self.policy.fdr}); "
                       f"{len(words) - len(missing)} of {len(words)} were probe words of the scan")
        return self.result(rule, bool(rows), summary, rows, {"associations": len(rows), "untested_words": missing})

    def max_association(self, rule: Rule) -> RuleResult:
        bound, own, kind = rule.params["max_odds_ratio"], rule.params["include_group_names"], rule.params["kind"]
        hits = self.assoc_rows(lambda t: t.flagged & (own | ~t.names_group) & (t.odds_ratio_lo > bound), kind)
        rows = _records(hits, ASSOC_EVIDENCE)
        tested = sum(self.assoc(c, kind=kind).tested for c in self.policy.group_by)
        summary = (f"{len(rows)} of {tested} tested pairs have an odds ratio CI above {ratio(bound)}"
                   + (f"; strongest: {association(rows[0])}" if rows else ""))
        return self.result(rule, bool(rows), summary, rows, {"associations": len(rows), "tested_pairs": tested})

    def heatmap(self, rule: Rule) -> RuleResult:
        stat, bound, kind = rule.params["stat"], rule.params["max_difference"], rule.params["kind"]
        if self.q.scalar(f'SELECT count("{stat}") FROM all_heatmaps WHERE kind = ?', [kind]) == 0:
            return RuleResult(rule, "skip", f"the scan has no {stat} values (no object boxes in the source)"
                              if stat == "box_mass" else f"the scan has no {stat} values of {kind} words")
        frames = []
        for col in self.policy.group_by:
            grps = self.q.group_sizes(col).grp
            if kind == PROBE:
                words = rule.params["words"] or self.q.probe_words()
            else:
                words = rule.params["words"] or sorted(set(self.assoc(col, kind=kind).table.word))
            pairs = [(g, w) for w in words for g in grps]
            looks = compare_looks(self.q, col, pairs, [stat], kind=kind,
                                  word_filter=self.words if kind != PROBE else WordFilter())
            frames.append(looks.assign(column=col))
        looks = pd.concat(frames, ignore_index=True)
        looks["difference"] = looks.median_group - looks.median_rest
        bad = looks[(looks.q < self.policy.fdr) & (looks.difference.abs() > bound)]
        bad = bad.sort_values("difference", key=lambda d: -d.abs())
        rows = _records(bad, ["column", "grp", "word", "stat", "median_group", "median_rest", "difference",
                              "n_group", "n_rest", "q"])
        summary = f"{len(rows)} of {len(looks)} (group, word) comparisons differ in median {stat} by more than {bound:g}"
        if rows:
            r = rows[0]
            summary += (f"; largest: '{r['word']}' in {r['column']}={r['grp']} {r['median_group']:.2f} vs "
                        f"{r['median_rest']:.2f} in the rest (q={r['q']:.2g})")
        return self.result(rule, bool(rows), summary, rows, {"violations": len(rows), "comparisons": len(looks)})

    def drift_rule(self, rule: Rule) -> RuleResult:
        if self.base is None:
            return RuleResult(rule, "skip", "no --baseline scan given")
        kind, words = rule.kind, rule.params["kind"]
        if kind == "drift.words":
            d, bound = self.drift(None, words), rule.params["max_jsd"]
            v = d.divergence
            top = d.words.head(5)
            moved = ", ".join(f"'{w}' {percent(o)}->{percent(n)}" for w, o, n in
                              zip(top.word, top.share_old, top.share_new, strict=True))
            summary = (f"Jensen-Shannon divergence {v.jsd:.3f} over the {d.vocabulary} words seen in at least "
                       f"{d.min_count} images (limit {bound:g}; random splits of the pooled images reach "
                       f"{v.noise:.3f}, p={v.p:.2g}); moved most: {moved or 'none'}")
            return self.result(rule, v.jsd > bound and v.p < self.policy.fdr, summary,
                               _records(d.words.head(EVIDENCE_ROWS), ["word", "n_old", "n_new", "share_old",
                                                                     "share_new", "delta"]),
                               {"jsd": v.jsd, "p": v.p, "noise": v.noise, "vocabulary": d.vocabulary,
                                "images_added": len(d.added), "images_removed": len(d.removed)})
        rows: list[dict] = []
        for col in self.policy.group_by:
            d = self.drift(col, words)
            g = d.groups.assign(column=col)
            if kind == "drift.group_words":
                bound = rule.params["max_group_jsd"]
                moved = g[(g.jsd > bound) & (g.q < self.policy.fdr)].sort_values("jsd", ascending=False)
                rows += _records(moved, ["column", "grp", "n_old", "n_new", "jsd", "noise", "q"])
            elif kind == "drift.group_shares":
                bound = rule.params["max_share_change"]
                rows += _records(g[g.delta.abs() > bound].sort_values("delta", key=lambda x: -x.abs()),
                                 ["column", "grp", "n_old", "n_new", "share_old", "share_new", "delta"])
            else:
                rows += _records(d.appeared.assign(column=col), ASSOC_EVIDENCE)
        if kind == "drift.group_words":
            summary = (f"{len(rows)} group(s) whose word distribution moved by more than {bound:g} (Jensen-Shannon, "
                       f"q<{self.policy.fdr} against random splits)"
                       + "".join(f"; {r['column']}={r['grp']} {r['jsd']:.3f} (noise {r['noise']:.3f})"
                                 for r in rows[:3]))
        elif kind == "drift.group_shares":
            summary = (f"{len(rows)} group share(s) moved by more than {percent(bound)}"
                       + "".join(f"; {r['column']}={r['grp']} {percent(r['share_old'])}->{percent(r['share_new'])}"
                                 for r in rows[:3]))
        else:
            summary = (f"{len(rows)} association(s) significant now but not in the baseline"
                       + (f"; strongest: {association(rows[0])}" if rows else ""))
        return self.result(rule, bool(rows), summary, rows, {"violations": len(rows)})

    def result(self, rule: Rule, broken: bool, summary: str, evidence: list[dict], measured: dict) -> RuleResult:
        status = ("fail" if rule.level == "fail" else "warn") if broken else "pass"
        return RuleResult(rule, status, summary, evidence, measured)

    def run(self, rule: Rule) -> RuleResult:
        if rule.kind.startswith("drift."):
            return self.drift_rule(rule)
        return getattr(self, rule.kind)(rule)


def _setting_notes(q: ScanQuery, base: ScanQuery) -> list[str]:
    note = differences_note(base.scan.settings, q.scan.settings)
    return [note] if note else []


def run_check(scan_dir: str | os.PathLike, policy: Policy, baseline: str | os.PathLike | None = None) -> CheckResult:
    q = ScanQuery.open(scan_dir)
    base = ScanQuery.open(baseline) if baseline is not None else None
    images = {}
    for which, sq in (("scan", q), ("baseline", base)):
        if sq is None:
            continue
        cols = sq.columns("images")
        for col in policy.group_by:
            if col not in cols:
                raise AuditError(f"{policy.path}: group_by column {col!r} is not in the {which} {sq.scan.root}; "
                                 "its image columns are " + ", ".join(cols))
        images[which] = int(sq.scalar("SELECT count(*) FROM images"))
        if images[which] == 0:
            raise AuditError(f"the {which} {sq.scan.root} holds no scanned images; run `audit scan` first")
    checker = _Checker(q, policy, base)
    results = [checker.run(rule) for rule in policy.rules]
    notes = _setting_notes(q, base) if base is not None else []
    internal = q.internal_errors()
    if internal:
        notes.insert(0, internal_errors_note(internal))
    return CheckResult(str(scan_dir), None if baseline is None else str(baseline), policy,
                       images["scan"], q.unreadable(), results, notes)


__all__ = ["CheckResult", "RuleResult", "run_check"]
