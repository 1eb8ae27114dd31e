"""Builds concepts-en.txt, the concept opinion's default vocabulary: the 10,000 most frequent English words
that a person would use, by the wordfreq package's frequency list (Speer, 2022: Wikipedia, subtitles, news,
books, web text, Twitter and Reddit, blended), kept when they are written with 3 or more lowercase ASCII letters
(no digits, apostrophes or word pieces) and are not stop words (audit.words.STOP_WORDS). Frequency order.

Left out on purpose:
- two-word phrases. SpLiCE's vocabulary has them, counted in LAION's captions; the one English bigram list
  that installs offline (Norvig's counts from Google's Web 1T corpus, in the wordsegment package) is led by web
  boilerplate ("rights reserved", "web site", "private message", "ebay official"), not by things a photo shows.
  Pass phrases with --vocabulary FILE, or ask them as probe words.
- a part-of-speech filter: the frequency list has none, so common verbs and adverbs ("think", "really") stay;
  the decomposition seldom picks them for an image.

    python -m audit.scanner.data.make_concepts [OUT]   # needs wordfreq==3.1.1 (pip install 'clip-audit[dev]')

The same wordfreq version gives the same file byte for byte (tests/test_vocabulary_file.py checks it).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

WORDS = 10_000
POOL = 60_000  # frequency-list entries read: more than enough to find WORDS that pass the filters
WORDFREQ = "3.1.1"
_WORD = re.compile(r"[a-z]{3,}")
OUT = Path(__file__).with_name("concepts-en.txt")


def build() -> str:
    from importlib.metadata import version

    import wordfreq

    from audit.words import STOP_WORDS

    if version("wordfreq") != WORDFREQ:
        raise SystemExit(f"wordfreq {WORDFREQ} makes the shipped file; this is {version('wordfreq')}")
    kept = [w for w in wordfreq.top_n_list("en", POOL, wordlist="large")
            if _WORD.fullmatch(w) and w not in STOP_WORDS][:WORDS]
    if len(kept) < WORDS:
        raise SystemExit(f"only {len(kept)} words passed the filters in wordfreq's first {POOL}")
    header = [f"# audit's default concept vocabulary: the {WORDS:,} most frequent English words of wordfreq "
              f"{WORDFREQ} ('large' list),",
              "# 3+ lowercase ASCII letters, stop words left out; most frequent first. Made by",
              "# audit/scanner/data/make_concepts.py (python -m audit.scanner.data.make_concepts); do not edit."]
    return "\n".join(header + kept) + "\n"


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    out.write_text(build(), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
