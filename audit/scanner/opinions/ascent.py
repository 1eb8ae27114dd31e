"""The ascent opinion: the token sequences closest to each image, found by gradient ascent (audit.scanner.ascent),
and their words."""

from __future__ import annotations

import dataclasses

from audit.scanner.ascent import run_ascent, sequences_to_words
from audit.scanner.opinions.base import Opinion, OpinionBatch, OpinionRows
from audit.store.schema import ASCENT


class AscentOpinion(Opinion):
    name = "ascent"
    kind = ASCENT
    options = ("steps", "tokens_per_seq", "candidates", "lr", "views", "resample_views", "refine_rounds",
               "refine_top", "refine_words", "prompt", "kernel", "triton_tiles")

    @classmethod
    def settings(cls, opts, planned) -> dict:
        # The config's constants (tau, keep, the augmentation) change rows too; the tiles only when Triton runs.
        settings = {**dataclasses.asdict(opts.ascent()), "kernel": opts.kernel}
        if opts.kernel == "triton":
            settings["triton_tiles"] = opts.triton_tiles
        return settings

    @classmethod
    def build(cls, opts, towers, planned) -> AscentOpinion:
        return cls(opts, towers)

    def __init__(self, opts, towers):
        self.cfg = opts.ascent()
        self.kernel, self.tiles = opts.kernel, opts.triton_tiles
        self.tokenizer = towers.tokenizer

    def rows(self, batch: OpinionBatch) -> OpinionRows:
        found = run_ascent(batch.towers, batch.images, batch.seeds, self.cfg, kernel=self.kernel, tiles=self.tiles)
        words = [[{**w, "kind": ASCENT} for w in sequences_to_words(self.tokenizer, found.seqs[i], found.scores[i])]
                 for i in range(len(batch.images))]
        return OpinionRows(words, [len(ws) for ws in words])

    def words_per_image(self) -> int:
        return self.cfg.keep * self.cfg.tokens_per_seq


METHOD = AscentOpinion
