"""The probe opinion: the user's own words and phrases (--words, --words-file), scored on every image."""

from __future__ import annotations

from audit.scanner.opinions.base import Opinion, OpinionBatch, OpinionRows
from audit.scanner.probes import check_lengths, parse_probe_words
from audit.store.schema import PROBE


class ProbeOpinion(Opinion):
    name = "probes"
    kind = PROBE
    options = ("words", "words_file")

    @classmethod
    def plan(cls, opts) -> tuple[str, ...]:
        return parse_probe_words(opts.words, opts.words_file)

    @classmethod
    def settings(cls, opts, planned: tuple[str, ...]) -> dict:
        return {"probe_words": list(planned)}  # the words themselves: a words file may change under its name

    @classmethod
    def build(cls, opts, towers, planned: tuple[str, ...]) -> ProbeOpinion:
        check_lengths(planned, towers.tokenizer, towers.context_length)
        return cls(planned)

    def __init__(self, words: tuple[str, ...]):
        self.words = [{"word": p, "kind": PROBE, "word_rank": i, "seq_rank": -1, "seq_text": p, "seq_cosine": None}
                      for i, p in enumerate(words)]

    def rows(self, batch: OpinionBatch) -> OpinionRows:
        n = len(batch.images)
        return OpinionRows([list(self.words) for _ in range(n)], [len(self.words)] * n)

    def words_per_image(self) -> int:
        return len(self.words)


METHOD = ProbeOpinion
