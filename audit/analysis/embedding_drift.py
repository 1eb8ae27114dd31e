"""Embedding drift: did what the images show move between two snapshots, whatever words were stored?

A two-sample test on the two scans' stored image embeddings (unit-normalised): the maximum mean discrepancy
(MMD; Gretton et al., 2012) with Gaussian kernels whose widths are a quarter, half, once and twice the median
distance between the pooled sample's embeddings, and a permutation test: the snapshot labels are shuffled
`permutations` times; each kernel's p is the share of shuffles whose MMD reaches the observed one, and the
smallest of them is calibrated by the same shuffles' smallest (as MMDAgg does, Schrab et al., 2023), which keeps
the false-alarm rate at the level whatever the data (the images of two snapshots of one dataset are
exchangeable under no drift). The median width alone, the usual rule, sees a shift of the whole sample; a share
of the images moved somewhere new (a fifth on snow) shows at a narrower width (bench/embedding_drift.py).

Each snapshot is sampled to at most `max_images` embeddings, chosen by a seeded hash of the image id (the same
images whatever the order they were scanned in), read one stored part at a time: memory and time stay flat in
the number of images.

Why MMD rather than a classifier's held-out ROC AUC: no training, no split to choose, an exact permutation level,
and the kernel sees any difference in distribution (a new cluster of night scenes, a shifted mean), where a
linear classifier sees only what a hyperplane separates. Evidently's embedding drift offers both; this is the one
that needs nothing beyond NumPy.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from audit.analysis.drift_words import DriftWords, drift_words

MAX_IMAGES = 1000  # per snapshot: a 2,000 x 2,000 kernel, under a second with 500 permutations
PERMUTATIONS = 500
# Kernel widths, in units of the median pooled distance: the median alone sees a shift of the whole sample, a
# narrower kernel a small cluster of new images (Schrab et al., 2023, aggregate such widths for the same reason).
SCALES = (0.25, 0.5, 1.0, 2.0)


@dataclass
class EmbeddingDrift:
    images_old: int  # sampled from each snapshot
    images_new: int
    # Of the kernel with the smallest p: the (biased) squared MMD of the two samples, the 95th percentile of the
    # MMD over shuffled labels (what no drift reaches 19 times in 20), and the kernel's width.
    mmd2: float
    noise: float
    p: float  # aggregated over the kernels (mmd_test)
    bandwidth: float
    missing: str | None = None  # why the test could not run (a scan without stored embeddings), else None
    # The drift in words (analysis.drift_words) where either scan stored a vocabulary's text embeddings; else why not.
    words: DriftWords | None = None
    words_missing: str | None = None

    @property
    def available(self) -> bool:
        return self.missing is None


def _keys(ids: list[str], seed: int) -> np.ndarray:
    return np.array([int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode("utf-8", "surrogatepass")).digest()[:8],
                                    "little") for i in ids], dtype=np.uint64)


def sample(parts, max_images: int, seed: int) -> np.ndarray:
    """Up to max_images unit embeddings from (ids, [n, D]) parts: those whose ids hash lowest, kept as the parts
    stream by."""
    keys = np.zeros(0, np.uint64)
    kept = None
    for ids, emb in parts:
        k = np.concatenate([keys, _keys(ids, seed)])
        e = emb if kept is None else np.concatenate([kept, emb])
        if len(k) > max_images:
            order = np.argpartition(k, max_images - 1)[:max_images]
            k, e = k[order], e[order]
        keys, kept = k, e
    if kept is None:
        return np.zeros((0, 0), np.float32)
    kept = kept[np.argsort(keys, kind="stable")]  # an order that does not depend on the parts'
    return (kept / np.linalg.norm(kept, axis=1, keepdims=True).clip(1e-12)).astype(np.float64)


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int = PERMUTATIONS, seed: int = 0,
             scales: tuple[float, ...] = SCALES) -> tuple[float, float, float, float]:
    """(MMD², its permutation noise (95th percentile), p, bandwidth) of samples x [m, D] and y [n, D], aggregated
    over Gaussian kernels whose widths are `scales` times the median pooled distance: each kernel's permutation p,
    the smallest of them as the statistic, and that minimum calibrated by the same permutations (each shuffle's
    own smallest p), so the level stays exact however many kernels. MMD², noise and bandwidth are the kernel's
    with the smallest p."""
    z = np.concatenate([x, y])
    m, n = len(x), len(y)
    sq = (z * z).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0)
    off = d2[np.triu_indices(m + n, 1)]
    width2 = float(np.median(off)) if len(off) else 1.0
    width2 = width2 if width2 > 0 else 1.0
    rs = np.random.default_rng(seed)
    labels = np.tile(np.concatenate([np.full(m, 1 / m), np.full(n, -1 / n)])[:, None], (1, permutations + 1))
    for j in range(1, permutations + 1):
        rs.shuffle(labels[:, j])
    stats = np.stack([np.einsum("ij,ij->j", labels, np.exp(-d2 / (width2 * s * s)) @ labels) for s in scales])
    # Each labelling's p under each kernel, against the shuffles: [kernels, labellings].
    null = np.sort(stats[:, 1:], axis=1)
    exceed = permutations - np.stack([np.searchsorted(null[k], stats[k] - 1e-12) for k in range(len(scales))])
    p_each = (1 + exceed) / (permutations + 1)
    smallest = p_each.min(0)
    p = float((1 + np.sum(smallest[1:] <= smallest[0] + 1e-12)) / (permutations + 1))
    best = int(np.argmin(p_each[:, 0]))
    return (float(stats[best, 0]), float(np.quantile(stats[best, 1:], 0.95)), p,
            float(np.sqrt(width2) * scales[best]))


def embedded_scan(scan):
    """The scan whose stored embeddings are this scan's images': itself, or for a scan `audit ask` made (it keeps
    none), the scan it was asked of, when that is still there."""
    from pathlib import Path

    from audit.store.reader import Scan

    source = scan.asked_of
    return Scan(source) if source is not None and (Path(source) / "scan.json").exists() else scan


def _without(parts, skip: frozenset[str], seen: list[int]):
    """Embedding parts less the images in `skip` (copies that are not their cluster's representative); counts the
    stored rows in seen[0]."""
    for ids, emb in parts:
        seen[0] += len(ids)
        if skip:
            keep = np.array([i not in skip for i in ids], bool)
            ids, emb = [i for i, k in zip(ids, keep, strict=True) if k], emb[keep]
        yield ids, emb


def embedding_drift(old, new, *, max_images: int = MAX_IMAGES, permutations: int = PERMUTATIONS,
                    seed: int = 0, skip: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())
                    ) -> EmbeddingDrift:
    """The test on two scans (store.reader.Scan); says what is missing when either kept no embeddings. `skip`: per
    scan, images left out (collapsed copies: each cluster is sampled through its representative)."""
    samples = []
    for (which, scan), left_out in zip((("the old scan", old), ("the new scan", new)), skip, strict=True):
        seen = [0]
        s = sample(_without(embedded_scan(scan).embedding_parts(), left_out, seen), max_images, seed)
        if len(s) < 2 and seen[0] >= 2:
            return EmbeddingDrift(0, 0, float("nan"), float("nan"), float("nan"), float("nan"),
                                  missing=f"{which} ({scan.root}) holds fewer than 2 images once its copies are "
                                          "counted once")
        if len(s) < 2:
            return EmbeddingDrift(0, 0, float("nan"), float("nan"), float("nan"), float("nan"),
                                  missing=f"{which} ({scan.root}) keeps no image embeddings (scanned with "
                                          "--embeddings none, or by an audit before 0.3)")
        samples.append(s)
    x, y = samples
    if x.shape[1] != y.shape[1]:
        return EmbeddingDrift(len(x), len(y), float("nan"), float("nan"), float("nan"), float("nan"),
                              missing=f"the scans' embeddings differ in size ({x.shape[1]} and {y.shape[1]}): "
                                      "two models")
    mmd2, noise, p, width = mmd_test(x, y, permutations, seed)
    words, why = None, None
    vocabulary = stored_vocabulary(new, old)
    if vocabulary is None:
        why = ("neither scan stored a vocabulary's text embeddings (a concepts scan stores its own; `audit slices "
               "--vocabulary` stores the one it used)")
    elif vocabulary[1].shape[1] != x.shape[1]:
        why = f"the stored vocabulary's embeddings are {vocabulary[1].shape[1]}-d, the images' {x.shape[1]}-d"
    else:
        words = drift_words(x, y, vocabulary[0], vocabulary[1], width)
    return EmbeddingDrift(len(x), len(y), mmd2, noise, p, width, words=words, words_missing=why)


def stored_vocabulary(*scans):
    """The first vocabulary text embeddings stored with these scans (or the scans they were asked of), if any."""
    for scan in scans:
        for candidate in (scan, embedded_scan(scan)):
            found = candidate.vocabulary()
            if found is not None and len(found[0]):
                return found
    return None
