"""The scan's first images, read in the source's own order before the stream starts.

The concept opinion centres its decomposition by the mean embedding of the source's first MEAN_IMAGES readable
images (audit.scanner.concepts). That mean must be known before the first image is decomposed, and it must not
depend on the worker count, the batch size or the engine, so it cannot come from the stream (whose order
interleaves the workers). This pass reads those images in source order, decodes them in the scan's workers,
encodes them once, as the scan would (Towers.embed_images, under the scan's precision), and keeps:
- their embeddings, which the scanner then uses instead of encoding the images again;
- on the local engine, the decoded batches themselves, which become the scan's first batches (the stream passes
  over their ids), so those images are neither encoded nor decoded twice. The pixels held are about
  MEAN_IMAGES x 0.6 MB (224 px) until the mean is known;
- there too, the hidden states the relevancy pass starts from (Towers.image_pass's `keep`), up to HIDDEN_BUDGET
  bytes (ViT-B-32: 154 kB an image, so all 1,000; ViT-L-14: 1 MB, so the first 512): the relevancy pass would
  otherwise run the image tower's first blocks again for these images. Those beyond the budget get them
  recomputed, the same bits.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from audit.errors import AuditError
from audit.scanner.concepts import MEAN_CHUNK, MEAN_IMAGES, ImageMean, warn_small_mean
from audit.scanner.device import autocast
from audit.scanner.loader import Batch, ImageDataset, make_loader

HIDDEN_BUDGET = 512 * 2**20


@dataclass
class FirstPass:
    mean: ImageMean
    features: dict[str, torch.Tensor]  # image id -> its embedding [D], as the image tower returned it
    batches: list[Batch] = field(default_factory=list)  # kept decoded batches, in source order (local engine)
    hidden: dict[str, torch.Tensor] = field(default_factory=dict)  # image id -> relevancy hidden states (the same)

    @property
    def taken(self) -> frozenset[str]:
        """Ids the kept batches hold (decoded or failed): the stream passes over them."""
        return frozenset(r.image_id for b in self.batches for r in (*b.records, *b.error_records))


@torch.no_grad()
def first_pass(towers, source, preprocess: dict, max_pixels: int | None, workers: int, precision: str,
               keep_batches: bool, limit: int | None = None, keep: int | None = None) -> FirstPass:
    """Encode the source's first `limit` readable images (in its order) and average their normalized
    embeddings; `keep_batches` keeps the decoded batches for the scan to use as its first, and with them the
    hidden states entering block `keep` (within HIDDEN_BUDGET)."""
    limit = MEAN_IMAGES if limit is None else limit
    records = iter(source.records())
    features: dict[str, torch.Tensor] = {}
    kept: list[Batch] = []
    hidden: dict[str, torch.Tensor] = {}
    budget = HIDDEN_BUDGET if keep_batches and keep is not None else 0
    total = None
    seen = 0
    while seen < limit:
        # Enough records for the images still wanted; a window with unreadable files is followed by another.
        window = list(itertools.islice(records, limit - seen))
        if not window:
            break
        loader = make_loader(ImageDataset(window, preprocess, max_pixels), MEAN_CHUNK, workers)
        for batch in loader:  # a map-style dataset: batches come in the records' order whatever the workers
            if batch.indices:
                x = batch.pixels.to(towers.device, non_blocking=True)
                with autocast(towers.device, precision):
                    feats, states = towers.image_pass(x, keep if budget > 0 else None)
                use = min(len(batch.indices), limit - seen)
                part = F.normalize(feats[:use].float(), dim=-1).sum(0).double().cpu()
                total = part if total is None else total + part
                seen += use
                features.update(zip((r.image_id for r in batch.records), feats, strict=True))
                if states is not None:
                    # Clones: a slice would hold the whole batch's tensor alive.
                    for r, h in zip(batch.records, states, strict=True):
                        if budget < h.numel() * h.element_size():
                            break
                        hidden[r.image_id] = h.clone()
                        budget -= h.numel() * h.element_size()
            if keep_batches:
                kept.append(batch)
    if total is None:
        raise AuditError("--concept-mean dataset: no readable image in the source to average")
    warn_small_mean(seen)
    return FirstPass(ImageMean((total / seen).float().numpy(), "dataset", seen), features, kept, hidden)
