"""What every part of a policy shares: a rule, a policy, a rule's result, and a TOML table read strictly."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from audit.analysis import FDR, MIN_COUNT, MIN_RELATIVE_COSINE, STOP_WORDS
from audit.errors import AuditError

LEVELS = ("fail", "warn")
# A rule's `kind` left unset is this prefix and the kinds the rule allows, in order: the Checker picks the first
# the checked scan holds (a concepts scan's rules read its concepts), or the first allowed when it holds none.
KIND_HELD = "held:"


@dataclass(frozen=True)
class Rule:
    """One rule of a policy: `kind` says which check runs, `params` its validated bounds."""

    kind: str
    name: str
    level: str
    params: dict

    @property
    def id(self) -> str:
        return self.kind if self.name == self.kind else f"{self.kind}:{self.name}"


@dataclass
class Policy:
    path: str
    group_by: list[str]
    min_count: int = MIN_COUNT
    fdr: float = FDR
    rules: list[Rule] = field(default_factory=list)
    stop_words: str = STOP_WORDS  # "default", "none", or a file (relative to the policy file)
    min_relative_cosine: float = MIN_RELATIVE_COSINE
    copies: str = "collapse"  # analysis.duplicates.COPIES_MODES: count each cluster of copies once, or every image

    def needs_baseline(self) -> bool:
        return any(r.kind.startswith("drift.") for r in self.rules)


class Table:
    """A TOML table with a fixed set of keys: any other key is a typo and an error, reported first."""

    def __init__(self, where: str, data, path: str, keys: tuple[str, ...]):
        if not isinstance(data, dict):
            raise AuditError(f"{path}: {where} must be a table, not {type(data).__name__}")
        unknown = sorted(set(data) - set(keys))
        if unknown:
            raise AuditError(f"{path}: unknown key {where}.{unknown[0]}; {where} takes " + ", ".join(keys))
        self.where, self.data, self.path = where, dict(data), path

    def fail(self, key: str, what: str) -> AuditError:
        return AuditError(f"{self.path}: {self.where}.{key} {what}")

    def get(self, key: str, kind, default=None, *, required: bool = False):
        if key not in self.data:
            if required:
                raise AuditError(f"{self.path}: {self.where} needs {key!r}")
            return default
        value = self.data.pop(key)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is list:
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise self.fail(key, "must be a list of strings")
            return value
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(key, f"must be {kind.__name__}, not {type(value).__name__} {value!r}")
        if kind is float and not math.isfinite(value):
            raise self.fail(key, "must be a finite number")
        return value

    def share(self, key: str, default=None, *, required: bool = False):
        value = self.get(key, float, default, required=required)
        if value is not None and not 0 <= value <= 1:
            raise self.fail(key, f"is a share between 0 and 1, not {value}")
        return value

    def positive(self, key: str, kind=float, default=None, *, required: bool = False):
        value = self.get(key, kind, default, required=required)
        if value is not None and value <= 0:
            raise self.fail(key, f"must be above 0, not {value}")
        return value

    def level(self) -> str:
        value = self.get("level", str, "fail")
        if value not in LEVELS:
            raise self.fail("level", f"is 'fail' or 'warn', not {value!r}")
        return value

    def kind(self, allowed: tuple[str, ...]) -> str:
        """Which words the rule reads: ascent, concept or probe; unset, the kind the checked scan holds (KIND_HELD
        and the allowed kinds, which the Checker resolves)."""
        value = self.get("kind", str, None)
        if value is None:
            return KIND_HELD + ",".join(allowed)
        if value not in allowed:
            raise self.fail("kind", f"is {' or '.join(repr(a) for a in allowed)} for this rule, not {value!r}")
        return value


def entries(data: dict, key: str, path: str) -> list[tuple[str, dict]]:
    """A rule table written once ([watch]) or as an array of tables ([[watch]])."""
    value = data.pop(key, None)
    if value is None:
        return []
    if isinstance(value, dict):
        return [(key, value)]
    if isinstance(value, list):
        return [(f"{key}[{i}]", v) for i, v in enumerate(value)]
    raise AuditError(f"{path}: {key} must be a table, not {type(value).__name__}")


def words(t: Table, key: str) -> list[str]:
    from audit.words import clean_words

    words = t.get(key, list, [])
    out = []
    for w in words:
        cleaned = clean_words(w)
        if len(cleaned) != 1:
            raise t.fail(key, f"lists {w!r}, which is not one word as scans store words (lower case letters "
                          "and digits); split phrases into words")
        out.append(cleaned[0])
    return out


def phrases(t: Table, key: str) -> list[str]:
    """Probe words and phrases, spelled as scans store them (lower case, spaces collapsed)."""
    return [" ".join(w.lower().split()) for w in t.get(key, list, []) if w.strip()]




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
class ParseContext:
    """What a rule kind's parse needs besides its own table: the policy file and its group_by columns."""
    path: str
    group_by: list[str]

    def needs_groups(self, where: str) -> None:
        if not self.group_by:
            raise AuditError(f"{self.path}: {where} compares groups; set group_by = \"COLUMN\" at the top of the "
                             "policy")


EVIDENCE_ROWS = 20  # per rule in the outputs; the count of all rows is always given
ASSOC_EVIDENCE = ["column", "grp", "word", "a", "n_group", "share_group", "share_rest", "odds_ratio",
                  "odds_ratio_lo", "odds_ratio_hi", "q"]


def records(df, columns: list[str]) -> list[dict]:
    """A DataFrame's rows as plain dicts for the outputs (NaN as None, numpy scalars as Python's)."""
    out = []
    for r in df[columns].to_dict("records"):
        out.append({k: (None if isinstance(v, float) and math.isnan(v) else
                        v.item() if hasattr(v, "item") else v) for k, v in r.items()})
    return out


class RuleKind:
    """One kind of rule: its table in the policy file, how that table is read, how its rules are evaluated.
    A module in audit/policy/kinds/ per kind, listed in kinds.KINDS."""

    table: str  # the policy file's table ([name] or [[name]])
    keys: tuple[str, ...] = ()  # the table's keys; any other is an error
    kinds: tuple[str, ...] = ()  # the Rule.kind values its rules have (default: the table's name)

    @classmethod
    def rule_kinds(cls) -> tuple[str, ...]:
        return cls.kinds or (cls.table,)

    @classmethod
    def parse(cls, where: str, t: Table, ctx: ParseContext, index: int) -> list[Rule]:
        raise NotImplementedError

    @classmethod
    def evaluate(cls, check, rule: Rule) -> RuleResult:
        """`check` is a rules.Checker: the scan, the baseline, the policy and the shared computations."""
        raise NotImplementedError
