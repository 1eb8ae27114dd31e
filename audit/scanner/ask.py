"""`audit ask`: new questions answered from a finished scan's stored embeddings, without reading an image.

A second pass: it loads the scan's model (for its text tower), streams the source scan's embeddings a bounded
number of images at a time (memory flat in the number of images) and writes a scan directory of its own (with
--heatmaps, and only then, it reads the images again for the asked words' relevancy maps): the new word rows (probe
words scored in prompt templates, with the function the scan itself scores them with: opinions.probes), and of
each image only what the store requires (id, path, size): readers take its images and errors rows from the
source scan (store.reader, "images": "referenced" in scan.json). `audit report`, `check`, `diff` and the Python API read it like
any scan. It names its source and the source's fingerprint (its committed part files), and refuses a source
that changed since.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import itertools
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from audit.errors import AuditError
from audit.scanner.opinions.probes import ProbeOpinion, probe_cosines
from audit.store.layout import committed_parts
from audit.store.reader import Scan
from audit.store.schema import PROBE, embedding_values

log = logging.getLogger("audit.ask")
# The source's settings an asked scan keeps: whatever shaped its model and where its maps look.
KEPT = ("model", "pretrained", "weights_sha256", "seed", "start_layer", "start_layer_text", "heatmap",
        "occlusion_window", "legrad_layers", "precision")
HEATMAP_IMAGES = 16  # images read again and mapped together with --heatmaps
IMAGES_PER_UNIT = 16_384  # source images read (and written as one part) at a time, at most
ROWS_PER_UNIT = 2_000_000  # and fewer with many words: a unit's rows (images times words) are held twice (one written)


def fingerprint(root: Path) -> str:
    """The source scan's committed part files (table, name, size): a scan is never edited, only added to, so a
    resume, a retry or an overwrite changes this."""
    digest = hashlib.sha256()
    for table in ("images", "embeddings", "errors"):
        for p in committed_parts(root, table):
            digest.update(f"{table}/{p.name}:{p.stat().st_size}\n".encode())
    return digest.hexdigest()


def _model(scan: Scan, pretrained: str | None, device: str):
    from audit.scanner.encoders import Towers
    from audit.scanner.verify import scan_model

    loaded = scan_model(scan, pretrained, device)
    return Towers(loaded), loaded.preprocess


class _Probes:
    """Probe words in prompt templates: the scan's probe opinion planned, recorded and built as a scan does it,
    scoring stored embeddings instead of the image tower's."""

    def __init__(self, model: str, words, words_file, templates: str | None, heatmaps: bool = False):
        from audit.scanner.options import ScanOptions

        self.opts = ScanOptions(model=model, words=words, words_file=words_file, templates=templates)
        from audit.scanner.probes import HEATMAP_COST, MAX_ASKED, MAX_PROBES

        if heatmaps:
            limit = dict(limit=MAX_PROBES, why=f"at most {MAX_PROBES} with --heatmaps ({HEATMAP_COST}); without "
                         f"--heatmaps a word costs a row of a matrix product, and up to {MAX_ASKED} may be asked")
        else:
            limit = dict(limit=MAX_ASKED, why=f"at most {MAX_ASKED} (each adds a row per image to the answers)")
        self.plan = ProbeOpinion.plan(self.opts, **limit)
        self.words = self.plan[0]
        if not self.words:
            raise AuditError("audit ask needs words to score: pass --words or --words-file")
        self.heatmaps = heatmaps
        self.unreadable = 0
        self.refer = True  # store each image's id, path and size only (run_ask: False for an older asked scan)

    def rows_per_image(self) -> int:
        return len(self.words)

    def settings(self) -> dict:
        return {"opinions": ["probes"], **ProbeOpinion.settings(self.opts, self.plan),
                **({"probe_heatmaps": True} if self.heatmaps else {})}

    def build(self, towers, source: Scan, preprocess: dict) -> None:
        self.texts = ProbeOpinion.build(self.opts, towers, self.plan).texts.cpu()
        if self.heatmaps:
            from audit.scanner.memory import relevancy_chunk
            from audit.scanner.relevancy import check_method
            from audit.scanner.verify import method_params, scan_method
            from audit.sources.access import SourceImages

            self.towers, self.preprocess = towers, preprocess
            self.access = SourceImages(source.config.get("source"))  # the images, read again by their keys
            self.method = scan_method(source)
            self.params = method_params(source.settings)[self.method]
            check_method(towers, self.method, self.params)
            self.chunk = relevancy_chunk(towers, towers.device)
            # The scan's own arithmetic, so an asked word's heatmap is drawn as the scan would have drawn it.
            self.precision = source.settings.get("precision", "float32")

    def answer(self, images: pa.Table, embeddings: np.ndarray) -> dict[str, pa.Table]:
        cos = probe_cosines(torch.from_numpy(embeddings), self.texts)
        out = {"images": _referring(images) if self.refer else images,
               "tokens": _token_table(images["image_id"], self.words, cos)}
        maps = self._maps(images) if self.heatmaps else None
        if maps is not None:
            out["heatmaps"] = maps
        return out

    def _maps(self, images: pa.Table) -> pa.Table | None:
        """Relevancy maps of every asked word on the images (read again, HEATMAP_IMAGES at a time), as the scan
        draws them: the bare word, the scan's method and settings. An image that cannot be read gets none."""
        from audit.scanner.device import autocast
        from audit.scanner.heatmap_stats import heatmap_columns
        from audit.scanner.loader import to_model_input
        from audit.scanner.relevancy import relevancy
        from audit.sources.access import decode_fetched
        from audit.sources.decode import DecodeError, box_in_frame

        mean = np.asarray(self.preprocess["mean"], dtype=np.float32)
        std = np.asarray(self.preprocess["std"], dtype=np.float32)
        rows = images.select(["image_id", "path", "x0", "y0", "x1", "y1"]).to_pylist()
        words = list(self.words)
        tables = []
        # Read from the source a block at a time (a shard streamed once for many images), mapped 16 at a time.
        fetched = self.access.stream((r["image_id"], r["path"]) for r in rows)
        for lo in range(0, len(rows), HEATMAP_IMAGES):
            ids, pixels, boxes = [], [], []
            for r, (_, image) in zip(rows[lo:lo + HEATMAP_IMAGES], itertools.islice(fetched, HEATMAP_IMAGES),
                                     strict=True):
                try:
                    d = decode_fetched(image, self.preprocess)
                except (DecodeError, OSError) as e:  # moved or changed since the scan: said once
                    if not self.unreadable:
                        log.warning(f"audit ask: cannot read {r['path']} again for its heatmaps ({e}); images that "
                                    "cannot be read get none")
                    self.unreadable += 1
                    continue
                box = tuple(r[c] for c in ("x0", "y0", "x1", "y1"))
                ids.append(r["image_id"])
                pixels.append(to_model_input(d.pixels, mean, std))
                boxes.append(box_in_frame(None if any(v is None or v != v for v in box) else box, d.frame))
            if not ids:
                continue
            pair_image = torch.arange(len(ids)).repeat_interleave(len(words))
            with autocast(self.towers.device, self.precision):
                rel = relevancy(self.towers, torch.stack(pixels).to(self.towers.device), pair_image,
                                words * len(ids), self.method, self.chunk, **self.params)
            tables.append(pa.table(heatmap_columns([i for i in ids for _ in words], [PROBE] * len(pair_image),
                                                   words * len(ids), rel, np.repeat(np.array(boxes), len(words),
                                                                                    axis=0), self.towers.grid_size)))
        return pa.concat_tables(tables) if tables else None


