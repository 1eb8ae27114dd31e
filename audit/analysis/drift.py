"""What changed between two scans of a dataset: images, word distribution, group shares, associations.

`audit diff` shows it and `audit check --baseline` gates on it; both call `compare`, so the numbers agree.

The word distribution counts, for each word, the images showing it. Only words seen in at least
`min_count` images of either snapshot take part (the words the association tests consider too): ascent
also yields many words seen once, and two samples of one-off words share almost none, so over all words
two scans of the same kind of data differ by a Jensen-Shannon divergence near 1. Even over the common
words, small snapshots differ by chance, so each divergence comes with a permutation test: images of both
snapshots are pooled and split at random many times; `noise` is the 95th percentile of the divergence of
those splits and `p` the share of splits that differ at least as much as the real snapshots.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.special

from audit.analysis import FDR, MIN_COUNT, stats
from audit.analysis.associations import Associations, associations, word_filter
from audit.store.query import ScanQuery, WordFilter
from audit.store.schema import ASCENT

PERMUTATIONS = 200
# Permutations cost one pass over the (image, word) pairs each; above this many pair visits fewer are run
# (large snapshots have little sampling noise to measure anyway).
PERMUTATION_BUDGET = 50_000_000
MIN_PERMUTATIONS = 20


@dataclass
class Divergence:
    jsd: float  # bits: 0 = same distribution, 1 = no word in common
    p: float  # permutation p-value; 1.0 when there is nothing to compare
    noise: float  # 95th percentile of the divergence between random splits of the pooled images
    permutations: int


@dataclass
class Drift:
    images_old: int
    images_new: int
    added: list[str]
    removed: list[str]
    vocabulary: int  # words seen in at least min_count images of either snapshot
    divergence: Divergence  # whole snapshot
    words: pd.DataFrame  # word, n_old, n_new, share_old, share_new, delta; largest |delta| first
    min_count: int = MIN_COUNT
    column: str | None = None
    groups: pd.DataFrame = field(default_factory=pd.DataFrame)  # grp, n_*, share_*, delta, jsd, noise, p, q
    appeared: pd.DataFrame = field(default_factory=pd.DataFrame)  # findings now, not flagged before
    vanished: pd.DataFrame = field(default_factory=pd.DataFrame)  # findings before, not flagged now

    @property
    def kept(self) -> int:
        return self.images_new - len(self.added)


def _js(a: np.ndarray, b: np.ndarray) -> float:
    if a.sum() == 0 and b.sum() == 0:
        return 0.0
    if a.sum() == 0 or b.sum() == 0:
        return 1.0
    return stats.jensen_shannon(a, b)


_CHUNK_PAIRS = 2_000_000  # (round, pair) cells of one chunk of permutations


def _js_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """_js of each row of two count matrices [rounds, words]: stats.jensen_shannon's divergence in bits (scipy's
    formula: the mean relative entropy to the midpoint), 0 where both rows are empty and 1 where one is."""
    sa, sb = a.sum(1, keepdims=True), b.sum(1, keepdims=True)
    p, q = a / np.where(sa > 0, sa, 1), b / np.where(sb > 0, sb, 1)
    m = (p + q) / 2
    js = (scipy.special.rel_entr(p, m).sum(1) + scipy.special.rel_entr(q, m).sum(1)) / 2 / np.log(2)
    empty_a, empty_b = sa[:, 0] == 0, sb[:, 0] == 0
    return np.where(empty_a & empty_b, 0.0, np.where(empty_a | empty_b, 1.0, np.clip(js, 0.0, 1.0)))


def divergence(ids_old, ids_new, pairs_old: pd.DataFrame, pairs_new: pd.DataFrame, vocab: list[str],
               seed: int = 0) -> Divergence:
    """Jensen-Shannon divergence of the vocabulary words over two sets of images, with a permutation test.
    pairs_*: distinct (image_id, word) rows of each set."""
    words = pd.Index(vocab)
    img_old, word_old = _codes(pd.Index(ids_old), words, pairs_old)
    img_new, word_new = _codes(pd.Index(ids_new), words, pairs_new)
    return _divergence(np.concatenate([img_old, len(ids_old) + img_new]), np.concatenate([word_old, word_new]),
                       len(ids_old), len(ids_new), seed)


def _codes(images: pd.Index, words: pd.Index, pairs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each pair's image as its position in `images` and its word as its position in `words`; pairs of other
    words (or images) are left out."""
    img, word = images.get_indexer(pairs.image_id), words.get_indexer(pairs.word)
    keep = (img >= 0) & (word >= 0)
    return img[keep].astype(np.int64), word[keep].astype(np.int64)


