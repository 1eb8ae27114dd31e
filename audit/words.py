"""How scans spell words: the one rule shared by the ascent (which stores words) and by everything that
matches words against them (policy watch lists, a group's own name), and the stop words that the statistics
leave out."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from audit.errors import AuditError


def clean_words(text: str) -> list[str]:
    """Words of a decoded sequence: letters and digits only, lower case, in order."""
    kept = "".join(ch if unicodedata.category(ch)[0] in "LN" else " " for ch in text.lower())
    return kept.split()


# English function words (articles, pronouns, prepositions, conjunctions, auxiliaries, determiners, common
# adverbs) and the vague nouns that stand in for an object ("a thing on grass"). They say nothing about what an
# image shows, yet the ascent fills spare token slots with them, and every one tested costs the association
# tests power. Written out here so the list is plain to read and to change (--stop-words FILE).
STOP_WORDS = frozenset("""
a an the
i me my mine myself we us our ours ourselves you your yours yourself yourselves he him his himself she her hers
herself it its itself they them their theirs themselves one ones
this that these those who whom whose which what whatever whoever
am is are was were be been being have has had having do does did doing done
will would shall should can could may might must ought
not no nor neither either both each every all any some few more most other such own same so than too very
just only also even still yet already again ever never
and or but if then else because as until while though although whether
of at by for with about against between into through during before after above below to from up down in out on
off over under onto upon within without across along around among behind beside besides beyond near toward
towards via per
here there where when why how
s t d ll m o re ve y
thing things something anything nothing everything someone anyone everyone stuff
""".split())


def read_lines(path: str | os.PathLike, option: str, missing: str) -> list[str]:
    """The lines of a text file a user named with `option`, as one-line errors: `missing` when it does not exist,
    the reason when it cannot be read (a folder, no permission, not UTF-8)."""
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise AuditError(missing) from None
    except (OSError, UnicodeDecodeError) as e:
        raise AuditError(f"cannot read {option} {path}: {e}") from None


def load_stop_words(spec: str | os.PathLike | None = "default") -> frozenset[str]:
    """The stop words for `spec`: "default" (STOP_WORDS), "none" (no stop words), or a file with one word per
    line (# starts a comment), spelled as scans store words."""
    if spec is None or str(spec) == "default":
        return STOP_WORDS
    if str(spec) == "none":
        return frozenset()
    path = Path(spec)
    lines = read_lines(path, "--stop-words", f"--stop-words {path} does not exist; pass a file with one word per "
                       "line, 'default' or 'none'")
    words: set[str] = set()
    for line in lines:
        text = line.split("#", 1)[0]
        words.update(clean_words(text))
    return frozenset(words)
