"""The words a finished scan's model offers to describe what its images hold: a vocabulary's text embeddings under
the scan's own weights, for `audit slices` (torch: the scan side of the describer in analysis.slices)."""

from __future__ import annotations

import numpy as np

from audit.scanner.encoders import Towers
from audit.scanner.profiles import profile
from audit.scanner.verify import scan_model
from audit.scanner.vocabulary import named_vocabulary, store_embeddings


def for_scan(scan, spec: str | None, pretrained: str | None = None, device: str = "auto"
             ) -> tuple[list[str], np.ndarray]:
    """A vocabulary's entries and unit text embeddings [V, D] under a finished scan's model (its weights as the
    scan recorded them, or `pretrained`): what `audit slices` describes slices with. spec: words, tokens or a
    file; None: the model's default. The embeddings come from the same cache as the concept opinion's."""
    loaded = scan_model(scan, pretrained, device)
    towers = Towers(loaded)
    model = scan.settings["model"]
    vocab = named_vocabulary(spec or profile(model).vocabulary, towers.tokenizer)
    return store_embeddings(towers, vocab, model, scan.root)