def _divergence(img: np.ndarray, word: np.ndarray, n_old: int, n_new: int, seed: int) -> Divergence:
    """divergence() over codes: images 0..n_old-1 are the old set, n_old.. the new; words as vocabulary codes.
    Only the words these images show take part: a word neither set shows adds exactly 0 to the divergence."""
    present, word = np.unique(word, return_inverse=True)
    n_words = len(present)
    total = np.bincount(word, minlength=n_words)
    old_counts = np.bincount(word[img < n_old], minlength=n_words)
    observed = _js(old_counts, total - old_counts)
    if n_old == 0 or n_new == 0 or len(word) == 0:
        return Divergence(observed, 1.0, float("nan"), 0)
    rounds = int(min(PERMUTATIONS, max(MIN_PERMUTATIONS, PERMUTATION_BUDGET // len(word))))
    rng = np.random.default_rng(seed)
    n = n_old + n_new
    null = np.empty(rounds)
    # Rounds in chunks: each chunk's splits drawn in turn (the same draws as one round at a time), counted with
    # one bincount and compared with one vectorised divergence (a scipy call per round was most of a diff's
    # time at a thousand groups).
    chunk = max(1, min(rounds, _CHUNK_PAIRS // max(len(word), 1)))
    for r0 in range(0, rounds, chunk):
        rr = min(chunk, rounds - r0)
        split = np.zeros((rr, n), dtype=bool)
        for r in range(rr):
            split[r, rng.permutation(n)[:n_old]] = True
        if rr == 1:  # a snapshot's worth of pairs: one round at a time, as before
            c = np.bincount(word[split[0, img]], minlength=n_words)[None, :]
        else:
            row, pair = np.nonzero(split[:, img])
            c = np.bincount(row * n_words + word[pair], minlength=rr * n_words).reshape(rr, n_words)
        null[r0:r0 + rr] = _js_rows(c, total[None, :] - c)
    p = (1 + int(np.sum(null >= observed - 1e-12))) / (rounds + 1)
    return Divergence(observed, p, float(np.quantile(null, 0.95)), rounds)


def _pairs(df: pd.DataFrame) -> list[tuple[str, str]]:
    return list(zip(df.grp, df.word, strict=True))


def _without(findings: pd.DataFrame, pairs: set[tuple[str, str]]) -> pd.DataFrame:
    keep = np.array([p not in pairs for p in _pairs(findings)], dtype=bool)
    return findings.loc[keep].reset_index(drop=True)


def compare(old: ScanQuery, new: ScanQuery, column: str | None = None, *, min_count: int = MIN_COUNT, fdr: float = FDR,
            kind: str = ASCENT, keep: WordFilter | None = None, procedure: str | None = None,
            assoc_old: Associations | None = None, assoc_new: Associations | None = None) -> Drift:
    """Compare the words of one kind (those the filter `keep` keeps) of two scans; with a group column also per
    group. Associations already computed (say, by a check) can be passed in so nothing is computed twice."""
    keep = word_filter() if keep is None else keep
    tests = {} if procedure is None else {"procedure": procedure}
    images_old, images_new = old.images_groups(column), new.images_groups(column)
    ids_old, ids_new = set(images_old.image_id), set(images_new.image_id)
    n_old, n_new = len(ids_old), len(ids_new)
    pairs_old, pairs_new = old.word_pairs(kind, keep), new.word_pairs(kind, keep)
    words = (pairs_old.word.value_counts().rename("n_old").to_frame()
             .join(pairs_new.word.value_counts().rename("n_new"), how="outer").fillna(0).astype(np.int64))
    vocab = sorted(words.index[(words.n_old >= min_count) | (words.n_new >= min_count)])
    words = words.rename_axis("word").reset_index()
    words["share_old"] = words.n_old / max(n_old, 1)
    words["share_new"] = words.n_new / max(n_new, 1)
    words["delta"] = words.share_new - words.share_old
    words = words.sort_values(["delta", "word"], key=lambda c: -c.abs() if c.name == "delta" else c,
                              kind="stable").reset_index(drop=True)
    overall = divergence(list(images_old.image_id), list(images_new.image_id), pairs_old, pairs_new, vocab)
    drift = Drift(n_old, n_new, sorted(ids_new - ids_old), sorted(ids_old - ids_new), len(vocab), overall, words,
                  min_count)
    if column is None:
        return drift
    drift.column = column
    groups = (images_old.grp.value_counts().rename("n_old").to_frame()
              .join(images_new.grp.value_counts().rename("n_new"), how="outer").fillna(0).astype(np.int64)
              .rename_axis("grp").reset_index().sort_values("grp").reset_index(drop=True))
    groups["share_old"] = groups.n_old / max(n_old, 1)
    groups["share_new"] = groups.n_new / max(n_new, 1)
    groups["delta"] = groups.share_new - groups.share_old
    # Every pair coded once (its group, its image's place within the group, its word); a group's pairs are then
    # one slice, and its divergence is computed from them as divergence() would from the group's own frames.
    words = pd.Index(vocab)
    names = pd.Index(groups.grp)
    sides = []
    for images, pairs in ((images_old, pairs_old), (images_new, pairs_new)):
        group = names.get_indexer(images.grp)
        order = np.argsort(group, kind="stable")  # the images of a group in their own order
        place = np.empty(len(images), dtype=np.int64)
        start = np.searchsorted(group[order], np.arange(len(names)))
        place[order] = np.arange(len(images)) - start[group[order]]
        img, word = _codes(pd.Index(images.image_id), words, pairs)
        pair_group = group[img]
        by_group = np.argsort(pair_group, kind="stable")
        bounds = np.searchsorted(pair_group[by_group], np.arange(len(names) + 1))
        sides.append((place[img][by_group], word[by_group], bounds))
    (place_old, word_old, b_old), (place_new, word_new, b_new) = sides
    rows = []
    for k, (no, nn) in enumerate(zip(groups.n_old, groups.n_new, strict=True)):
        if not (no and nn):  # a group that appeared or vanished: its share says so, a divergence cannot
            rows.append((float("nan"), float("nan"), float("nan")))
            continue
        d = _divergence(np.concatenate([place_old[b_old[k]:b_old[k + 1]], no + place_new[b_new[k]:b_new[k + 1]]]),
                        np.concatenate([word_old[b_old[k]:b_old[k + 1]], word_new[b_new[k]:b_new[k + 1]]]),
                        int(no), int(nn), 0)
        rows.append((d.jsd, d.noise, d.p))
    groups[["jsd", "noise", "p"]] = pd.DataFrame(rows, index=groups.index)
    tested = groups.p.notna()
    groups["q"] = np.nan
    groups.loc[tested, "q"] = stats.bh_qvalues(groups.p[tested].to_numpy())
    drift.groups = groups
    assoc_old = assoc_old or associations(old, column, min_count, fdr, kind=kind, words=keep, **tests)
    assoc_new = assoc_new or associations(new, column, min_count, fdr, kind=kind, words=keep, **tests)
    was, now = set(_pairs(assoc_old.flagged)), set(_pairs(assoc_new.flagged))
    drift.appeared = _without(assoc_new.findings, was)
    drift.vanished = _without(assoc_old.findings, now)
    return drift
