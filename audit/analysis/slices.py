"""Slices: the sub-populations nobody labelled, found in the stored embeddings, described in words and tested
against the columns someone did name; and label-issue candidates from the same embeddings. Torch-free.

Discovery: k-means (scikit-learn) on the unit-normalised embeddings of a seeded sample of the images (chosen by
a hash of the image id, so the same images whatever the order they were scanned in), then every image assigned
to its nearest centroid, one stored part at a time: memory and time stay linear in the number of images.
k "auto" is the k of the best silhouette (Rousseeuw 1987; cosine) among 2..max_k on a smaller sample: the
common criterion that needs no labels, and one that prefers tight, separated groups, which is what a slice
worth naming is.

Description, two kinds of words:
- stored: the words of the scan's own kind (concepts, ascent words or probes, with the report's word filter)
  over-represented among the slice's images, each tested one-sided against the rest exactly like a
  (group, word) pair, under the same false-discovery procedure;
- vocabulary (when the caller gives text embeddings): the vocabulary entries whose text embedding has the
  largest cosine with the slice's mean minus the rest's mean (Domino's describe, Eyuboglu et al. 2022).

Skew: for each column given and each of its values, the slice's share of the value against the rest's, tested
one-sided with the report's 2x2 test, every (slice, column, value) under one Tarone-BH correction. Copies count
once (analysis.duplicates): the fit leaves out all but each cluster's representative, and the tests count a
cluster once per value it spans, as the report does.

Label issues: a linear probe (multinomial logistic regression) predicts a column from the embeddings,
cross-fitted over FOLDS folds drawn by a hash of the image id (each image is scored by a probe that never saw
it), trained on at most `probe_sample` images per fold; the out-of-fold probabilities go to cleanlab's
find_label_issues (Northcutt et al. 2021). Candidates to look at, not verdicts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from audit.analysis import ALTERNATIVE, COPIES, FDR, MIN_COUNT, stats, tables
from audit.analysis.duplicates import scan_state
from audit.errors import AuditError
from audit.store.layout import replace_folder
from audit.store.query import ScanQuery, WordFilter
from audit.store.reader import Scan
from audit.store.schema import KINDS, LABEL_ISSUES, SLICE_TESTS, SLICE_WORDS, SLICES, SLICES_FOLDER

log = logging.getLogger("audit.slices")

SETTINGS_FILE = "settings.json"
FILES = {"slices": "slices.parquet", "words": "words.parquet", "tests": "tests.parquet",
         "label_issues": "label_issues.parquet"}
FOLDS = 5  # cross-fitting folds of the label probe (cleanlab's own default for out-of-fold probabilities)
WORDS_PER_SLICE = 8  # words kept per slice and source
EXAMPLES = 6  # the images nearest each centroid kept as its examples
# Kaufman and Rousseeuw (1990): an average silhouette below 0.25 shows no substantial structure. A slice whose own
# best split scores below it is not split again.
SUBSTANTIAL = 0.25


@dataclass(frozen=True)
class SliceSettings:
    """k: None chooses it (auto, by silhouette among 2..max_k). fit_sample: k-means sees at most this many images
    (scikit-learn's k-means on 50,000 x 512 takes seconds; the centroids of a uniform sample that size move less
    than the clusters are wide). choose_sample: the silhouette, quadratic in its sample, on at most this many.
    min_size: a slice smaller than this many images is not tested (the report's MIN_COUNT)."""
    k: int | None = None
    max_k: int = 20
    fit_sample: int = 50_000
    choose_sample: int = 3_000
    min_size: int = MIN_COUNT
    fdr: float = FDR
    probe_sample: int = 20_000
    seed: int = 0

    def check(self) -> SliceSettings:
        if self.k is not None and self.k < 2:
            raise AuditError(f"--k is 'auto' or a number of slices of at least 2, not {self.k}")
        if self.max_k < 2:
            raise AuditError(f"--max-k must be at least 2, not {self.max_k}")
        if not 0 < self.fdr < 1:
            raise AuditError(f"--fdr must be between 0 and 1, not {self.fdr}")
        return self


@dataclass
class Slices:
    """What `audit slices` found: each image's slice, the slices' words and skews, label-issue candidates."""
    slices: pd.DataFrame  # SLICES rows
    words: pd.DataFrame  # SLICE_WORDS rows
    tests: pd.DataFrame  # SLICE_TESTS rows
    label_issues: pd.DataFrame  # LABEL_ISSUES rows
    k: int
    silhouette: dict  # k -> silhouette, where k was chosen
    settings: dict
    by: list[str] = field(default_factory=list)
    labels: str | None = None
    counted: int = 0  # images the tests and words count (copies once)
    notes: list[str] = field(default_factory=list)

    @property
    def images(self) -> int:
        return int((self.slices.parent < 0).sum())

    def sizes(self) -> pd.DataFrame:
        """slice, parent (-1 for a top slice), images, share, examples (ids nearest the centroid): by number."""
        if not len(self.slices):
            return pd.DataFrame(columns=["slice", "parent", "images", "share", "examples"])
        s = self.slices.sort_values(["slice", "cosine", "image_id"], ascending=[True, False, True])
        out = s.groupby("slice", as_index=False).agg(parent=("parent", "first"), images=("image_id", "size"))
        out["share"] = out.images / max(self.images, 1)
        out["examples"] = [list(g.image_id.head(EXAMPLES)) for _, g in s.groupby("slice")]
        return out

    @property
    def flagged(self) -> pd.DataFrame:
        return self.tests[self.tests.flagged].sort_values(["q", "lift"], ascending=[True, False])

    def words_of(self, slice_id: int, source: str | None = None) -> list[str]:
        w = self.words[self.words.slice == slice_id]
        if source is not None:
            w = w[w.source == source]
        return list(w.word)

    def summary(self) -> dict:
        sizes = self.sizes()
        described = []
        for row in sizes.itertuples():
            described.append({"slice": int(row.slice), "parent": int(row.parent), "images": int(row.images),
                              "share": round(row.share, 6),
                              "stored_words": self.words_of(row.slice, "stored"),
                              "vocabulary_words": self.words_of(row.slice, "vocabulary"),
                              "examples": row.examples})
        return {"images": self.images, "counted": self.counted, "k": self.k,
                "silhouette": {str(k): v for k, v in self.silhouette.items()}, "by": self.by,
                "labels": self.labels, "slices": described,
                "flagged": self.flagged.to_dict("records"),
                "label_issues": len(self.label_issues), "settings": self.settings, "notes": self.notes}


# ---- the embeddings ---------------------------------------------------------------------------------------------

def id_hashes(ids, seed: int) -> np.ndarray:
    """A seeded 64-bit hash of each image id: samples and folds chosen by it do not depend on scan order."""
    return np.array([int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode("utf-8", "surrogatepass")).digest()[:8],
                                    "little") for i in ids], dtype=np.uint64)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