class _Concepts:
    """The concept decomposition with other settings, as the scan's concept opinion makes it (no heatmaps: those
    need the images). Centred by the source scan's own image mean when it has one (--concept-mean SOURCE)."""

    def __init__(self, root: Path, source: Scan, vocabulary, concept_l1, concepts_per_image, concept_mean):
        from audit.scanner.opinions.concepts import ConceptOpinion
        from audit.scanner.options import ScanOptions

        model = source.settings["model"]
        if concept_mean is None and source.config.get("concept_mean"):
            concept_mean = str(root)
        self.opts = ScanOptions(model=model, opinion="concepts", vocabulary=vocabulary, concept_l1=concept_l1,
                                concepts_per_image=concepts_per_image, concept_heatmaps=0,
                                concept_mean=concept_mean).with_model_defaults()
        self.opts.check()
        self.method = ConceptOpinion
        self.plan = ConceptOpinion.plan(self.opts)
        self.root = root
        self.refer = True  # as _Probes.refer

    def rows_per_image(self) -> int:
        return self.opts.concepts_per_image

    def settings(self) -> dict:
        return {"opinions": ["concepts"], **self.method.settings(self.opts, self.plan)}

    def build(self, towers, source: Scan, preprocess: dict) -> None:
        import dataclasses

        if self.plan.mean is None:  # "dataset": the mean of every stored embedding, normalised as the scan does
            self.plan = dataclasses.replace(self.plan, mean=_stored_mean(self.root))
        self.opinion = self.method.build(self.opts, towers, self.plan)
        self.towers = towers

    def answer(self, images: pa.Table, embeddings: np.ndarray) -> dict[str, pa.Table]:
        from audit.scanner.opinions.base import OpinionBatch, token_columns

        batch = OpinionBatch(self.towers, None, None, torch.from_numpy(embeddings).to(self.towers.device))
        found = self.opinion.rows(batch)
        rows = [(image_id, w) for image_id, ws in zip(images["image_id"].to_pylist(), found.words, strict=True)
                for w in ws]
        words = [w for _, w in rows]
        tokens = pa.table(token_columns([i for i, _ in rows], words, [w["word_cosine"] for w in words]))
        fit = pa.array(found.image_columns["concept_cosine"], pa.float32())
        if not self.refer:  # an asked scan begun by an audit that copied its source's images rows
            return {"images": images.set_column(images.schema.get_field_index("concept_cosine"), "concept_cosine",
                                                fit), "tokens": tokens}
        return {"images": _referring(images).append_column("concept_cosine", fit), "tokens": tokens}


