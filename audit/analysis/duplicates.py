"""Copies in a scan: exact copies (equal decoded pixels), near copies (stored embeddings confirmed by perceptual
hashes), clusters that cannot chain, and leaks between splits or scans. Torch-free: stored rows only.

Two images are near copies when
    pHash distance <= same_hash_distance (direct or mirrored),
    or (pHash distance <= max_hash_distance and embedding cosine >= min_cosine),
    or embedding cosine >= tight_cosine.
The first clause is the photograph's own evidence where it is nearly certain (a few of 64 bits: a re-encode, a
resize, a grey or recoloured copy, a flip through the mirrored hash); the second holds a looser pHash match to
the embedding, so that two different scenes whose coarse greyscale layout happens to agree are not merged; the
third is CLIP's, which sees through the crops, rotations and overlays a 64-bit pHash misses. Candidates come from each image's nearest neighbours in both spaces (faiss), so the search
is linear in the number of images, not quadratic.

A cluster grows from a representative, the image with the most confirmed copies (ties: the smallest id), and
admits an image only if it is a copy of the representative itself, not merely of a member (the chaining guard):
the copies of one photograph (a crop, a rotation, a recoloured one: each a copy of the original, not always of
each other) stay together, while a chain of near neighbours (a burst of frames, a slow pan) is cut into pieces no
wider than two steps, and can never merge a dataset's worth of images into one "duplicate".
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from audit.analysis import COPIES, COPIES_MODES
from audit.errors import AuditError
from audit.store.layout import committed_parts, replace_folder
from audit.store.query import ScanQuery
from audit.store.reader import Scan
from audit.store.schema import DUPLICATES, DUPLICATES_FOLDER, FINGERPRINTS_FOLDER, LEAKS

log = logging.getLogger("audit.duplicates")

REPRESENTATIVE, EXACT, NEAR = "representative", "exact", "near"
NO_HASH = 64  # the distance of a pair where either image has no fingerprint: never close
# Below this many images the neighbours are found by exact search; above it by an inverted-file index whose
# recall of copy pairs bench/duplicates.py measures against exact search.
EXACT_SEARCH = 50_000
SETTINGS_FILE = "settings.json"
SAY_STAGES = 50_000  # from this many images on, the search says what it is doing (it takes a minute or more)
FILES = {"copies": "copies.parquet", "leaks": "leaks.parquet"}
# Models whose embeddings cannot tell two different images apart by a tight cosine (measured with
# bench/duplicates.py: distinct demo scenes with the same shape, colour and background reach cosine 0.9996 under
# audit-demo, and any two images 0.999 under the random audit-tiny): for them the pHash must confirm every pair.
NO_TIGHT_COSINE = frozenset({"audit-demo", "audit-tiny"})


@dataclass(frozen=True)
class CopySettings:
    """When two images are copies. max_hash_distance: imagededup's default for pHash (10 of 64 bits), which on
    scikit-image's photographs separated re-encoded, resized, recoloured and flipped copies (at most 10 bits)
    from different photographs (12 and more; bench/duplicates.py). min_cosine: imagededup's default for CNN
    embeddings (0.9). tight_cosine: from SemDeDup's range for CLIP ViT-B embeddings (duplicates within cosine
    distance 0.03); None turns the clause off. same_hash_distance: the pHash alone, where distinct photographs
    never came (bench/duplicates.py: the nearest pair of different images was 6 bits apart, and only between two
    synthetic scenes of one colour on one background)."""
    same_hash_distance: int = 4
    max_hash_distance: int = 10
    min_cosine: float = 0.90
    tight_cosine: float | None = 0.97
    neighbours: int = 16  # candidates per image in each space, itself included

    def check(self) -> CopySettings:
        for name in ("same_hash_distance", "max_hash_distance"):
            v = getattr(self, name)
            if not 0 <= v <= 64:
                raise AuditError(f"--{name.replace('_', '-')} is a number of bits from 0 to 64, not {v}")
        for name in ("min_cosine", "tight_cosine"):
            v = getattr(self, name)
            if v is not None and not -1 <= v <= 1:
                raise AuditError(f"--{name.replace('_', '-')} is a cosine between -1 and 1, not {v}")
        if self.neighbours < 2:
            raise AuditError(f"--neighbours must be at least 2, not {self.neighbours}")
        return self

    @classmethod
    def for_model(cls, model: str | None, **overrides) -> CopySettings:
        base = cls(tight_cosine=None) if model in NO_TIGHT_COSINE else cls()
        return replace(base, **{k: v for k, v in overrides.items() if v is not None}).check()


@dataclass
class Copies:
    """What `audit duplicates` found: one row per image in a cluster (DUPLICATES), leaks (LEAKS), and how."""
    copies: pd.DataFrame
    leaks: pd.DataFrame
    images: int  # images of the scan
    settings: dict
    notes: list[str] = field(default_factory=list)
    split_by: str | None = None
    against: list[str] = field(default_factory=list)

    @property
    def clusters(self) -> int:
        return int(self.copies.cluster.nunique()) if len(self.copies) else 0

    @property
    def collapsed(self) -> int:
        """Images that are not their cluster's representative: what collapsing removes (before groups)."""
        return int((self.copies.kind != REPRESENTATIVE).sum())

    @property
    def share(self) -> float:
        """The share of the scan's images that are copies of another image (collapsed / images)."""
        return self.collapsed / self.images if self.images else 0.0

    def cluster_sizes(self) -> pd.DataFrame:
        """cluster, representative, size, exact, near: largest first."""
        if not len(self.copies):
            return pd.DataFrame(columns=["cluster", "representative", "size", "exact", "near"])
        c = self.copies
        return (c.assign(exact=c.kind == EXACT, near=c.kind == NEAR)
                .groupby(["cluster", "representative"], as_index=False)
                .agg(size=("image_id", "size"), exact=("exact", "sum"), near=("near", "sum"))
                .sort_values(["size", "cluster"], ascending=[False, True], ignore_index=True))

    def leak_counts(self) -> pd.DataFrame:
        """side, other_side, images: the images of one side with a copy on the other."""
        if not len(self.leaks):
            return pd.DataFrame(columns=["side", "other_side", "images"])
        return (self.leaks.groupby(["side", "other_side"], as_index=False).image_id.nunique()
                .rename(columns={"image_id": "images"}))

    def summary(self) -> dict:
        return {"images": self.images, "clusters": self.clusters, "images_in_clusters": len(self.copies),
                "collapsed": self.collapsed, "share": round(self.share, 6),
                "largest": self.cluster_sizes().head(10).to_dict("records"),
                "leaks": self.leak_counts().to_dict("records"), "split_by": self.split_by,
                "against": self.against, "settings": self.settings, "notes": self.notes}