def _parts(scan: Scan):
    from audit.analysis.embedding_drift import embedded_scan

    return embedded_scan(scan).embedding_parts()


def sample_vectors(scan: Scan, size: int, seed: int, skip: frozenset[str] = frozenset()
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(ids, unit vectors) of at most `size` images, those whose ids hash lowest (images in `skip` left out),
    sorted by that hash; read a part at a time."""
    keys, ids, kept = np.zeros(0, np.uint64), np.zeros(0, object), None
    for part_ids, emb in _parts(scan):
        part_ids = np.asarray(part_ids, dtype=object)
        if skip:
            keep = ~pd.Index(part_ids).isin(skip)
            part_ids, emb = part_ids[keep], emb[keep]
        k = np.concatenate([keys, id_hashes(part_ids, seed)])
        i = np.concatenate([ids, part_ids])
        e = _unit(emb) if kept is None else np.concatenate([kept, _unit(emb)])
        if len(k) > size:
            order = np.argpartition(k, size - 1)[:size]
            k, i, e = k[order], i[order], e[order]
        keys, ids, kept = k, i, e
    if kept is None:
        return np.zeros(0, object), np.zeros((0, 0), np.float32)
    order = np.argsort(keys, kind="stable")
    return ids[order], kept[order]


# ---- discovery --------------------------------------------------------------------------------------------------

def _kmeans(x: np.ndarray, k: int, seed: int, restarts: int = 4):
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=restarts, random_state=seed).fit(x)


def choose_k(x: np.ndarray, settings: SliceSettings) -> tuple[int, dict[int, float]]:
    """The k of the best cosine silhouette among 2..max_k (at most n/min_size slices), on the first
    choose_sample rows of x (a hash-ordered sample, so the first rows are a sample too)."""
    from sklearn.metrics import silhouette_score

    x = x[:settings.choose_sample]
    top = min(settings.max_k, max(2, len(x) // max(settings.min_size, 1)), len(x) - 1)
    scores = {}
    for k in range(2, top + 1):
        # One start per k while choosing (the silhouettes of neighbouring k are compared, not used); the chosen
        # k is then fitted with the full restarts.
        labels = _kmeans(x, k, settings.seed, restarts=1).labels_
        if len(np.unique(labels)) < 2:
            continue
        scores[k] = round(float(silhouette_score(x, labels, metric="cosine")), 6)
    if not scores:
        return 2, {}
    return max(scores, key=lambda k: (scores[k], -k)), scores


def _numbered(rows: pd.DataFrame, skip: frozenset[str], k: int) -> np.ndarray:
    """For cluster labels 0..k-1 of `rows`, their numbers by size, largest first (ties by the smallest member id):
    numbers that do not depend on k-means' own order."""
    counted = rows[~rows.image_id.isin(skip)]
    order = (counted.groupby("slice").agg(n=("image_id", "size"), first=("image_id", "min"))
             .reindex(range(k)).fillna({"n": 0, "first": ""}).sort_values(["n", "first"], ascending=[False, True]))
    renumber = np.empty(k, np.int32)
    renumber[order.index.to_numpy()] = np.arange(k, dtype=np.int32)
    return renumber


def _split(x: np.ndarray, settings: SliceSettings) -> np.ndarray | None:
    """Unit centroids that split one slice's sample further, or None where its best silhouette shows no
    substantial structure (below SUBSTANTIAL) or it is too small to hold two testable parts."""
    if len(x) < 4 * settings.min_size:
        return None
    k, scores = choose_k(x, settings)
    if not scores or scores[k] < SUBSTANTIAL:
        return None
    return _unit(_kmeans(x[:settings.fit_sample], k, settings.seed).cluster_centers_)


def discover(scan: Scan, settings: SliceSettings, skip: frozenset[str]) -> tuple[pd.DataFrame, int, dict]:
    """(SLICES rows: every image with an embedding in its top slice, and in a sub-slice where its top slice
    splits further; k, the top level's silhouettes). Top slices are numbered 0..k-1 by size; sub-slices after
    them, by parent and then by size."""
    _, x = sample_vectors(scan, settings.fit_sample, settings.seed, skip)
    if len(x) < 4:
        raise AuditError(f"{scan.root} holds {len(x)} images with stored embeddings (copies counted once): slices "
                         "need at least 4 (a scan made with --embeddings none keeps none)")
    k, scores = (settings.k, {}) if settings.k is not None else choose_k(x, settings)
    k = min(k, len(x))
    centroids = _unit(_kmeans(x, k, settings.seed).cluster_centers_)
    # A second level: a slice of the sample with substantial structure of its own is split again, so that a
    # small, tight sub-population (one product shot, one camera's night scenes) is a slice of its own even
    # where the first level groups it with what it most resembles.
    top_of_sample = (x @ centroids.T).argmax(1)
    subs = {j: _split(x[top_of_sample == j], settings) for j in range(k)} if settings.k is None else {}
    subs = {j: c for j, c in subs.items() if c is not None}
    base = {j: k + sum(len(subs[i]) for i in subs if i < j) for j in subs}
    frames = []
    for ids, emb in _parts(scan):
        ids = np.asarray(ids, dtype=object)
        e = _unit(emb)
        cos = e @ centroids.T
        best = cos.argmax(1)
        frames.append(pd.DataFrame({"image_id": ids, "slice": best.astype(np.int32), "parent": np.int32(-1),
                                    "cosine": cos[np.arange(len(best)), best].astype(np.float32)}))
        for j, sub in subs.items():
            inside = np.flatnonzero(best == j)
            if not len(inside):
                continue
            c = e[inside] @ sub.T
            b = c.argmax(1)
            frames.append(pd.DataFrame({"image_id": ids[inside], "slice": (base[j] + b).astype(np.int32),
                                        "parent": np.int32(j),
                                        "cosine": c[np.arange(len(b)), b].astype(np.float32)}))
    rows = pd.concat(frames, ignore_index=True)
    top = rows.parent < 0
    renumber = _numbered(rows[top], skip, k)
    rows.loc[top, "slice"] = renumber[rows.slice[top].to_numpy()]
    rows.loc[~top, "parent"] = renumber[rows.parent[~top].to_numpy()]
    # Sub-slices in the order of their parents' new numbers, each parent's by size.
    total = k + sum(len(c) for c in subs.values())
    if total > k:
        sub_rows = rows[~top]
        order = (sub_rows[~sub_rows.image_id.isin(skip)].groupby("slice")
                 .agg(parent=("parent", "first"), n=("image_id", "size"), first=("image_id", "min"))
                 .sort_values(["parent", "n", "first"], ascending=[True, False, True]))
        renumber = np.full(total, -1, np.int32)
        renumber[order.index.to_numpy()] = k + np.arange(len(order), dtype=np.int32)
        rows.loc[~top, "slice"] = renumber[rows.slice[~top].to_numpy()]
    rows = rows.astype({"slice": np.int32, "parent": np.int32})
    return rows.sort_values(["image_id", "parent"], ignore_index=True), k, scores


# ---- description ------------------------------------------------------------------------------------------------

def _one_sided(inside: np.ndarray, size: np.ndarray, total: np.ndarray, n: int, fdr: float):
    """p, q (Tarone-BH), share inside, share outside and lift of tables: `inside` of `size` slice images hold
    the value, `total` of all n images do."""
    a = inside
    b = size - inside
    c = total - inside
    d = (n - size) - c
    p, _ = tables.association_test(a, b, c, d, ALTERNATIVE)
    floor = tables.min_attainable_p(size, n - size, total, ALTERNATIVE)
    q, _ = stats.tarone_bh(p, floor, fdr)
    share_in = a / np.maximum(size, 1)
    share_out = c / np.maximum(n - size, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = np.where(share_out > 0, share_in / np.where(share_out > 0, share_out, 1), np.inf)
    return p, q, share_in, share_out, lift


def stored_words(q: ScanQuery, rows: pd.DataFrame, kind: str, settings: SliceSettings,
                 words: WordFilter) -> pd.DataFrame:
    """SLICE_WORDS rows of source 'stored': per slice, the words of `kind` over-represented among its images."""
    pairs = q.word_pairs(kind, words)
    counted = q.df("SELECT image_id FROM images")
    member = rows[["image_id", "slice"]]
    counted = counted[counted.image_id.isin(member.image_id)]
    n = len(counted)
    if not len(pairs) or not n:
        return SLICE_WORDS.empty_table().to_pandas()
    pairs = pairs[pairs.image_id.isin(counted.image_id)]
    total = pairs.groupby("word").image_id.nunique()
    total = total[total >= settings.min_size]
    size = counted.merge(member).groupby("slice").image_id.size()
    cells = (pairs[pairs.word.isin(total.index)].merge(member).groupby(["slice", "word"]).image_id.nunique()
             .reset_index())
    if not len(cells):
        return SLICE_WORDS.empty_table().to_pandas()
    s = cells.slice.to_numpy().astype(int)
    p, qv, share_in, share_out, lift = _one_sided(cells.image_id.to_numpy(), size.reindex(s).to_numpy(),
                                                  total.reindex(cells.word).to_numpy(), n, settings.fdr)
    out = pd.DataFrame({"slice": s.astype(np.int32), "word": cells.word, "source": "stored", "score": lift,
                        "share_slice": share_in, "share_rest": share_out, "q": qv, "p": p})
    # Per slice: its significant words, strongest evidence first; where none is, the best few untested ones
    # would mislead, so a slice may have no stored words.
    out = out[out.q <= settings.fdr].sort_values(["slice", "p", "score", "word"], ascending=[True, True, False, True])
    return out.groupby("slice").head(WORDS_PER_SLICE).drop(columns="p").reset_index(drop=True)


def vocabulary_words(rows: pd.DataFrame, scan: Scan, words: list[str], text: np.ndarray) -> pd.DataFrame:
    """SLICE_WORDS rows of source 'vocabulary': per slice, the entries whose unit text embedding has the largest
    cosine with (the slice's mean unit image embedding - the rest's)."""
    k = int(rows.slice.max()) + 1 if len(rows) else 0
    member = rows[["image_id", "slice"]]
    sums, counts, total, n = None, np.zeros(k), None, 0
    for ids, emb in _parts(scan):
        e = _unit(emb)
        if sums is None:
            sums, total = np.zeros((k, e.shape[1])), np.zeros(e.shape[1])
        # Every (image, slice) row of the part's images: an image is in its top slice and maybe a sub-slice.
        m = pd.DataFrame({"image_id": ids, "pos": np.arange(len(ids))}).merge(member)
        s = m.slice.to_numpy()
        np.add.at(sums, s, e[m.pos.to_numpy()])
        counts += np.bincount(s, minlength=k)
        total += e.sum(0)
        n += len(ids)
    if sums is None or text.shape[1] != sums.shape[1]:
        return SLICE_WORDS.empty_table().to_pandas()
    t = _unit(text)
    frames = []
    for j in range(k):
        rest = n - counts[j]
        if counts[j] == 0 or rest == 0:
            continue
        direction = sums[j] / counts[j] - (total - sums[j]) / rest
        direction /= max(np.linalg.norm(direction), 1e-12)
        score = t @ direction
        top = np.argsort(-score, kind="stable")[:WORDS_PER_SLICE]
        frames.append(pd.DataFrame({"slice": np.int32(j), "word": [words[i] for i in top], "source": "vocabulary",
                                    "score": score[top].astype(np.float64), "share_slice": np.nan,
                                    "share_rest": np.nan, "q": np.nan}))
    return pd.concat(frames, ignore_index=True) if frames else SLICE_WORDS.empty_table().to_pandas()


# ---- skew -------------------------------------------------------------------------------------------------------

def skew_tests(q: ScanQuery, rows: pd.DataFrame, by: list[str], settings: SliceSettings) -> pd.DataFrame:
    """SLICE_TESTS rows: every (slice, column, value), one correction over all of them."""
    q.con.register("slice_rows", pa.Table.from_pandas(rows[["image_id", "slice"]], preserve_index=False))
    frames = []
    for column in by:
        view, c = q.images_of(column), q.check_group_column(column)  # c: the column's name, quoted for SQL
        cells = q.df(f"""SELECT s.slice, CAST(i.{c} AS VARCHAR) AS value, count(*) AS n
                         FROM {view} i JOIN slice_rows s USING (image_id)
                         WHERE i.{c} IS NOT NULL GROUP BY ALL""")
        if not len(cells):
            continue
        size = cells.groupby("slice").n.sum()
        # Each image once, whatever the number of levels its slices sit at.
        total = q.df(f"""SELECT CAST({c} AS VARCHAR) AS value, count(*) AS n FROM {view}
                         WHERE {c} IS NOT NULL AND image_id IN (SELECT image_id FROM slice_rows)
                         GROUP BY ALL""").set_index("value").n
        n = int(total.sum())
        grid = (pd.MultiIndex.from_product([size.index, total.index], names=["slice", "value"])
                .to_frame(index=False).merge(cells, how="left").fillna({"n": 0}))
        grid = grid[grid.slice.map(size) >= settings.min_size]
        if len(total) < 2 or not len(grid):
            continue
        frames.append(pd.DataFrame({"slice": grid.slice.astype(np.int32), "column": column, "value": grid.value,
                                    "in_slice": grid.n.astype(np.int64),
                                    "slice_size": grid.slice.map(size).astype(np.int64),
                                    "total": grid.value.map(total).astype(np.int64), "n": n}))
    if not frames:
        return SLICE_TESTS.empty_table().to_pandas()
    t = pd.concat(frames, ignore_index=True)
    p, qv, share_in, share_out, lift = _one_sided(t.in_slice.to_numpy(), t.slice_size.to_numpy(),
                                                  t.total.to_numpy(), t.n.to_numpy(), settings.fdr)
    t = t.drop(columns=["total", "n"]).assign(share_slice=share_in, share_rest=share_out, lift=lift, p=p, q=qv)
    t["flagged"] = t.q.fillna(1.0) <= settings.fdr
    return t.sort_values(["flagged", "q", "slice", "column", "value"], ascending=[False, True, True, True, True],
                         ignore_index=True)[SLICE_TESTS.names]


# ---- label issues -----------------------------------------------------------------------------------------------

@dataclass
class OutOfFold:
    """A cross-fitted probe's predictions of a column: per image (in stored order) its given value's code and every
    value's out-of-fold probability."""
    ids: np.ndarray
    given: np.ndarray  # [n] codes into classes
    probs: np.ndarray  # [n, classes]
    classes: list[str]
    notes: list[str]


PREDICT_CHUNK = 65_536


def out_of_fold(scan: Scan, column: str, settings: SliceSettings, skip: frozenset[str] = frozenset()) -> OutOfFold:
    """The probe behind label issues: multinomial logistic regression on the unit embeddings, FOLDS folds by a
    hash of the id (an image's fold and score do not depend on scan order), each fold's probe trained on at most
    probe_sample images of the other folds (those with the lowest hashes). Embeddings are held as float16, the
    stored precision: a million 512-d ones take 1 GB."""
    from sklearn.linear_model import LogisticRegression

    images = scan.table("images")
    if column not in images.column_names:
        raise AuditError(f"unknown --labels column {column!r}; the scan's image columns are "
                         + ", ".join(c for c in images.column_names if c not in ("image_id", "path")))
    given = (images.select(["image_id", column]).to_pandas().dropna().astype({column: str})
             .set_index("image_id")[column])
    given = given[~given.index.isin(skip)]
    counts = given.value_counts()
    classes = sorted(counts[counts >= FOLDS].index)
    notes = []
    if len(counts) > len(classes):
        notes.append(f"label issues: values of {column!r} with fewer than {FOLDS} images are left out "
                     f"({', '.join(sorted(set(counts.index) - set(classes)))[:300]})")
    given = given[given.isin(classes)]
    empty = OutOfFold(np.zeros(0, object), np.zeros(0, np.int64), np.zeros((0, len(classes))), classes, notes)
    if len(classes) < 2:
        notes.append(f"label issues: {column!r} has fewer than two values with {FOLDS} images each; none looked for")
        return empty
    # One float16 array filled part by part (no list of parts beside it): a million 512-d embeddings, 1 GB.
    ids, x, n = [], None, 0
    for part_ids, emb in _parts(scan):
        part_ids = np.asarray(part_ids, dtype=object)
        keep = given.index.get_indexer(part_ids) >= 0
        if x is None:
            x = np.empty((len(given), emb.shape[1]), np.float16)
        x[n:n + int(keep.sum())] = _unit(emb[keep])
        n += int(keep.sum())
        ids.append(part_ids[keep])
    if not n:
        return empty
    ids, x = np.concatenate(ids), x[:n]
    code = {c: i for i, c in enumerate(classes)}
    y = given.reindex(ids).map(code).to_numpy(dtype=np.int64)
    h = id_hashes(ids, settings.seed)
    fold = (h % FOLDS).astype(int)
    probs = np.zeros((len(ids), len(classes)))
    for f in range(FOLDS):
        # Training rows in the order of their hashes (the lowest first where they are sampled): the probe, and so
        # every score, does not depend on the order the images were scanned in.
        train = np.flatnonzero(fold != f)
        train = train[np.argsort(h[train], kind="stable")[:settings.probe_sample]]
        probe = LogisticRegression(max_iter=1000, C=1.0)
        probe.fit(x[train].astype(np.float32), y[train])
        inside = np.flatnonzero(fold == f)
        for lo in range(0, len(inside), PREDICT_CHUNK):
            rows = inside[lo:lo + PREDICT_CHUNK]
            p = np.zeros((len(rows), len(classes)))
            p[:, probe.classes_] = probe.predict_proba(x[rows].astype(np.float32))
            probs[rows] = p
    # How far the probe predicts the column at all: near the largest class's share, the candidates are noise.
    accuracy = float((probs.argmax(1) == y).mean())
    majority = float(np.bincount(y).max() / len(y))
    notes.append(f"label issues: the probe predicts {column!r} out of fold for {accuracy:.1%} of {len(y)} images "
                 f"(the largest value alone: {majority:.1%})"
                 + ("; barely better, so the candidates say little" if accuracy < majority + 0.1 else ""))
    return OutOfFold(ids, y, probs, classes, notes)


def label_issues(scan: Scan, column: str, settings: SliceSettings, skip: frozenset[str] = frozenset()
                 ) -> tuple[pd.DataFrame, list[str]]:
    """LABEL_ISSUES rows for `column`, most suspect first: cleanlab's find_label_issues on the out-of-fold
    probabilities (confident learning), and notes on what was left out and how well the probe predicts."""
    from cleanlab.filter import find_label_issues

    oof = out_of_fold(scan, column, settings, skip)
    if not len(oof.ids) or (np.bincount(oof.given, minlength=len(oof.classes)) == 0).any():
        return LABEL_ISSUES.empty_table().to_pandas(), oof.notes
    found = find_label_issues(oof.given, oof.probs, return_indices_ranked_by="self_confidence")
    y, probs, classes = oof.given, oof.probs, oof.classes
    out = pd.DataFrame({"image_id": oof.ids[found], "column": column, "given": [classes[i] for i in y[found]],
                        "suggested": [classes[i] for i in probs[found].argmax(1)], "quality": probs[found, y[found]]})
    return out.sort_values(["quality", "image_id"], ignore_index=True), oof.notes


# ---- the command ------------------------------------------------------------------------------------------------

def find_slices(scan_dir: str | os.PathLike, *, by: list[str] | None = None, labels: str | None = None,
                settings: SliceSettings | None = None, copies: str = COPIES, kind: str | None = None,
                words: WordFilter | None = None, vocabulary: tuple[list[str], np.ndarray] | None = None,
                store: bool = True) -> Slices:
    """Find, describe and test the slices of a scan (see the module's text); store them in scan-dir/slices/
    unless `store` is False or the folder cannot be written. by: image columns to test skews across (default:
    label, where the scan has labels). labels: a column to look for label issues in (None: none). kind: the
    stored words that describe (default: the kind the scan holds). vocabulary: (words, text embeddings [W, D])
    for the vocabulary description."""
    from audit.analysis.associations import word_filter
    from audit.analysis.duplicates import collapsed_ids, open_query
    from audit.store.settings import held_kind

    settings = (settings or SliceSettings()).check()
    q = open_query(scan_dir, copies)
    have = q.columns("images")
    if by is None:
        by = ["label"] if "label" in have and q.scalar("SELECT count(label) FROM images") else []
    for column in by:
        if column not in have or column in ("image_id", "path"):
            raise AuditError(f"unknown --by column {column!r}; the scan's image columns are "
                             + ", ".join(c for c in have if c not in ("image_id", "path")))
    skip = collapsed_ids(q)
    log.info(f"audit slices: reading the embeddings of {q.scan.root}")
    rows, k, scores = discover(q.scan, settings, skip)
    chosen = f"k={k}" + (f" (auto: the best silhouette, {scores.get(k)})" if scores else "")
    subs = int(rows.slice.max()) + 1 - k if len(rows) else 0
    log.info(f"audit slices: {int((rows.parent < 0).sum())} images in {chosen} slices"
             + (f" and {subs} sub-slices" if subs else ""))
    notes = []
    # The kind the scan's opinion made, else the first kind it holds rows of (a scan asked for probes later).
    held = q.kinds()
    kind = kind or (held_kind(q.scan.settings, KINDS) if held_kind(q.scan.settings, KINDS) in held or not held
                    else held[0])
    described = [stored_words(q, rows, kind, settings, words or word_filter())]
    if vocabulary is not None:
        described.append(vocabulary_words(rows, q.scan, *vocabulary))
    described = [d for d in described if len(d)]
    word_rows = (pd.concat(described, ignore_index=True) if described
                 else SLICE_WORDS.empty_table().to_pandas())[SLICE_WORDS.names]
    tests = skew_tests(q, rows, by, settings)
    issues = LABEL_ISSUES.empty_table().to_pandas()
    if labels is not None:
        issues, more = label_issues(q.scan, labels, settings, skip)
        notes += more
    counted = int(q.scalar("SELECT count(*) FROM images"))
    found = Slices(rows, word_rows, tests, issues, k, scores,
                   {**asdict(settings), "copies": copies, "kind": kind,
                    "vocabulary": len(vocabulary[0]) if vocabulary else 0},
                   list(by), labels, counted, notes)
    if store:
        save(q.scan, found)
    return found


def save(scan: Scan, found: Slices) -> bool:
    """Write scan-dir/slices/ whole; False where the scan directory cannot be written."""
    def write(tmp) -> None:
        for name, frame, schema in (("slices", found.slices, SLICES), ("words", found.words, SLICE_WORDS),
                                    ("tests", found.tests, SLICE_TESTS),
                                    ("label_issues", found.label_issues, LABEL_ISSUES)):
            pq.write_table(pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False),
                           tmp / FILES[name])
        meta = {"scan_state": scan_state(scan), **found.summary()}
        (tmp / SETTINGS_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")

    if replace_folder(scan.root, SLICES_FOLDER, write):
        return True
    log.info(f"audit: slices kept in memory only ({scan.root} cannot be written)")
    return False


def stored(scan: Scan) -> Slices | None:
    """The slices stored beside the scan, when computed from its current parts (else None)."""
    folder = scan.root / SLICES_FOLDER
    try:
        meta = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if meta.get("scan_state") != scan_state(scan):
        return None
    read = {name: pq.read_table(folder / f).to_pandas() for name, f in FILES.items()}
    return Slices(read["slices"], read["words"], read["tests"], read["label_issues"], int(meta["k"]),
                  {int(k): v for k, v in meta.get("silhouette", {}).items()}, meta.get("settings", {}),
                  meta.get("by", []), meta.get("labels"), int(meta.get("counted", 0)), meta.get("notes", []))


def slices_of(scan_dir: str | os.PathLike, by: list[str], labels: str | None = None) -> Slices:
    """The stored slices when current and they tested every column of `by` (and looked for label issues in
    `labels`); else found now with the defaults and stored."""
    found = stored(Scan(scan_dir))
    if found is not None and set(by) <= set(found.by) and (labels is None or found.labels == labels):
        return found
    if found is not None and set(by) <= set(found.by):
        # Only the label issues are missing: the slices stand, the probe runs with their settings.
        from audit.analysis.duplicates import collapsed_ids, open_query

        log.info(f"audit: looking for label issues in {labels!r} of {scan_dir} (stored in {SLICES_FOLDER}/)")
        known = {f.name for f in fields(SliceSettings)}
        settings = SliceSettings(**{k: v for k, v in found.settings.items() if k in known})
        q = open_query(scan_dir, found.settings.get("copies", COPIES))
        found.label_issues, notes = label_issues(q.scan, labels, settings, collapsed_ids(q))
        found.labels = labels
        found.notes = [n for n in found.notes if not n.startswith("label issues:")] + notes
        save(q.scan, found)
        return found
    log.info(f"audit: finding slices in {scan_dir} (stored in {SLICES_FOLDER}/; `audit slices` shows them)")
    want_by = sorted(set(by) | set(found.by if found is not None else []))
    return find_slices(scan_dir, by=want_by, labels=labels or (found.labels if found is not None else None))


def settings_with(**overrides) -> SliceSettings:
    return replace(SliceSettings(), **{k: v for k, v in overrides.items() if v is not None}).check()


__all__ = ["Slices", "SliceSettings", "find_slices", "label_issues", "slices_of", "stored"]