def _referring(images: pa.Table) -> pa.Table:
    """The rows an asked scan stores of its source's images: what the store requires of a row (its id, path and
    size) and nothing more. Readers take every other column from the source scan itself (store.reader), so the
    labels, boxes, metadata and fingerprints are not copied."""
    return images.select(["image_id", "path", "width", "height"])


def _stored_mean(root: Path):
    from audit.scanner.concepts import ImageMean

    total, n = None, 0
    for _, emb in Scan(root).embedding_parts():
        part = (emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)).sum(0, dtype=np.float64)
        total = part if total is None else total + part
        n += len(emb)
    return ImageMean((total / n).astype(np.float32), "dataset", n)


def run_ask(source_dir: str | os.PathLike, out: str | os.PathLike, *, words=(), words_file=None,
            templates: str | None = None, heatmaps: bool = False, opinion: str = "probes",
            vocabulary: str | None = None,
            concept_l1: float | None = None, concepts_per_image: int = 10, concept_mean: str | None = None,
            pretrained: str | None = None, device: str = "auto", overwrite: bool = False,
            quiet: bool = False) -> Scan:
    """Answer a question of every image of a finished scan from its stored embeddings, into the scan directory
    `out` (see the module's docstring); returns it. `opinion`: probes (the words, in templates; with `heatmaps`
    their relevancy maps too, reading the images again) or concepts (the decomposition with the given
    vocabulary, penalty and count)."""
    from audit.scanner.progress import Progress, waited
    from audit.store.writer import ScanWriter

    start = time.perf_counter()
    import audit.scanner.models  # noqa: F401 - open_clip: seconds to import, counted as loading the model

    library = time.perf_counter() - start
    root = Path(source_dir).resolve()
    source = Scan(root)
    if source.asked_of is not None:
        raise AuditError(f"{root} was itself made by `audit ask` and keeps no embeddings; ask its source, "
                         f"{source.asked_of}")
    if Path(out).resolve() == root:
        raise AuditError("--out is the source scan itself; ask into a directory of its own")
    settings = source.settings
    if opinion == "probes":
        question = _Probes(settings["model"], words, words_file, templates, heatmaps)
    elif opinion == "concepts":
        if words or words_file or templates is not None or heatmaps:
            raise AuditError("--words, --words-file, --templates and --heatmaps ask probe words: leave out --opinion "
                             "concepts, or ask them in a second `audit ask`")
        question = _Concepts(root, source, vocabulary, concept_l1, concepts_per_image, concept_mean)
    else:
        raise AuditError(f"audit ask --opinion must be probes or concepts, not {opinion!r} (the ascent needs the "
                         "images: `audit scan`)")
    parts, embedded = _parts(source)
    images_n = sum(rows for rows, _ in parts.values())
    if images_n == 0:
        raise AuditError(f"{root} holds no scanned image")
    if embedded < images_n:
        raise AuditError(f"{images_n - embedded} of {images_n} images of {root} have no stored embedding (scanned "
                         "with --embeddings none, or by an audit before 0.3); scan them again into a new directory "
                         "to ask questions of them")
    mine = {k: settings[k] for k in KEPT if k in settings}
    mine.update(question.settings())
    print_fp = fingerprint(root)
    writer = ScanWriter.open(out, mine, {"kind": "scan", "location": str(root), "fingerprint": print_fp,
                                         "images": "referenced"}, overwrite=overwrite)
    try:
        # New asked scans refer to their source's images rows; one begun by an older audit goes on copying them.
        question.refer = writer.config["source"].get("images") == "referenced"
        if writer.config["source"].get("fingerprint") != print_fp:
            raise AuditError(f"{out} was asked of {root} as it was before (it changed since: resumed, retried or "
                             "overwritten); ask again with --overwrite")
        phases = {"model": 0.0, "text": 0.0, "reading": 0.0, "scoring": 0.0, "writing": 0.0}
        t0 = time.perf_counter()
        towers, preprocess = _model(source, pretrained, device)
        t1 = time.perf_counter()
        question.build(towers, source, preprocess)
        phases["model"], phases["text"] = library + t1 - t0, time.perf_counter() - t1
        done = writer.scanned_ids()
        bar = Progress(images_n, "ask", quiet)
        bar.update(len(done))
        written = tokens = 0
        # One unit is written (a thread of its own: Parquet's encoder lets go of the GIL) while the next is read
        # and scored; "writing" is the time spent waiting for it.
        with ThreadPoolExecutor(1, thread_name_prefix="audit-ask-writer") as pool:
            writing = None
            per_unit = max(1, min(IMAGES_PER_UNIT, ROWS_PER_UNIT // max(1, question.rows_per_image())))
            for unit in waited(_units(root, parts, done, per_unit), phases, "reading"):
                t1 = time.perf_counter()
                tables = question.answer(*unit)
                t2 = time.perf_counter()
                phases["scoring"] += t2 - t1
                if writing is not None:
                    writing.result()
                    phases["writing"] += time.perf_counter() - t2
                writing = pool.submit(writer.write_unit, tables)
                written += tables["images"].num_rows
                tokens += tables["tokens"].num_rows
                bar.update(tables["images"].num_rows)
            if writing is not None:
                t2 = time.perf_counter()
                writing.result()
                phases["writing"] += time.perf_counter() - t2
        bar.close()
        last = (source.config.get("runs") or [{}])[-1]
        writer.record_run({
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "device": str(device),
            "engine": "ask", "images": written, "tokens": tokens,
            "dataset_images": last.get("dataset_images"), "dataset_fingerprint": last.get("dataset_fingerprint"),
            "preprocess": last.get("preprocess"), "seconds": round(time.perf_counter() - start, 3),
            "phases": {k: round(v, 3) for k, v in phases.items()}})
    finally:
        writer.close()
    if getattr(question, "unreadable", 0):
        log.warning(f"audit ask: {question.unreadable} image(s) could not be read again and have no heatmaps")
    if not quiet:
        before = f"; {images_n - written} asked before" if images_n > written else ""
        log.info(f"audit ask: {opinion} of {written} image(s) from the stored embeddings of {root} in "
                 f"{time.perf_counter() - start:.1f} s ({tokens} rows{before}), into {out}")
    return Scan(out)


def _parts(scan: Scan) -> tuple[dict[str, tuple[int, pa.Schema]], int]:
    """Each committed images part's rows and columns (from its footer, read once), and the stored embeddings."""
    images = {}
    for p in committed_parts(scan.root, "images"):
        meta = pq.ParquetFile(p).metadata
        images[p.name] = (meta.num_rows, meta.schema.to_arrow_schema().remove_metadata())
    embedded = sum(pq.ParquetFile(p).metadata.num_rows for p in committed_parts(scan.root, "embeddings"))
    return images, embedded


def _units(root: Path, parts: dict[str, tuple[int, pa.Schema]], done: set[str], per_unit: int):
    """(images rows, embeddings [n, D] float32 in the same order) of the images not yet asked, `per_unit` at a
    time: consecutive source parts read together (a slow scan's parts are small: it commits a part a minute), and
    a large part cut, so memory is bounded however the source was committed."""
    import pyarrow.compute as pc

    skip = pa.array(sorted(done), pa.string()) if done else None
    chunk, held = [], 0
    names = list(parts)
    for k, name in enumerate(names):
        chunk.append(name)
        held += parts[name][0]
        if held < per_unit and k + 1 < len(names):
            continue
        first, read, chunk, held = chunk[0], chunk, [], 0
        images = pa.concat_tables([pq.read_table(root / "images" / n) for n in read], promote_options="default")
        if not images.num_rows:
            continue
        embs = [pq.read_table(root / "embeddings" / n) for n in read]
        ids = pa.chunked_array([e["image_id"].combine_chunks() for e in embs], pa.string())
        if not images["image_id"].equals(ids):  # each part's rows in one order: a bug otherwise
            raise AuditError(f"the images and embeddings of {root} list other images in parts {first}..; this is "
                             "a bug of audit")
        vectors = _float32([embedding_values(e) for e in embs if e.num_rows])
        if skip is not None:
            keep = pc.invert(pc.is_in(images["image_id"], value_set=skip))
            images, vectors = images.filter(keep), vectors[keep.to_numpy(zero_copy_only=False)]
        for lo in range(0, images.num_rows, per_unit):
            yield images.slice(lo, per_unit), vectors[lo:lo + per_unit]


def _float32(parts: list[np.ndarray]) -> np.ndarray:
    """Stored vectors (float16 or float32) as one float32 array, converted by torch (vectorised: twice as fast as
    numpy's float16 conversion, which was a fifth of reading a million embeddings)."""
    out = np.empty((sum(len(p) for p in parts), parts[0].shape[1]), np.float32)
    lo = 0
    for p in parts:
        torch.from_numpy(out[lo:lo + len(p)]).copy_(torch.from_numpy(np.require(p, requirements="W")))
        lo += len(p)
    return out


def _token_table(image_ids: pa.ChunkedArray, words: tuple[str, ...], cos: np.ndarray) -> pa.Table:
    """Probe rows, image by image and word by word in the order asked, as the scan's probe opinion writes them.
    Built from indices (no Python object per row: a unit holds images times words rows), the strings as
    dictionaries, which the writer stores without hashing each row's string again."""
    n, w = cos.shape
    rows = _row_layout(n, w)
    values = pa.array(cos.ravel())
    return pa.table({"image_id": pa.DictionaryArray.from_arrays(rows["image"], image_ids.combine_chunks()),
                     "kind": pa.DictionaryArray.from_arrays(rows["kind"], pa.array([PROBE])),
                     "word": pa.DictionaryArray.from_arrays(rows["word"], pa.array(list(words), pa.string())),
                     "word_rank": rows["word_rank"], "seq_rank": rows["seq_rank"],
                     "seq_text": pa.DictionaryArray.from_arrays(rows["word"], pa.array(list(words), pa.string())),
                     "seq_cosine": values, "word_cosine": values})


@functools.lru_cache(maxsize=2)
def _row_layout(n: int, w: int) -> dict[str, pa.Array]:
    """The index columns of n images times w words (every full unit has the same: built once)."""
    return {"image": pa.array(np.repeat(np.arange(n, dtype=np.int32), w)), "kind": pa.array(np.zeros(n * w, np.int32)),
            "word": pa.array(np.tile(np.arange(w, dtype=np.int32), n)),
            "word_rank": pa.array(np.tile(np.arange(w, dtype=np.int16), n)),
            "seq_rank": pa.array(np.full(n * w, -1, dtype=np.int16))}
