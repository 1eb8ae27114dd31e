"""The contract every opinion method keeps.

A method is asked three things, at three moments of a scan:
1. `plan(opts)` before any model is loaded: read and check its inputs (a file of probe words, a
   vocabulary), so that every mistake a user can make is one AuditError before minutes of loading;
2. `settings(opts, planned)`: the settings that change its rows, recorded in scan.json (a resume with other
   values is refused; `audit check --baseline` and `audit diff` say when two scans differ in them);
3. `build(opts, towers, planned)` once per process or Ray actor with the model loaded, then `rows(batch)` for
   every batch: per image its word rows, each marked whether it gets a relevancy heatmap.
Rows of one image depend only on that image and its seed, never on the rest of the batch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch


@dataclass
class OpinionBatch:
    """One batch as the opinions see it. The un-augmented image embeddings are computed once, by the first
    opinion that asks, and shared; so are the hidden states entering block `keep`, which the relevancy pass starts
    from (computed in the same pass as the embeddings)."""
    towers: Any  # audit.scanner.encoders.Towers
    images: torch.Tensor  # [B, 3, H, W] preprocessed, on the model's device
    seeds: torch.Tensor  # [B] per-image seeds (audit.scanner.rng)
    _features: torch.Tensor | None = None
    _hidden: torch.Tensor | None = None
    keep: int | None = None  # audit.scanner.relevancy.prefix_layer of the scan's heatmap method

    def features(self) -> torch.Tensor:
        if self._features is None:
            with torch.no_grad():
                self._features, hidden = self.towers.image_pass(self.images, self.keep if self._hidden is None
                                                                else None)
            self._hidden = self._hidden if hidden is None else hidden
        return self._features

    def hidden(self) -> torch.Tensor | None:
        """The hidden states entering block `keep` (None without a `keep`)."""
        if self.keep is None:
            return None
        if self._hidden is None:
            with torch.no_grad():
                self._hidden = self.towers.hidden_states(self.images, self.keep)
        return self._hidden


@dataclass
class OpinionRows:
    """An opinion's rows for one batch: per image a list of word rows (the tokens table's columns: word, kind,
    word_rank, seq_rank, seq_text, seq_cosine, weight; word_cosine when the opinion measured it itself, else the
    relevancy pass's is stored) and how many of them, from the front, get a heatmap; plus values of its own for
    the images table."""
    words: list[list[dict]]
    heatmaps: list[int]
    image_columns: dict[str, np.ndarray] = field(default_factory=dict)


def token_columns(image_ids: list[str], words: list[dict], cosines: list[float]) -> dict:
    """The tokens table's columns for word rows (OpinionRows' dicts), each with the word's own cosine; a row
    without a sequence cosine of its own (a probe's, a concept's) stores the word's."""
    import pyarrow as pa

    return {
        "image_id": image_ids, "kind": [w["kind"] for w in words], "word": [w["word"] for w in words],
        "word_rank": [w["word_rank"] for w in words], "seq_rank": [w["seq_rank"] for w in words],
        "seq_text": [w["seq_text"] for w in words],
        "seq_cosine": [c if w["seq_cosine"] is None else w["seq_cosine"] for w, c in zip(words, cosines, strict=True)],
        "word_cosine": pa.array(cosines, pa.float32()),
        "weight": pa.array([w.get("weight") for w in words], pa.float32()),
    }


class Opinion:
    name: ClassVar[str]
    kind: ClassVar[str]  # tokens.kind of its rows
    # The ScanOptions fields that shape its rows and nothing else's; settings() records them.
    options: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def plan(cls, opts) -> Any:
        """Inputs read and checked before the model loads; None: it needs none."""
        return None

    @classmethod
    def settings(cls, opts, planned: Any) -> dict:
        return {name: _plain(getattr(opts, name)) for name in cls.options}

    @classmethod
    def before_scan(cls, planned: Any, scan) -> Any:
        """A last step of planning that may need the model or the scan directory (`scan`: a pipeline.ScanSetup);
        returns what build() gets. Runs once, in the driver."""
        return planned

    @classmethod
    def build(cls, opts, towers, planned: Any) -> Opinion:
        raise NotImplementedError

    def rows(self, batch: OpinionBatch) -> OpinionRows:
        raise NotImplementedError

    def words_per_image(self) -> int:
        """About how many of an image's rows get a heatmap: sizes relevancy memory before the first batch."""
        return 0


def _plain(value):
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return list(value) if isinstance(value, tuple) else value