# ---- reading what a scan holds ----------------------------------------------------------------------------------

@dataclass
class Prints:
    """The fingerprints and normalised embeddings of a scan's images, sorted by id (so nothing depends on the
    order parts were written in)."""
    ids: np.ndarray  # object array of str
    sha: np.ndarray  # object array of str or None
    phash: np.ndarray  # int64; meaningless where has_hash is False
    mirror: np.ndarray
    has_hash: np.ndarray  # bool
    vectors: np.ndarray | None  # [n, D] float16, unit length (half the memory; the stored precision); None without
    extra: pd.DataFrame | None = None  # the images table's other columns, when asked for

    def __len__(self) -> int:
        return len(self.ids)


def read_prints(scan: Scan, columns: tuple[str, ...] = (), images: pa.Table | None = None) -> Prints:
    """`images`: the scan's images table when the caller has read it already."""
    images = scan.table("images") if images is None else images
    images = images.select(["image_id", "pixel_sha256", "phash", "phash_mirror", *columns]).to_pandas()
    images = images.sort_values("image_id", ignore_index=True)
    taken_later = scan.root / FINGERPRINTS_FOLDER / "fingerprints.parquet"
    if taken_later.exists() and images.phash.isna().any():  # an older scan, fingerprinted by `audit duplicates`
        later = pq.read_table(taken_later).to_pandas().set_index("image_id")
        for name in ("pixel_sha256", "phash", "phash_mirror"):
            images[name] = images[name].fillna(images.image_id.map(later[name]))
    # No pHash: an image without structure (sources.fingerprint.FLAT), or one scanned before fingerprints.
    has = images.phash.notna().to_numpy()
    ph = images.phash.fillna(0).astype(np.int64).to_numpy()
    mi = images.phash_mirror.fillna(0).astype(np.int64).to_numpy()
    sha = images.pixel_sha256.astype(object).where(images.pixel_sha256.notna(), None).to_numpy()
    vectors = None
    if scan.files("embeddings"):
        pos = pd.Index(images.image_id)
        vectors = np.zeros((len(images), 0), np.float16)
        seen = np.zeros(len(images), bool)
        for part_ids, matrix in scan.embedding_parts():
            if vectors.shape[1] == 0:
                vectors = np.zeros((len(images), matrix.shape[1]), np.float16)
            at = pos.get_indexer(part_ids)
            ok = at >= 0
            norms = np.linalg.norm(matrix, axis=1, keepdims=True)
            vectors[at[ok]] = (matrix / np.where(norms > 0, norms, 1))[ok]
            seen[at[ok]] = True
        if not seen.all():
            vectors = None  # a scan resumed with --embeddings none in between: near copies need every vector
    extra = images[list(columns)] if columns else None
    return Prints(images.image_id.to_numpy(dtype=object), sha, ph, mi, has, vectors, extra)


