"""The kinds of policy rule, one module each, in the order a policy's rules are read and reported.

A kind is a base.RuleKind subclass (its table's keys, parse, evaluate) exposed as `KIND` by its module; parse
and the checker read only this registry, so a new kind of rule is one module and one line below.
"""

from __future__ import annotations

import importlib

MODULES = ("max_error_rate", "min_images_per_group", "duplicates", "leakage", "watch", "max_association", "drift",
           "heatmap", "grounding", "slices", "label_issues")
KINDS = {name: importlib.import_module(f"audit.policy.kinds.{name}").KIND for name in MODULES}
# Rule.kind -> the kind that evaluates it ([drift] makes four kinds of rule).
BY_RULE = {rule_kind: kind for kind in KINDS.values() for rule_kind in kind.rule_kinds()}

__all__ = ["BY_RULE", "KINDS"]
