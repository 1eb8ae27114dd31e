"""How scans spell words: the one rule shared by the ascent (which stores words) and by everything that
matches words against them (policy watch lists, a group's own name)."""

from __future__ import annotations

import unicodedata


def clean_words(text: str) -> list[str]:
    """Words of a decoded sequence: letters and digits only, lower case, in order."""
    kept = "".join(ch if unicodedata.category(ch)[0] in "LN" else " " for ch in text.lower())
    return kept.split()
