"""Opinion methods behind one interface: what CLIP thinks of each image, as word rows.

An opinion is a class in its own module here (a subclass of base.Opinion), listed in OPINIONS by name. The batch
scanner loops over the chosen ones in this order, so a new method needs a module and a line below; the scan's
core loop is untouched. This module stays free of torch: option parsing reads it.

- ascent: gradient ascent over token sequences (open vocabulary; seconds per image; ascent.py);
- probes: the user's own words and phrases, scored on every image (probes.py);
- concepts: a sparse non-negative decomposition of the embedding over a vocabulary (SpLiCE; concepts.py).
"""

from __future__ import annotations

import importlib

from audit.errors import AuditError

OPINIONS: dict[str, str] = {
    "ascent": "audit.scanner.opinions.ascent",
    "probes": "audit.scanner.opinions.probes",
    "concepts": "audit.scanner.opinions.concepts",
}
# Names accepted by --opinion besides the methods: `both` is what audit 0.2 called ascent and concepts.
ALIASES: dict[str, tuple[str, ...]] = {"both": ("ascent", "concepts")}


def parse_opinions(text: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The methods a --opinion value names ("ascent,concepts", "both", a list of names), in OPINIONS' order."""
    items = text.split(",") if isinstance(text, str) else list(text)
    chosen: set[str] = set()
    for item in (i.strip().lower() for i in items):
        if not item:
            continue
        if item in ALIASES:
            chosen.update(ALIASES[item])
        elif item in OPINIONS:
            chosen.add(item)
        else:
            raise AuditError(f"--opinion: unknown method {item!r}; choose from {', '.join(OPINIONS)} "
                             "(several separated by commas)")
    if not chosen:
        raise AuditError(f"--opinion names no method; choose from {', '.join(OPINIONS)}")
    return tuple(name for name in OPINIONS if name in chosen)


def opinion_class(name: str):
    """The Opinion subclass registered as `name` (imports torch)."""
    module = importlib.import_module(OPINIONS[name])
    return module.METHOD


__all__ = ["ALIASES", "OPINIONS", "opinion_class", "parse_opinions"]