def hamming(a, b) -> np.ndarray:
    """Bits that differ between stored hashes (signed 64-bit integers holding the bits), element by element."""
    x = np.bitwise_xor(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)).view(np.uint64)
    return np.bitwise_count(x).astype(np.int16)


# ---- pairs ------------------------------------------------------------------------------------------------------

def _hash_distance(p: Prints, i: np.ndarray, q: Prints, j: np.ndarray) -> np.ndarray:
    d = np.minimum(hamming(p.phash[i], q.phash[j]), hamming(p.phash[i], q.mirror[j]))
    return np.where(p.has_hash[i] & q.has_hash[j], d, NO_HASH).astype(np.int16)


def _cosine(p: Prints, i: np.ndarray, q: Prints, j: np.ndarray) -> np.ndarray:
    if p.vectors is None or q.vectors is None or p.vectors.shape[1] != q.vectors.shape[1]:
        return np.full(len(i), np.nan, np.float32)  # no embeddings, or two models': the hashes alone decide
    out = np.empty(len(i), np.float32)
    for lo in range(0, len(i), 65536):
        a = p.vectors[i[lo:lo + 65536]].astype(np.float32)
        b = q.vectors[j[lo:lo + 65536]].astype(np.float32)
        out[lo:lo + 65536] = np.einsum("nd,nd->n", a, b)
    return out


def is_copy(cos: np.ndarray, dist: np.ndarray, s: CopySettings) -> np.ndarray:
    """The rule of the module docstring, for arrays of pairs (a NaN cosine: no embeddings, never close)."""
    with np.errstate(invalid="ignore"):
        near = (dist <= s.same_hash_distance) | ((dist <= s.max_hash_distance) & (cos >= s.min_cosine))
        if s.tight_cosine is not None:
            near |= cos >= s.tight_cosine
    return near


def _float_index(vectors: np.ndarray, exact: bool):
    import faiss

    d = vectors.shape[1]
    if exact:
        index = faiss.IndexFlatIP(d)
    else:
        # An inverted file over about 4·sqrt(n) cells searched in NPROBE of them, each vector a 64-byte product
        # code: the candidates' cosines are computed again from the vectors, so coarse distances only choose
        # them. At a million images this searched four times as fast as float16 vectors (bench/duplicates.py
        # scale) and holds 64 MB instead of a gigabyte; trained on 40 points a cell (faiss warns below 39).
        cells = int(4 * np.sqrt(len(vectors)))
        parts = max(m for m in range(1, PQ_BYTES + 1) if d % m == 0)
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, cells, parts, 8, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        sample = vectors[np.sort(rng.choice(len(vectors), min(len(vectors), 40 * cells), replace=False))]
        index.train(sample.astype(np.float32))
        index.nprobe = NPROBE
    for lo in range(0, len(vectors), 65536):
        index.add(vectors[lo:lo + 65536].astype(np.float32))
    return index


