"""Probe words: words or phrases the user asks about, scored on every image next to (or instead of) the
ascent's words. Read from --words (comma-separated) and --words-file (one per line, so phrases may hold
commas), spelled the way they are stored: lower case, runs of white space collapsed to one space."""

from __future__ import annotations

import os
from pathlib import Path

from audit.errors import AuditError
from audit.words import read_lines

# A scanned probe word (or one asked with --heatmaps) costs a relevancy pass per image; one asked without heatmaps
# costs a row of a matrix product per image, so `audit ask` takes as many as a vocabulary file may hold.
MAX_PROBES = 1000
MAX_ASKED = 200_000
HEATMAP_COST = "each costs a relevancy pass per image, for its heatmap"


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def parse_probe_words(words=(), words_file: str | os.PathLike | None = None, limit: int = MAX_PROBES,
                      why: str = f"at most {MAX_PROBES} per scan ({HEATMAP_COST})") -> tuple[str, ...]:
    """Probe words in order, duplicates dropped. `words` may be one comma-separated string or several; more than
    `limit` are refused with `why`."""
    items: list[str] = []
    for chunk in [words] if isinstance(words, str) else list(words or ()):
        items += str(chunk).split(",")
    if words_file is not None:
        path = Path(words_file)
        lines = read_lines(path, "--words-file", f"--words-file {path} does not exist")
        items += [line for line in lines if not line.lstrip().startswith("#")]
    out = list(dict.fromkeys(w for w in map(normalise, items) if w))
    if len(out) > limit:
        raise AuditError(f"{len(out)} probe words; {why}")
    return tuple(out)


def check_lengths(probes: tuple[str, ...], tokenizer, context_length: int) -> None:
    """A phrase longer than the text context would be cut, and scored as something else: refuse it."""
    room = context_length - 2
    for p in probes:
        n = len(tokenizer.encode(p))
        if n == 0:
            raise AuditError(f"probe word {p!r} has no tokens the model knows")
        if n > room:
            raise AuditError(f"probe phrase {p[:60]!r} is {n} tokens; this model's text context holds {room}")
