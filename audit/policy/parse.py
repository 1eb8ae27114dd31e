"""An `audit check` policy: a TOML file of rules, read strictly.

Every mistake a user can make in the file (a typo in a key, a share above 1, a word list that is a string)
is one AuditError naming the file, the table and the key, so a CI gate never passes because a rule was
silently ignored. examples/audit-policy.toml documents every key. Each kind of rule reads its own table
(audit/policy/kinds/); this module reads the top-level keys and asks every kind in turn.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from audit.analysis import COPIES, COPIES_MODES, FDR, MIN_COUNT, MIN_RELATIVE_COSINE, STOP_WORDS
from audit.errors import AuditError
from audit.policy.base import LEVELS, ParseContext, Policy, Rule, Table, entries
from audit.policy.kinds import KINDS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

def parse_policy(data: dict, path: str = "policy") -> Policy:
    data = dict(data)
    top_keys = ("group_by", "min_count", "fdr", "stop_words", "min_relative_cosine", "copies")
    top = Table("policy", {k: data.pop(k) for k in top_keys if k in data}, path, top_keys)
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
    copies = top.get("copies", str, COPIES)
    if copies not in COPIES_MODES:
        raise AuditError(f"{path}: copies is {' or '.join(repr(m) for m in COPIES_MODES)}, not {copies!r}")
    ctx = ParseContext(path, group_by)
    rules: list[Rule] = []
    for name, kind in KINDS.items():
        for i, (where, raw) in enumerate(entries(data, name, path)):
            rules += kind.parse(where, Table(where, raw, path, kind.keys), ctx, i)
    if data:
        tables = ", ".join(f"[{name}]" for name in KINDS)
        raise AuditError(f"{path}: unknown table or key {sorted(data)[0]!r}; a policy has group_by, min_count, "
                         f"fdr, stop_words, min_relative_cosine, copies, {tables}")
    if not rules:
        raise AuditError(f"{path}: the policy has no rules; see examples/audit-policy.toml")
    ids = [r.id for r in rules]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    if dup:
        raise AuditError(f"{path}: two rules are both named {dup!r}; give each [[watch]]/[[heatmap]] its own name")
    return Policy(path, group_by, min_count, fdr, rules, stop_words, relative, copies)


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


__all__ = ["LEVELS", "Policy", "Rule", "load_policy", "parse_policy"]