NPROBE = 16
PQ_BYTES = 64  # sub-quantisers of the product code, at most (as many as divide the dimension)


def _binary_index(codes: np.ndarray, exact: bool):
    import faiss

    index = faiss.IndexBinaryFlat(64) if exact else faiss.IndexBinaryHNSW(64, 16)
    index.add(codes)
    return index


def _codes(h: np.ndarray) -> np.ndarray:
    """int64 hashes as faiss's binary codes: 8 bytes a row, most significant first (the order bits are hashed in
    does not change a Hamming distance)."""
    return np.ascontiguousarray(h.astype(">i8").view(np.uint8).reshape(-1, 8))


def copy_pairs(p: Prints, q: Prints, settings: CopySettings, same: bool
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The pairs (i in p, j in q) that are copies, with their cosine and hash distance, among each p image's
    `neighbours` nearest q images by embedding and by pHash (and mirrored pHash); with `same` (q is p) each
    unordered pair once and no image with itself. Candidates are confirmed a block of queries at a time, so memory
    holds the copies, not every candidate (48 million at a million images)."""
    k = min(settings.neighbours, len(q))
    exact = len(q) <= EXACT_SEARCH
    searches = []
    if p.vectors is not None and q.vectors is not None and p.vectors.shape[1] == q.vectors.shape[1]:
        index = _float_index(q.vectors, exact)
        searches.append(lambda lo, hi, index=index: index.search(p.vectors[lo:hi].astype(np.float32), k)[1])
    if p.has_hash.any() and q.has_hash.any():
        index = _binary_index(_codes(q.phash), exact)
        for query in (p.phash, p.mirror):
            searches.append(lambda lo, hi, index=index, query=query: index.search(_codes(query[lo:hi]), k)[1])
    found = []
    for lo in range(0, len(p), QUERY_BLOCK):
        hi = min(lo + QUERY_BLOCK, len(p))
        nn = np.concatenate([search(lo, hi) for search in searches], axis=1) if searches else np.zeros((0, 0))
        i = np.repeat(np.arange(lo, hi), nn.shape[1] if nn.size else 0)
        j = nn.ravel().astype(np.int64)
        keep = j >= 0
        i, j = i[keep], j[keep]
        if same:
            i, j = np.minimum(i, j), np.maximum(i, j)
            keep = i != j
            i, j = i[keep], j[keep]
        if len(i):
            pairs = np.unique(np.stack([i, j], 1), axis=0)
            i, j = pairs[:, 0], pairs[:, 1]
            cos, dist = _cosine(p, i, q, j), _hash_distance(p, i, q, j)
            ok = is_copy(cos, dist, settings)
            found.append((i[ok], j[ok], cos[ok], dist[ok]))
    if not found:
        return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int16))
    i, j, cos, dist = (np.concatenate(x) for x in zip(*found, strict=True))
    if same:  # a pair found from both ends, in two blocks
        _, first = np.unique(np.stack([i, j], 1), axis=0, return_index=True)
        i, j, cos, dist = i[first], j[first], cos[first], dist[first]
    return i, j, cos, dist


QUERY_BLOCK = 32768


# ---- clusters ---------------------------------------------------------------------------------------------------

def _exact_groups(p: Prints) -> tuple[np.ndarray, np.ndarray]:
    """Each image's node (images with equal pixels share one) and each node's first image (the smallest id)."""
    key = np.where(pd.isna(p.sha), None, p.sha)
    codes, _ = pd.factorize(pd.Series(key), use_na_sentinel=True)
    codes = np.asarray(codes, np.int64)
    alone = codes < 0  # no fingerprint: its own node
    codes[alone] = codes.max(initial=-1) + 1 + np.arange(alone.sum())
    # Renumber nodes by their first image (ids are sorted, so the first occurrence is the smallest id).
    _, first, node = np.unique(codes, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[node.reshape(-1)], first[order]


def find_copies(p: Prints, settings: CopySettings) -> pd.DataFrame:
    """The duplicates table (DUPLICATES) of one scan's prints."""
    node, first = _exact_groups(p)
    if len(first) == len(p):  # no exact copies: every image is its own node (and no copy of its vectors is made)
        reps = p
    else:
        reps = Prints(p.ids[first], p.sha[first], p.phash[first], p.mirror[first], p.has_hash[first],
                      None if p.vectors is None else p.vectors[first])
    if p.vectors is not None:
        i, j, cos, _ = copy_pairs(reps, reps, settings, same=True)
    else:  # near copies need embeddings: a pHash alone would call too many different pictures copies
        i, j, cos = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    cluster_of, leaders = _clusters(reps, settings, i, j, cos)
    sizes = np.bincount(node, minlength=len(first))
    clustered = (cluster_of >= 0) | (sizes > 1)
    # A node with exact copies only is a cluster of its own, represented by its first image.
    lone = np.flatnonzero((cluster_of < 0) & (sizes > 1))
    cluster_of[lone] = len(leaders) + np.arange(len(lone))
    leaders = np.concatenate([leaders, lone]).astype(np.int64)
    members = np.flatnonzero(clustered[node])
    if not len(members):
        return DUPLICATES.empty_table().to_pandas()
    c = cluster_of[node[members]]
    rep = leaders[c]
    rep_image = first[rep]
    kind = np.where(members == rep_image, REPRESENTATIVE, np.where(node[members] == rep, EXACT, NEAR))
    sim = _cosine(p, members, p, rep_image)
    sim[kind != NEAR] = np.where(p.vectors is None, np.nan, 1.0)
    dist = _hash_distance(p, members, p, rep_image)
    out = pd.DataFrame({"image_id": p.ids[members], "cluster": c, "representative": p.ids[rep_image],
                        "kind": kind, "similarity": sim, "hash_distance": dist})
    out.loc[~p.has_hash[members] | ~p.has_hash[rep_image], "hash_distance"] = pd.NA
    return _number(out)


def _number(out: pd.DataFrame) -> pd.DataFrame:
    """Clusters numbered 0.. from the largest (ties by representative), rows by cluster then id."""
    size = out.groupby("cluster").image_id.transform("size")
    order = (pd.DataFrame({"c": out.cluster, "size": size, "rep": out.representative})
             .drop_duplicates("c").sort_values(["size", "rep"], ascending=[False, True]))
    out["cluster"] = out.cluster.map(dict(zip(order.c, range(len(order)), strict=True))).astype(np.int32)
    out["hash_distance"] = out.hash_distance.astype("Int16")
    return out.sort_values(["cluster", "image_id"], ignore_index=True)


def _clusters(p: Prints, s: CopySettings, i: np.ndarray, j: np.ndarray, cos: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """Each node's cluster (-1: none) from the confirmed pairs: a representative (most confirmed copies, ties by
    id) takes, best first, its copies and its copies' copies that are copies of it too (a copy's copies are
    looked at because the neighbour search lists at most `neighbours` per image: a cluster can outgrow that).
    Returns each node's cluster and each cluster's representative node."""
    n = len(p)
    cluster = np.full(n, -1, np.int64)
    chosen: list[int] = []
    if not len(i):
        return cluster, np.zeros(0, np.int64)
    a, b = np.concatenate([i, j]), np.concatenate([j, i])
    w = np.concatenate([cos, cos])
    order = np.lexsort((-np.nan_to_num(w, nan=-2), a))
    a, b, w = a[order], b[order], w[order]
    start = np.searchsorted(a, np.arange(n + 1))
    degree = np.diff(start)
    leaders = np.lexsort((np.arange(n), -degree))  # ids are sorted: the index breaks ties by id
    next_id = 0
    for leader in leaders[:np.count_nonzero(degree)]:
        if cluster[leader] >= 0:
            continue
        # Its confirmed copies (best first), then theirs, each tested against the leader itself.
        queue = [x for x in b[start[leader]:start[leader + 1]] if cluster[x] < 0]
        seen = {leader, *queue}
        members = [leader] + queue
        at = 1
        while at < len(members):
            x = members[at]
            at += 1
            more = np.array([y for y in b[start[x]:start[x + 1]] if y not in seen and cluster[y] < 0], np.int64)
            seen.update(more.tolist())
            if len(more):
                lead = np.full(len(more), leader)
                ok = is_copy(_cosine(p, more, p, lead), _hash_distance(p, more, p, lead), s)
                members += more[ok].tolist()
        if len(members) > 1:
            cluster[np.array(members)] = next_id
            chosen.append(int(leader))
            next_id += 1
    return cluster, np.array(chosen, np.int64)


# ---- leaks ------------------------------------------------------------------------------------------------------

def split_leaks(copies: pd.DataFrame, splits: pd.Series) -> pd.DataFrame:
    """Every image of a cluster with a member under another value of the split column, once per other value
    (its copy there: the representative if it is there, else the smallest id)."""
    if not len(copies):
        return LEAKS.empty_table().to_pandas()
    c = copies.assign(side=copies.image_id.map(splits).fillna("(missing)").astype(str))
    spanning = c.groupby("cluster").side.transform("nunique") > 1
    c = c[spanning]
    rows = []
    for _, members in c.groupby("cluster", sort=True):
        for side, there in members.groupby("side", sort=True):
            pick = there.sort_values(["kind", "image_id"], key=lambda s: s != REPRESENTATIVE if s.name == "kind"
                                     else s).iloc[0]
            for r in members[members.side != side].itertuples():
                rows.append((r.image_id, r.side, side, pick.image_id, EXACT if r.kind != NEAR and pick.kind != NEAR
                             else NEAR, np.nan, pd.NA))
    out = pd.DataFrame(rows, columns=LEAKS.names)
    return out.sort_values(["side", "other_side", "image_id"], ignore_index=True)


def scan_leaks(p: Prints, other: Prints, where: str, settings: CopySettings) -> pd.DataFrame:
    """Each image of p with a copy in another scan: exact by pixels, else its closest confirmed near copy."""
    by_sha = pd.Series(np.arange(len(other)), index=other.sha).groupby(level=0).first() if len(other) else None
    exact = np.full(len(p), -1, np.int64)
    if by_sha is not None:
        known = pd.notna(p.sha)
        hit = pd.Index(by_sha.index).get_indexer(p.sha[known])
        exact[np.flatnonzero(known)[hit >= 0]] = by_sha.to_numpy()[hit[hit >= 0]]
    i, j, cos, dist = copy_pairs(p, other, settings, same=False)
    ok = exact[i] < 0
    near = pd.DataFrame({"i": i[ok], "j": j[ok], "cos": cos[ok], "d": dist[ok]}).sort_values(
        ["i", "cos", "j"], ascending=[True, False, True]).drop_duplicates("i")
    x = np.flatnonzero(exact >= 0)
    parts = [(x, exact[x], EXACT, np.full(len(x), 1.0 if p.vectors is not None else np.nan),
              _hash_distance(p, x, other, exact[x])),
             (near.i.to_numpy(), near.j.to_numpy(), NEAR, near.cos.to_numpy(), near.d.to_numpy())]
    out = pd.concat([pd.DataFrame({"image_id": p.ids[a], "side": "this scan", "other_side": where,
                                   "other_image_id": other.ids[b], "kind": kind, "similarity": sim,
                                   "hash_distance": d}) for a, b, kind, sim, d in parts], ignore_index=True)
    out["hash_distance"] = out.hash_distance.astype("Int16").mask(out.hash_distance == NO_HASH)
    return out.sort_values("image_id", ignore_index=True)


# ---- the whole job, stored beside the scan ----------------------------------------------------------------------

def scan_state(scan: Scan) -> str:
    """What the stored copies were computed from: the committed parts of the scan (a resume adds parts)."""
    return ",".join(p.name for p in committed_parts(scan.root, "images"))


def notes_for(p: Prints) -> list[str]:
    notes = []
    if pd.isna(p.sha).any():
        missing = int(pd.isna(p.sha).sum())
        notes.append(f"{missing} of {len(p)} images have no fingerprints (scanned before audit stored them, schema "
                     "6, and not readable again by `audit duplicates`): exact copies among them are not found and "
                     "their near copies are confirmed by the tight cosine alone; rescan with --overwrite to "
                     "fingerprint them")
    if p.vectors is None:
        notes.append("the scan keeps no embeddings (--embeddings none): only exact copies are found; near copies "
                     "need embeddings (rescan without --embeddings none)")
    return notes


def duplicates(scan_dir: str | os.PathLike, *, split_by: str | None = None, against: list[str] | None = None,
               settings: CopySettings | None = None, store: bool = True) -> Copies:
    """Find the copies in a scan (and leaks across `split_by` values or `against` other scans); store them in
    scan-dir/duplicates/ unless `store` is False or the folder cannot be written."""
    scan = Scan(scan_dir)
    settings = settings or CopySettings.for_model(scan.settings.get("model"))
    images = scan.table("images")
    columns = () if split_by is None else (check_split_column(images, split_by, "--split-by column"),)
    others = [Scan(other) for other in against or []]  # a missing scan is said before the work, not after
    say = log.info if images.num_rows >= SAY_STAGES else log.debug
    say(f"audit duplicates: reading the fingerprints and embeddings of {scan.root}")
    p = read_prints(scan, columns, images)
    say(f"audit duplicates: {len(p)} images; searching each one's {settings.neighbours} nearest neighbours "
        f"({'exact search' if len(p) <= EXACT_SEARCH else 'an inverted-file index'})")
    copies = find_copies(p, settings)
    say(f"audit duplicates: {len(copies)} images in clusters of copies")
    leak_frames, found_notes = [], []
    if split_by is not None:
        leak_frames.append(split_leaks(copies, pd.Series(p.extra[split_by].to_numpy(), index=p.ids)))
    for other, other_scan in zip(against or [], others, strict=True):
        if other_scan.settings.get("model") != scan.settings.get("model"):
            found_notes.append(f"{other} was scanned with {other_scan.settings.get('model')}, this scan with "
                               f"{scan.settings.get('model')}: copies there are found by their pixels and pHashes "
                               "alone")
        say(f"audit duplicates: looking for this scan's images in {other}")
        leak_frames.append(scan_leaks(p, read_prints(other_scan), str(other), settings))
    leaks = pd.concat(leak_frames, ignore_index=True) if leak_frames else LEAKS.empty_table().to_pandas()
    found = Copies(copies, leaks, len(p), asdict(settings), notes_for(p) + found_notes, split_by,
                   [str(a) for a in against or []])
    if store:
        save(scan, found)
    return found


def save(scan: Scan, found: Copies) -> bool:
    """Write scan-dir/duplicates/ whole; False where the scan directory cannot be written (a read-only
    snapshot): the caller keeps the result in memory."""
    def write(tmp: Path) -> None:
        pq.write_table(pa.Table.from_pandas(found.copies, schema=DUPLICATES, preserve_index=False),
                       tmp / FILES["copies"])
        pq.write_table(pa.Table.from_pandas(found.leaks, schema=LEAKS, preserve_index=False), tmp / FILES["leaks"])
        meta = {"scan_state": scan_state(scan), **found.summary()}
        (tmp / SETTINGS_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")

    if replace_folder(scan.root, DUPLICATES_FOLDER, write):
        return True
    log.info(f"audit: copies kept in memory only ({scan.root} cannot be written)")
    return False


def stored(scan: Scan) -> Copies | None:
    """The copies stored beside the scan, when they were computed from its current parts (else None)."""
    folder = scan.root / DUPLICATES_FOLDER
    try:
        meta = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if meta.get("scan_state") != scan_state(scan):
        return None
    copies = pq.read_table(folder / FILES["copies"]).to_pandas()
    leaks = pq.read_table(folder / FILES["leaks"]).to_pandas()
    return Copies(copies, leaks, int(meta["images"]), meta.get("settings", {}), meta.get("notes", []),
                  meta.get("split_by"), meta.get("against", []))


_MEMORY: dict[tuple[str, str], Copies] = {}


def copies_of(scan: Scan) -> Copies:
    """The scan's copies for the statistics: stored ones when current, else computed now (with a line saying so)
    and stored beside the scan, or kept in memory for this process where the scan is read-only. A scan made by
    `audit ask` holds its source's images: it counts them as its source does."""
    if scan.asked_of and (Path(scan.asked_of) / "scan.json").exists():
        return copies_of(Scan(scan.asked_of))
    found = stored(scan)
    if found is not None:
        return found
    key = (str(scan.root.resolve()), scan_state(scan))
    if key not in _MEMORY:
        log.info(f"audit: finding copies in {scan.root} for the first time (stored in {DUPLICATES_FOLDER}/; "
                 "`audit duplicates` shows them)")
        _MEMORY[key] = duplicates(scan.root)
    return _MEMORY[key]


def check_split_column(images: pa.Table, column: str, what: str) -> str:
    """`column` if the images table has it; else an AuditError that lists the columns it has."""
    if column not in images.column_names:
        raise AuditError(f"unknown {what} {column!r}; the scan's image columns are "
                         + ", ".join(c for c in images.column_names if c not in ("image_id", "path")))
    return column


def leaks_of(scan: Scan, split_by: str | None, against: list[str]) -> pd.DataFrame:
    """The leaks (LEAKS rows) of a scan across the values of `split_by` and into each scan of `against`, from
    its copies (stored or computed) and the other scans' stored rows."""
    frames = []
    if split_by is not None:
        images = scan.table("images")
        check_split_column(images, split_by, "split column")
        splits = images.select(["image_id", split_by]).to_pandas().set_index("image_id")[split_by]
        frames.append(split_leaks(copies_of(scan).copies, splits))
    if against:
        p = read_prints(scan)
        settings = CopySettings.for_model(scan.settings.get("model"))
        frames += [scan_leaks(p, read_prints(Scan(other)), str(other), settings) for other in against]
    return pd.concat(frames, ignore_index=True) if frames else LEAKS.empty_table().to_pandas()


def check_mode(copies: str) -> str:
    if copies not in COPIES_MODES:
        raise AuditError(f"--copies is {' or '.join(COPIES_MODES)}, not {copies!r}")
    return copies


def collapsed_ids(q: ScanQuery) -> frozenset[str]:
    """The images a query with copies collapsed leaves out of a statistic without groups."""
    found = q.copies
    if found is None or not len(found.copies):
        return frozenset()
    c = found.copies
    return frozenset(c.image_id[c.image_id != c.representative])


def members_table(found: Copies) -> pa.Table:
    """What ScanQuery needs to count a cluster once: image_id, cluster, representative."""
    return pa.Table.from_pandas(found.copies[["image_id", "cluster", "representative"]], preserve_index=False)


def open_query(scan_dir: str | os.PathLike, copies: str = COPIES, columns: tuple[str, ...] | list[str] = ()
               ) -> ScanQuery:
    """A ScanQuery whose statistics count each cluster of copies once (copies="collapse") or every image
    ("keep"); its `copies` is what was found (None with "keep"). The grouping `columns` are checked first, so a
    mistake is said before the copies are looked for."""
    check_mode(copies)
    q = ScanQuery.open(scan_dir)
    for column in columns:
        q.check_group_column(column)
    return collapse(q, copies)


def collapse(q: ScanQuery, copies: str = COPIES) -> ScanQuery:
    """Make a ScanQuery count each cluster of copies once (copies="collapse"; "keep" leaves it as it is)."""
    if check_mode(copies) == "collapse":
        q.copies = copies_of(q.scan)
        q.collapse_copies(members_table(q.copies))
    return q


def header(found: Copies | None, mode: str) -> str:
    """The sentence every output gives on how copies were counted."""
    if mode == "keep" or found is None:
        return "copies: kept (every image counts, copies included)"
    if not found.collapsed:
        return f"copies: collapsed (no copies found among {found.images} images)"
    clusters = f"{found.clusters} cluster" + ("s" if found.clusters != 1 else "")
    return (f"copies: collapsed ({found.collapsed} of {found.images} images are copies in {clusters}; each cluster "
            "counts once per group)")
