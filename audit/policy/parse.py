"""An `audit check` policy: a TOML file of rules, read strictly.

Every mistake a user can make in the file (a typo in a key, a share above 1, a word list that is a string)
is one AuditError naming the file, the table and the key, so a CI gate never passes because a rule was
silently ignored. examples/audit-policy.toml documents every key.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from audit.analysis import FDR, MIN_COUNT, MIN_RELATIVE_COSINE, STOP_WORDS
from audit.errors import AuditError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LEVELS = ("fail", "warn")


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

    def needs_baseline(self) -> bool:
        return any(r.kind.startswith("drift.") for r in self.rules)


class _Table:
    """A TOML table with a fixed set of keys: any other key is a typo and an error, reported first."""

    def __init__(self, where: str, data, path: str, keys: tuple[str, ...]):
        if not isinstance(data, dict):
            raise AuditError(f"{path}: {where} must be a table, not {type(data).__name__}")
        unknown = sorted(set(data) - set(keys))
        if unknown:
            raise AuditError(f"{path}: unknown key {where}.{unknown[0]}; {where} takes " + ", ".join(keys))
        self.where, self.data, self.path = where, dict(data), path

    def _fail(self, key: str, what: str) -> AuditError:
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
                raise self._fail(key, "must be a list of strings")
            return value
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self._fail(key, f"must be {kind.__name__}, not {type(value).__name__} {value!r}")
        if kind is float and not math.isfinite(value):
            raise self._fail(key, "must be a finite number")
        return value

    def share(self, key: str, default=None, *, required: bool = False):
        value = self.get(key, float, default, required=required)
        if value is not None and not 0 <= value <= 1:
            raise self._fail(key, f"is a share between 0 and 1, not {value}")
        return value

    def positive(self, key: str, kind=float, default=None, *, required: bool = False):
        value = self.get(key, kind, default, required=required)
        if value is not None and value <= 0:
            raise self._fail(key, f"must be above 0, not {value}")
        return value

    def level(self) -> str:
        value = self.get("level", str, "fail")
        if value not in LEVELS:
            raise self._fail("level", f"is 'fail' or 'warn', not {value!r}")
        return value

    def kind(self, allowed: tuple[str, ...]) -> str:
        """Which words the rule reads: ascent (the default, as before kinds existed), concept or probe."""
        value = self.get("kind", str, "ascent")
        if value not in allowed:
            raise self._fail("kind", f"is {' or '.join(repr(a) for a in allowed)} for this rule, not {value!r}")
        return value


def _entries(data: dict, key: str, path: str) -> list[tuple[str, dict]]:
    """A rule table written once ([watch]) or as an array of tables ([[watch]])."""
    value = data.pop(key, None)
    if value is None:
        return []
    if isinstance(value, dict):
        return [(key, value)]
    if isinstance(value, list):
        return [(f"{key}[{i}]", v) for i, v in enumerate(value)]
    raise AuditError(f"{path}: {key} must be a table, not {type(value).__name__}")


def _words(t: _Table, key: str) -> list[str]:
    from audit.words import clean_words

    words = t.get(key, list, [])
    out = []
    for w in words:
        cleaned = clean_words(w)
        if len(cleaned) != 1:
            raise t._fail(key, f"lists {w!r}, which is not one word as scans store words (lower case letters "
                          "and digits); split phrases into words")
        out.append(cleaned[0])
    return out


def _phrases(t: _Table, key: str) -> list[str]:
    """Probe words and phrases, spelled as scans store them (lower case, spaces collapsed)."""
    return [" ".join(w.lower().split()) for w in t.get(key, list, []) if w.strip()]


def parse_policy(data: dict, path: str = "policy") -> Policy:
    from audit.analysis.associations import LOOK_STATS

    data = dict(data)
    top_keys = ("group_by", "min_count", "fdr", "stop_words", "min_relative_cosine")
    top = _Table("policy", {k: data.pop(k) for k in top_keys if k in data}, path, top_keys)
    group_by = top.get("group_by", list, [])
    min_count = top.positive("min_count", int, MIN_COUNT)
    fdr = top.share("fdr", FDR)
    if not 0 < fdr < 1:
        raise AuditError(f"{path}: fdr must be between 0 and 1, not {fdr}")
    stop_words = top.get("stop_words", str, STOP_WORDS)
    if stop_words not in ("default", "none"):
        # A list file named in a policy is found next to the policy, wherever the check runs from.
        stop_words = str(Path(path).parent / stop_words) if not Path(stop_words).is_absolute() else stop_words
        if not Path(stop_words).is_file():
            raise AuditError(f"{path}: stop_words names {stop_words}, which is not a file; give a file with one "
                             "word per line, \"default\" or \"none\"")
    relative = top.share("min_relative_cosine", MIN_RELATIVE_COSINE)
    rules: list[Rule] = []

    def needs_groups(where: str) -> None:
        if not group_by:
            raise AuditError(f"{path}: {where} compares groups; set group_by = \"COLUMN\" at the top of the policy")

    for where, raw in _entries(data, "max_error_rate", path):
        t = _Table(where, raw, path, ("limit", "level"))
        rules.append(Rule("max_error_rate", "max_error_rate", t.level(), {"limit": t.share("limit", required=True)}))
    for where, raw in _entries(data, "min_images_per_group", path):
        needs_groups(where)
        t = _Table(where, raw, path, ("limit", "level"))
        rules.append(Rule("min_images_per_group", "min_images_per_group", t.level(),
                          {"limit": t.positive("limit", int, required=True)}))
    for i, (where, raw) in enumerate(_entries(data, "watch", path)):
        needs_groups(where)
        t = _Table(where, raw, path, ("name", "words", "min_odds_ratio", "kind", "level"))
        name = t.get("name", str, f"list{i + 1}")
        kind = t.kind(("ascent", "concept", "probe"))
        words = _words(t, "words") if kind != "probe" else _phrases(t, "words")
        if not words:
            raise AuditError(f"{path}: {where}.words is empty; list the words to watch")
        bound = t.get("min_odds_ratio", float, 1.0)
        if bound < 1:
            raise t._fail("min_odds_ratio", f"must be at least 1 (no association), not {bound}")
        rules.append(Rule("watch", name, t.level(), {"words": words, "min_odds_ratio": bound, "kind": kind}))
    for where, raw in _entries(data, "max_association", path):
        needs_groups(where)
        t = _Table(where, raw, path, ("max_odds_ratio", "include_group_names", "kind", "level"))
        bound = t.get("max_odds_ratio", float, required=True)
        if bound < 1:
            raise t._fail("max_odds_ratio", f"must be at least 1 (no association), not {bound}")
        rules.append(Rule("max_association", "max_association", t.level(),
                          {"max_odds_ratio": bound, "kind": t.kind(("ascent", "concept")),
                           "include_group_names": t.get("include_group_names", bool, False)}))
    for where, raw in _entries(data, "drift", path):
        t = _Table(where, raw, path, ("max_jsd", "max_group_jsd", "max_share_change", "new_associations", "kind",
                                      "level"))
        level = t.level()
        kind = t.kind(("ascent", "concept"))
        bounds = {"drift.words": ("max_jsd", t.share("max_jsd")),
                  "drift.group_words": ("max_group_jsd", t.share("max_group_jsd")),
                  "drift.group_shares": ("max_share_change", t.share("max_share_change"))}
        new_assoc = t.get("new_associations", bool, False)
        for rule, (key, bound) in bounds.items():
            if bound is not None:
                if rule != "drift.words":
                    needs_groups(f"{where}.{key}")
                rules.append(Rule(rule, rule, level, {key: bound, "kind": kind}))
        if new_assoc:
            needs_groups(f"{where}.new_associations")
            rules.append(Rule("drift.new_associations", "drift.new_associations", level, {"kind": kind}))
        if not any(b is not None for _, b in bounds.values()) and not new_assoc:
            raise AuditError(f"{path}: {where} sets no bound; give max_jsd, max_group_jsd, max_share_change "
                             "or new_associations = true")
    for i, (where, raw) in enumerate(_entries(data, "heatmap", path)):
        needs_groups(where)
        t = _Table(where, raw, path, ("name", "stat", "words", "max_difference", "kind", "level"))
        stat = t.get("stat", str, "box_mass")
        if stat not in LOOK_STATS:
            raise AuditError(f"{path}: {where}.stat is one of {', '.join(LOOK_STATS)}, not {stat!r}")
        name = t.get("name", str, f"{stat}{i + 1}" if i else stat)
        kind = t.kind(("ascent", "concept", "probe"))
        words = _words(t, "words") if kind != "probe" else _phrases(t, "words")
        rules.append(Rule("heatmap", name, t.level(), {"stat": stat, "words": words, "kind": kind,
                                                        "max_difference": t.share("max_difference", required=True)}))
    if data:
        raise AuditError(f"{path}: unknown table or key {sorted(data)[0]!r}; a policy has group_by, min_count, "
                         "fdr, stop_words, min_relative_cosine, [max_error_rate], [min_images_per_group], [[watch]], "
                         "[max_association], [drift], [[heatmap]]")
    if not rules:
        raise AuditError(f"{path}: the policy has no rules; see examples/audit-policy.toml")
    ids = [r.id for r in rules]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    if dup:
        raise AuditError(f"{path}: two rules are both named {dup!r}; give each [[watch]]/[[heatmap]] its own name")
    return Policy(path, group_by, min_count, fdr, rules, stop_words, relative)


def load_policy(path: str | os.PathLike) -> Policy:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AuditError(f"policy file {p} does not exist; see examples/audit-policy.toml") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise AuditError(f"cannot read policy file {p}: {e}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise AuditError(f"{p} is not valid TOML: {e}") from None
    return parse_policy(data, str(p))
