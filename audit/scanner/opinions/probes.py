"""The probe opinion: the user's own words and phrases (--words, --words-file), scored on every image in prompt
templates (--templates; audit.scanner.templates), as CLIP is used zero-shot. `audit ask` scores stored
embeddings with the same function (probe_rows), so a word asked later and a word scanned give one answer."""

from __future__ import annotations

import numpy as np
import torch

from audit.scanner.encoders import EMBED_CHUNK, fixed_chunks
from audit.scanner.opinions.base import Opinion, OpinionBatch, OpinionRows
from audit.scanner.probes import parse_probe_words
from audit.scanner.templates import NAMED, check_fit, parse_templates, text_vectors
from audit.store.schema import PROBE


def template_setting(spec: str, templates: list[str]):
    """What scan.json records: a named set by its name, a file's templates themselves (it may change)."""
    return spec if spec in NAMED else templates


def probe_cosines(features: torch.Tensor, texts: torch.Tensor) -> np.ndarray:
    """Cosines [B, W] of image features [B, D] (as the image tower returns them) with unit word vectors [W, D]."""
    features = features.float()
    # In float32 under the scan's bfloat16 autocast, on purpose: a probe score is a statistic, and `audit ask`
    # computes the same product on stored embeddings outside any autocast.
    with torch.autocast(features.device.type, enabled=False):
        words = texts.to(features.device, torch.float32).T
        out = []
        # In chunks of one shape, so that an image's scores are the same bits in any batch (or in `audit ask`'s
        # units of thousands). Divided by the norms after the product: [B, W] divisions, not [B, D].
        for part, real in fixed_chunks(features, EMBED_CHUNK):
            out.append((part @ words / part.norm(dim=-1, keepdim=True).clamp_min(1e-12))[:real])
        return torch.cat(out).cpu().numpy() if out else np.zeros((0, words.shape[1]), np.float32)


def probe_rows(words: tuple[str, ...], cosines: np.ndarray) -> list[list[dict]]:
    """Per image, one row per probe word, in the order asked."""
    return [[{"word": p, "kind": PROBE, "word_rank": i, "seq_rank": -1, "seq_text": p, "seq_cosine": float(c),
              "word_cosine": float(c)} for i, (p, c) in enumerate(zip(words, row, strict=True))] for row in cosines]


class ProbeOpinion(Opinion):
    name = "probes"
    kind = PROBE
    options = ("words", "words_file", "templates")

    @classmethod
    def plan(cls, opts, **limit) -> tuple[tuple[str, ...], list[str], str]:
        """`limit`: parse_probe_words' limit and why (`audit ask` without heatmaps takes more words)."""
        spec = opts.with_model_defaults().templates
        return parse_probe_words(opts.words, opts.words_file, **limit), parse_templates(spec), spec

    @classmethod
    def settings(cls, opts, planned) -> dict:
        words, templates, spec = planned
        # The words themselves: a words file may change under its name.
        return {"probe_words": list(words), "probe_templates": template_setting(spec, templates)}

    @classmethod
    def build(cls, opts, towers, planned) -> ProbeOpinion:
        words, templates, _ = planned
        check_fit(words, templates, towers.tokenizer, towers.context_length)
        return cls(words, text_vectors(towers, list(words), templates))

    def __init__(self, words: tuple[str, ...], texts: torch.Tensor):
        self.words = words
        self.texts = texts

    def rows(self, batch: OpinionBatch) -> OpinionRows:
        rows = probe_rows(self.words, probe_cosines(batch.features(), self.texts))
        return OpinionRows(rows, [len(self.words)] * len(rows))

    def words_per_image(self) -> int:
        return len(self.words)


METHOD = ProbeOpinion
