"""`audit check`: a scan (and optionally a baseline scan) against a policy; findings and an exit code.

Exit 0 when every rule passes (warnings and skipped rules included), 1 when a rule at level "fail" fails.
Usage errors (bad policy, unknown column, missing scan) are AuditErrors, which the CLI turns into exit 2.
Every number comes from analysis.py and drift.py, the same code the report and `audit diff` use. Each kind of
rule is evaluated by its own module (audit/policy/kinds/); the Checker here holds what they share.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import pandas as pd

from audit.analysis.associations import Associations, associations, word_filter
from audit.analysis.drift import Drift, compare
from audit.analysis.duplicates import check_mode, collapse, collapsed_ids
from audit.analysis.duplicates import header as copies_header
from audit.errors import AuditError, internal_errors_note
from audit.policy.base import ASSOC_EVIDENCE, EVIDENCE_ROWS, KIND_HELD, Policy, Rule, RuleResult
from audit.policy.kinds import BY_RULE
from audit.store.query import ScanQuery
from audit.store.schema import ASCENT
from audit.store.settings import differences_note, held_kind


@dataclass
class CheckResult:
    scan: str
    baseline: str | None
    policy: Policy
    images: int
    unreadable: int
    results: list[RuleResult]
    notes: list[str] = field(default_factory=list)
    copies: str | None = None  # how copies were counted (analysis.duplicates.header), in every output
    copies_mode: str | None = None  # "collapse" or "keep"

    @property
    def exit_code(self) -> int:
        return 1 if any(r.failed for r in self.results) else 0

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)


class Checker:
    """The computations rules share (associations and drift per column and kind, computed once), and each rule's
    evaluation by its kind (audit/policy/kinds/)."""

    def __init__(self, q: ScanQuery, policy: Policy, base: ScanQuery | None):
        self.q, self.policy, self.base = q, policy, base
        self.words = word_filter(policy.stop_words, policy.min_relative_cosine)
        self._assoc: dict[tuple[str, str, str], Associations] = {}
        self._drift: dict[tuple[str | None, str], Drift] = {}
        self._grounding: pd.DataFrame | None = None
        self._embeddings = None

    def embeddings(self):
        """The embedding drift test against the baseline (analysis.embedding_drift), computed once."""
        if self._embeddings is None:
            from audit.analysis.embedding_drift import embedding_drift

            self._embeddings = embedding_drift(self.base.scan, self.q.scan,
                                               skip=(collapsed_ids(self.base), collapsed_ids(self.q)))
        return self._embeddings

    def grounding(self) -> pd.DataFrame:
        """The verdicts of `audit verify` on this scan's findings (none when it has not run)."""
        if self._grounding is None:
            from audit.analysis.verification import grounding_summary

            self._grounding = grounding_summary(self.q.scan.verification(), self.policy.fdr)
        return self._grounding

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

    def result(self, rule: Rule, broken: bool, summary: str, evidence: list[dict], measured: dict) -> RuleResult:
        status = ("fail" if rule.level == "fail" else "warn") if broken else "pass"
        return RuleResult(rule, status, summary, evidence, measured)

    def run(self, rule: Rule) -> RuleResult:
        kind = rule.params.get("kind")
        if isinstance(kind, str) and kind.startswith(KIND_HELD):
            rule = dataclasses.replace(rule, params={**rule.params, "kind": self.held_kind(kind)})
        return BY_RULE[rule.kind].evaluate(self, rule)

    def held_kind(self, spec: str) -> str:
        """The first of the allowed kinds (KIND_HELD + "ascent,concept") whose words the checked scan holds, in
        the order ascent, concept, probe; the first allowed when it holds none of them."""
        return held_kind(self.q.scan.settings, spec[len(KIND_HELD):].split(","))


def _setting_notes(q: ScanQuery, base: ScanQuery) -> list[str]:
    note = differences_note(base.scan.settings, q.scan.settings)
    return [note] if note else []


def run_check(scan_dir: str | os.PathLike, policy: Policy, baseline: str | os.PathLike | None = None,
              copies: str | None = None) -> CheckResult:
    """`copies` ("collapse" or "keep") overrides the policy's own setting (its `copies` key, default collapse)."""
    copies = check_mode(copies or policy.copies)
    images = {}
    # Every mistake is said before the copies are looked for (which may take a while, and says so).
    plain = {"scan": ScanQuery.open(scan_dir), "baseline": ScanQuery.open(baseline) if baseline is not None else None}
    for which, sq in plain.items():
        if sq is None:
            continue
        cols = sq.columns("images")
        for col in policy.group_by:
            if col not in cols:
                raise AuditError(f"{policy.path}: group_by column {col!r} is not in the {which} {sq.scan.root}; "
                                 "its image columns are " + ", ".join(cols))
        images[which] = int(sq.scalar("SELECT count(*) FROM all_images"))
        if images[which] == 0:
            raise AuditError(f"the {which} {sq.scan.root} holds no scanned images; run `audit scan` first")
    q = collapse(plain["scan"], copies)
    base = collapse(plain["baseline"], copies) if baseline is not None else None
    checker = Checker(q, policy, base)
    results = [checker.run(rule) for rule in policy.rules]
    notes = _setting_notes(q, base) if base is not None else []
    counted = copies_header(q.copies, copies) + ("" if base is None else
                                                 f"; baseline {copies_header(base.copies, copies)}")
    internal = q.internal_errors()
    if internal:
        notes.insert(0, internal_errors_note(internal))
    return CheckResult(str(scan_dir), None if baseline is None else str(baseline), policy,
                       images["scan"], q.unreadable(), results, notes, counted, copies)


__all__ = ["CheckResult", "RuleResult", "run_check"]


__all__ = ["EVIDENCE_ROWS", "CheckResult", "Checker", "RuleResult", "run_check"]
