"""The scan: source -> loader -> model -> ascent -> relevancy -> statistics -> store."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import hashlib
import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from audit.errors import AuditError, internal_errors_note
from audit.scanner import rng
from audit.scanner.ascent import kernel_for, run_ascent, sequences_to_words
from audit.scanner.concepts import MEAN_IMAGES, ConceptOpinion, ImageMean, dataset_mean, read_mean
from audit.scanner.device import autocast, resolve_device, tune_cpu_allocator
from audit.scanner.encoders import Towers
from audit.scanner.heatmap_stats import grid_stats
from audit.scanner.loader import Batch, Decoder, StreamDataset, make_loader
from audit.scanner.memory import cuda_batch_size, is_out_of_memory, release, relevancy_chunk
from audit.scanner.models import get_tokenizer, load_model, resolve_weights, weights_identity
from audit.scanner.options import ScanOptions
from audit.scanner.probes import check_lengths, parse_probe_words
from audit.scanner.progress import Progress
from audit.scanner.relevancy import relevancy
from audit.scanner.sources import BOX_COLUMNS, Record, Source, open_source
from audit.scanner.vocabulary import (
    Vocabulary,
    check_vocabulary,
    default_vocabulary,
    embeddings,
    read_vocabulary,
    text_mean,
)
from audit.store.reader import Scan
from audit.store.schema import ASCENT, CONCEPT, IMAGES, INTERNAL, PROBE, conform
from audit.store.writer import ScanWriter

log = logging.getLogger("audit.scan")


def _settings(opts: ScanOptions, weights: str | None, sha: str | None, probes: tuple[str, ...],
              vocab: Vocabulary | None, mean: ImageMean | None) -> dict:
    """Everything that changes a stored row; resume refuses to mix two different ones."""
    asc = dataclasses.asdict(opts.ascent())
    settings = {"model": opts.model, "pretrained": weights_identity(weights, sha), "weights_sha256": sha,
                "seed": opts.seed,
                "start_layer": opts.start_layer, "start_layer_text": opts.start_layer_text, "heatmap": opts.heatmap,
                "occlusion_window": opts.occlusion_window, **asc,
                "ascent": opts.runs_ascent, "probe_words": list(probes), "opinion": opts.opinion}
    if vocab is not None:
        settings.update(vocabulary=vocab.identity, concept_l1=opts.concept_l1,
                        concepts_per_image=opts.concepts_per_image, concept_heatmaps=opts.concept_heatmaps,
                        concept_mean=opts.concept_mean if mean is None else
                        mean.spec + (f":{mean.sha256[:16]}" if mean.sha256 else ""))
    return settings


class Fingerprint:
    """The dataset's fingerprint: a hash of its set of image ids that does not depend on the order they are
    seen in (workers, shards and Ray tasks interleave), built as the stream goes by."""

    def __init__(self):
        self.count = 0
        self.total = 0

    def add(self, ids) -> None:
        for image_id in ids:
            digest = hashlib.sha256(image_id.encode("utf-8", "surrogatepass")).digest()
            self.total = (self.total + int.from_bytes(digest[:16], "big")) % (1 << 128)
            self.count += 1

    def hexdigest(self) -> str:
        return hashlib.sha256(f"{self.count}:{self.total}".encode()).hexdigest()


class _BatchScanner:
    """Turns one loader batch into the rows of one unit of work."""

    def __init__(self, opts: ScanOptions, towers: Towers, meta_columns: list[str] | None,
                 probes: tuple[str, ...], concepts: ConceptOpinion | None = None):
        self.opts = opts
        self.towers = towers
        self.meta_columns = meta_columns  # None: whatever each record carries (WebDataset JSON)
        self.ascent_cfg = opts.ascent()
        self.probes = [{"word": p, "kind": PROBE, "word_rank": i, "seq_rank": -1, "seq_text": p,
                        "seq_cosine": None} for i, p in enumerate(probes)]
        self.concepts = concepts
        self.relevancy_chunk = relevancy_chunk(towers, towers.device)

    def error_rows(self, batch: Batch) -> dict:
        recs = batch.error_records
        return {"image_id": [r.image_id for r in recs], "path": [r.display_path for r in recs],
                "stage": [stage for *_, stage in batch.errors], "reason": [reason for _, reason, _ in batch.errors]}

    def image_rows(self, recs: list[Record], sizes, concept_cosine=None) -> dict:
        rows = {"image_id": [r.image_id for r in recs], "path": [r.display_path for r in recs],
                "label": [r.label for r in recs], "width": [w for w, _ in sizes], "height": [h for _, h in sizes]}
        for i, col in enumerate(BOX_COLUMNS):
            rows[col] = [r.box[i] if r.box else None for r in recs]
        rows["concept_cosine"] = pa.array(concept_cosine if concept_cosine is not None else [None] * len(recs),
                                          pa.float32())
        columns = self.meta_columns if self.meta_columns is not None else sorted({k for r in recs for k in r.meta})
        for col in columns:
            # A metadata key named like one of audit's own columns (a JSON "width") is kept beside it.
            rows[col if col not in IMAGES.names else f"meta_{col}"] = [r.meta.get(col) for r in recs]
        return rows

    def run(self, batch: Batch) -> dict[str, pa.Table]:
        tables = {"errors": pa.table(self.error_rows(batch))}
        if not batch.indices:
            return tables
        t = self.towers
        recs = batch.records
        images = batch.pixels.to(t.device, non_blocking=True)
        seeds = torch.tensor([rng.image_seed(self.opts.seed, r.image_id) for r in recs], device=t.device)
        concepts = [[] for _ in recs]
        fit = None
        with autocast(t.device):
            if self.opts.runs_ascent:
                found = run_ascent(t, images, seeds, self.ascent_cfg)
                words = [[{**w, "kind": ASCENT} for w in sequences_to_words(t.tokenizer, found.seqs[i],
                                                                             found.scores[i])]
                         for i in range(len(recs))]
            else:
                words = [[] for _ in recs]
            if self.concepts is not None:
                with torch.no_grad():
                    feats = t.encode_images(images)
                concepts, fit = self.concepts(feats)
            # Heatmaps: every ascent and probe word, and the concepts with the largest weights.
            shown = self.concepts.settings.heatmaps if self.concepts is not None else 0
            words = [ws + self.probes + cs[:shown] for ws, cs in zip(words, concepts, strict=True)]
            pair_image = torch.tensor([i for i, ws in enumerate(words) for _ in ws], dtype=torch.long)
            pair_words = [w["word"] for ws in words for w in ws]
            rel = relevancy(t, images, pair_image, pair_words, self.opts.start_layer, self.opts.start_layer_text,
                            chunk=self.relevancy_chunk, method=self.opts.heatmap, window=self.opts.occlusion_window)
        pairs = [(recs[i], w) for i, ws in enumerate(words) for w in ws]
        # A word's own cosine: the relevancy pass's, except for concepts, which all keep the decomposition's (the
        # same quantity), also those without a heatmap.
        cosine = [c if w["kind"] != CONCEPT else w["seq_cosine"]
                  for (_, w), c in zip(pairs, rel.cosine.tolist(), strict=True)]
        rows = pairs + [(recs[i], w) for i, cs in enumerate(concepts) for w in cs[shown:]]
        cosine += [w["seq_cosine"] for _, w in rows[len(pairs):]]
        tokens = {
            "image_id": [r.image_id for r, _ in rows], "kind": [w["kind"] for _, w in rows],
            "word": [w["word"] for _, w in rows],
            "word_rank": [w["word_rank"] for _, w in rows], "seq_rank": [w["seq_rank"] for _, w in rows],
            "seq_text": [w["seq_text"] for _, w in rows],
            "seq_cosine": [c if w["seq_cosine"] is None else w["seq_cosine"]
                           for (_, w), c in zip(rows, cosine, strict=True)],
            "word_cosine": pa.array(cosine, pa.float32()),
            "weight": pa.array([w.get("weight") for _, w in rows], pa.float32()),
        }
        grids = rel.image.numpy()
        stats = grid_stats(grids, batch.boxes[pair_image.numpy()] if len(pairs) else np.zeros((0, 4)))
        gh, gw = t.grid_size
        heat = {
            "image_id": tokens["image_id"][:len(pairs)], "kind": tokens["kind"][:len(pairs)],
            "word": tokens["word"][:len(pairs)],
            "grid_h": [gh] * len(pairs), "grid_w": [gw] * len(pairs),
            "grid": pa.array(list(grids.reshape(len(pairs), -1)), type=pa.list_(pa.float32())),
            **{k: pa.array(list(v), type=pa.bool_()) if k == "peak_in_box" else pa.array(v, from_pandas=True)
               for k, v in stats.items()},
            "text_relevance": pa.array([x.numpy() for x in rel.text], type=pa.list_(pa.float32())),
        }
        tables.update(images=pa.table(self.image_rows(recs, batch.sizes, fit)), tokens=pa.table(tokens),
                      heatmaps=pa.table(heat))
        return tables


class _Fitting:
    """Runs loader batches in pieces that fit the device. An out-of-memory error halves the piece and
    retries it, and later batches start from the smaller size. The rows are the same whatever the pieces:
    every image's randomness comes from its own seed."""

    def __init__(self, scanner: _BatchScanner, limit: int, device: torch.device, log):
        self.scanner = scanner
        self.limit = limit
        self.device = device
        self.log = log

    def run(self, batch: Batch) -> dict[str, pa.Table]:
        parts: list[dict[str, pa.Table]] = []
        queue = [batch]
        while queue:
            piece = queue.pop(0)
            if len(piece.indices) > self.limit:  # larger than what fits so far: cut first
                queue[0:0] = piece.split(self.limit)
                continue
            try:
                parts.append(self.scanner.run(piece))
                continue
            except Exception as e:  # noqa: BLE001 - only out-of-memory is handled; the rest is re-raised
                if not is_out_of_memory(e):
                    raise
            n = len(piece.indices)
            release(self.device)  # outside the except block, so the traceback's tensors are already freed
            if n <= 1:
                raise AuditError("a single image does not fit in device memory with these settings: lower "
                                 "--candidates or --views, or use a smaller model")
            self.limit = min(self.limit, (n + 1) // 2)
            self.log(f"audit scan: out of memory with {n} images at once; going on with batches of {self.limit}")
            queue[0:0] = piece.split(self.limit)
        if len(parts) == 1:
            return parts[0]
        return {name: pa.concat_tables([conform(name, p[name]) for p in parts if name in p])
                for name in parts[0]}


@dataclass
class ConceptPlan:
    """The concept opinion's inputs that are known before the model is loaded."""
    vocabulary: Vocabulary
    model_identity: str  # names the model's weights in the embedding cache
    mean: ImageMean | None  # None: the dataset's mean, computed once the model is loaded and stored in scan.json


@dataclass
class ScanPlan:
    """What a scan will do, decided before any model is loaded or anything is written."""
    out: str
    opts: ScanOptions  # with the model's defaults filled in
    source: Source
    probes: tuple[str, ...]
    device: torch.device
    batch_size: int  # before the model is loaded; on CUDA "auto" is sized from free memory in scan_pending
    settings: dict  # what the store compares on resume
    concepts: ConceptPlan | None = None

    @property
    def source_info(self) -> dict:
        return {**self.source.info(), "path_column": self.opts.path_column}


@dataclass
class ScanCounts:
    images: int = 0
    errors: int = 0
    internal_errors: int = 0
    tokens: int = 0
    retried: int = 0
    skipped: int = 0
    batch_size: int = 0  # the batch size the scan started with
    batch_size_used: int | None = None  # the last one, lower if memory ran out; None if nothing was scanned
    preprocess: dict | None = None
    fingerprint: Fingerprint = dataclasses.field(default_factory=Fingerprint)
    # Seconds the local engine spent waiting for decoded images, in the model and writing: where a slow scan's
    # time goes (a starved GPU shows as waiting). None on Ray, whose stages overlap across actors.
    phases: dict[str, float] | None = None

    def add(self, tables: dict[str, pa.Table], skipped: list[str], failed: set[str]) -> list[str]:
        """Count one committed unit (its tables, and the done ids the stream passed over); returns its ids."""
        seen = []
        if "images" in tables:
            seen += tables["images"].column("image_id").to_pylist()
            self.images += tables["images"].num_rows
        if "errors" in tables:
            errors = tables["errors"]
            seen += errors.column("image_id").to_pylist()
            self.errors += errors.num_rows
            self.internal_errors += errors.column("stage").to_pylist().count(INTERNAL)
        self.tokens += tables["tokens"].num_rows if "tokens" in tables else 0
        self.retried += sum(i in failed for i in seen)
        self.skipped += len(skipped)
        self.fingerprint.add(seen)
        self.fingerprint.add(skipped)
        return seen


@dataclass
class Pending:
    """What resume knows before the scan: the ids already done, and, where listing the source is cheap, how
    many images there are, how many are still to scan and how many of those failed before."""
    done: set[str]
    failed: set[str]
    total: int | None = None
    pending: int | None = None
    retried: int | None = None
    fingerprint: str | None = None  # of every id listed


def plan_scan(source, out, opts: ScanOptions) -> ScanPlan:
    """Check the options, open the source, read the probe words and find the weights; every mistake a user can
    make is an AuditError here, before a model is loaded."""
    opts.check()
    opts = opts.with_model_defaults()
    device = resolve_device(opts.device)
    batch_size = opts.resolved_batch_size(device)
    if batch_size < 1:
        raise AuditError(f"--batch-size must be at least 1, not {batch_size}")
    src = open_source(source, opts.path_column, kind=opts.source_kind, image_column=opts.image_column,
                      id_column=opts.id_column, split=opts.split)
    # Known from the format's metadata, else the first id (read without image bytes where the format allows).
    empty = src.count == 0 if src.count is not None else \
        next(iter(src.ids() if src.cheap_ids else src.records()), None) is None
    if empty:
        raise AuditError(f"no images found in {source} (looked for common image extensions, recursively)"
                         if src.kind == "folder" else f"{src.kind} source {source} lists no images")
    probes = parse_probe_words(opts.words, opts.words_file)
    if not opts.runs_ascent and not opts.runs_concepts and not probes:
        raise AuditError("--no-ascent scores only probe words: pass --words or --words-file (or --opinion concepts)")
    weights, sha = resolve_weights(opts.model, opts.pretrained)
    concepts = None
    if opts.runs_concepts:
        vocab = read_vocabulary(opts.vocabulary) if opts.vocabulary else default_vocabulary(get_tokenizer(opts.model))
        identity = f"{opts.model}|{weights_identity(weights, sha)}|{sha}" + (f"|seed={opts.seed}" if weights is None else "")
        concepts = ConceptPlan(vocab, identity, read_mean(opts.concept_mean))
    return ScanPlan(str(out), opts, src, probes, device, batch_size,
                    _settings(opts, weights, sha, probes, concepts and concepts.vocabulary, concepts and concepts.mean),
                    concepts)


def concept_mean(plan: ScanPlan, writer: ScanWriter, towers: Towers | None = None,
                 preprocess: dict | None = None) -> ImageMean | None:
    """The image mean the concept opinion centres by: the one scan.json stores (a resume uses exactly it), else the
    one --concept-mean names, else the dataset's, computed now (with `towers`, or a model loaded here) and stored."""
    if plan.concepts is None:
        return None
    stored = writer.config.get("concept_mean")
    if stored:
        return ImageMean.from_json(stored)
    mean = plan.concepts.mean
    if mean is None:
        if towers is None:
            loaded = load_model(plan.opts.model, plan.opts.pretrained, device=str(plan.device), seed=plan.opts.seed)
            towers, preprocess = Towers(loaded), loaded.preprocess
        _say(plan.opts)(f"audit scan: averaging the embeddings of up to {MEAN_IMAGES} images of the source to "
                        "centre the concept decomposition (once; stored in scan.json)")
        mean = dataset_mean(towers, plan.source.records(), Decoder(preprocess, plan.opts.max_pixels), autocast)
    writer.set_config("concept_mean", mean.to_json())
    return mean


def pending_images(plan: ScanPlan, writer: ScanWriter) -> Pending:
    """The ids already done (scanned; failed too, unless --retry-errors asks for another attempt) and, when the
    source can list its ids cheaply, the counts. Holds the done ids, never the source's records."""
    scanned, failed = writer.scanned_ids(), writer.failed_ids()
    done = scanned if plan.opts.retry_errors else scanned | failed
    known = Pending(done, failed)
    if not plan.source.cheap_ids:
        return known
    pending = retried = 0
    listed = Fingerprint()
    for image_id in plan.source.ids():
        listed.add((image_id,))
        if image_id not in done:
            pending += 1
            retried += image_id in failed
    return Pending(done, failed, listed.count, pending, retried, listed.hexdigest())


def load_model_for(opts: ScanOptions, device: torch.device) -> tuple[Towers, dict]:
    if device.type == "cpu":
        tune_cpu_allocator()
    loaded = load_model(opts.model, opts.pretrained, device=str(device), seed=opts.seed)
    return Towers(loaded), loaded.preprocess


def load_scanner(opts: ScanOptions, probes: tuple[str, ...], meta_columns: list[str] | None, device: torch.device,
                 batch_size: int, say, concepts: ConceptPlan | None = None, mean: ImageMean | None = None,
                 loaded: tuple[Towers, dict] | None = None) -> tuple[_Fitting, dict, int]:
    """The model, once (per process or Ray actor; or `loaded` already): the batch scanner inside its memory
    fitting, the model's preprocessing, and the batch size (on CUDA with "auto", what the free memory holds)."""
    towers, preprocess = loaded or load_model_for(opts, device)
    check_lengths(probes, towers.tokenizer, towers.context_length)
    opinion = None
    if concepts is not None:
        check_vocabulary(concepts.vocabulary, towers.tokenizer, towers.context_length)
        embedded = embeddings(towers, concepts.vocabulary, concepts.model_identity)
        opinion = ConceptOpinion(concepts.vocabulary.words, embedded, text_mean(towers, concepts.model_identity),
                                 mean, opts.concepts())
    if opts.batch_size == "auto" and device.type == "cuda":
        batch_size = cuda_batch_size(opts, towers, device, len(probes), kernel_for(device))
    scanner = _BatchScanner(opts, towers, meta_columns, probes, opinion)
    return _Fitting(scanner, batch_size, device, say), preprocess, batch_size


def _start_line(plan: ScanPlan, pending: Pending, batch_size: int, where: str) -> str:
    if pending.pending is None:
        todo = f"scanning {plan.source.kind} source {plan.source.location} ({len(pending.done)} images already done)"
    else:
        again = f", {pending.retried} of them failed before and are tried again" if pending.retried else ""
        todo = f"{pending.pending} images to scan ({pending.total - pending.pending} already done{again})"
    return f"audit scan: {todo} with {plan.opts.model} on {where}, batch size {batch_size}"


def scan_pending(plan: ScanPlan, writer: ScanWriter, pending: Pending, counts: ScanCounts) -> None:
    """Load the model once and stream the source through it, committing each batch as one unit of work.
    `counts` is updated after every commit, so it is right even when the scan is interrupted."""
    opts, device = plan.opts, plan.device
    say = _say(opts)
    loaded = load_model_for(opts, device)
    mean = concept_mean(plan, writer, *loaded)
    fitting, preprocess, batch_size = load_scanner(opts, plan.probes, plan.source.meta_columns, device,
                                                   plan.batch_size, say, plan.concepts, mean, loaded)
    counts.batch_size = batch_size
    say(_start_line(plan, pending, batch_size, str(device)))
    counts.preprocess = {k: (list(v) if isinstance(v, tuple) else v) for k, v in preprocess.items()}
    loader = make_loader(StreamDataset(plan.source, pending.done, preprocess, opts.max_pixels), batch_size,
                         opts.workers, pin_memory=device.type == "cuda")
    progress = Progress(pending.pending, quiet=opts.quiet)
    phases = counts.phases = {"waiting_for_images": 0.0, "model": 0.0, "writing": 0.0}
    batches = iter(loader)
    try:
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            t1 = time.perf_counter()
            phases["waiting_for_images"] += t1 - t0
            if batch is None:
                break
            if batch.indices or batch.errors:
                tables = fitting.run(batch)  # ends in copies to the host, so the GPU's work is in this span
                t2 = time.perf_counter()
                writer.write_unit(tables)
                phases["model"] += t2 - t1
                phases["writing"] += time.perf_counter() - t2
            else:
                tables = {}
            counts.add(tables, batch.skipped, pending.failed)
            progress.update(len(batch.indices) + len(batch.errors))
    finally:
        progress.close()
        counts.batch_size_used = fitting.limit


def finish_scan(plan: ScanPlan, writer: ScanWriter, pending: Pending, counts: ScanCounts, seconds: float,
                engine: str = "local") -> None:
    """Record the run in scan.json and say what was done."""
    say = _say(plan.opts)
    batch_size = counts.batch_size or plan.batch_size
    scanned = counts.images + counts.errors
    # The listing saw every id when the source lists them cheaply; otherwise the stream did.
    skipped = pending.total if pending.pending == 0 else counts.skipped
    if pending.fingerprint is not None:
        total, fingerprint = pending.total, pending.fingerprint
    else:
        total, fingerprint = counts.fingerprint.count, counts.fingerprint.hexdigest()
    writer.record_run({
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": str(plan.device), "engine": engine, "batch_size": batch_size,
        "batch_size_used": counts.batch_size_used, "workers": plan.opts.workers, "dataset_images": total,
        "dataset_fingerprint": fingerprint, "skipped": skipped,
        "images": counts.images, "errors": counts.errors, "internal_errors": counts.internal_errors,
        "tokens": counts.tokens, "retried": counts.retried, "seconds": round(seconds, 3),
        "preprocess": counts.preprocess,
        "phases": None if counts.phases is None else {k: round(v, 3) for k, v in counts.phases.items()},
    })
    if pending.pending == 0 or (pending.pending is None and scanned == 0):
        say(f"audit scan: nothing to do, all {total if total is not None else counts.skipped} images are "
            f"already in {plan.out}")
        return
    rate = scanned / seconds if seconds > 0 else 0.0
    used = counts.batch_size_used
    smaller = f", batch size lowered to {used} to fit memory" if used != batch_size else ""
    say(f"audit scan: {counts.images} images scanned, {counts.errors} errors, {counts.tokens} "
        f"words in {seconds:.1f} s ({rate:.2f} images/s{smaller}) -> {plan.out}")
    if counts.internal_errors:
        say(f"audit scan: {internal_errors_note(counts.internal_errors)}")
    hint = starved_hint(counts, scanned, plan.opts.workers)
    if hint:
        say(f"audit scan: {hint}")


def starved_hint(counts: ScanCounts, scanned: int, workers: int) -> str | None:
    """A line for a scan that spent a large share of its time waiting for decoded images, past its first
    batches (whose wait is the workers' start-up, not a lack of them)."""
    phases = counts.phases
    if not phases or scanned < 4 * max(counts.batch_size, 1):
        return None
    total = sum(phases.values())
    share = phases["waiting_for_images"] / total if total > 0 else 0.0
    if share < 0.25:
        return None
    return (f"{share:.0%} of the scan's time went waiting for images to be read and decoded; more --workers "
            f"(now {workers}) would keep the model busy")


def run_scan(source, out, **options) -> Scan:
    """Scan `source` into the scan directory `out` (resuming what is there); `options` are ScanOptions fields."""
    unknown = set(options) - {f.name for f in dataclasses.fields(ScanOptions)}
    if unknown:
        raise TypeError(f"unknown scan options: {', '.join(sorted(unknown))}")
    plan = plan_scan(source, out, ScanOptions(**options))
    writer = ScanWriter.open(out, plan.settings, plan.source_info, overwrite=plan.opts.overwrite)
    started = time.perf_counter()
    try:
        pending = pending_images(plan, writer)
        counts = ScanCounts()
        if pending.pending != 0:
            if plan.opts.engine == "ray":
                from audit.scanner.engines.ray_data import scan_on_ray

                make = functools.partial(load_scanner, plan.opts, plan.probes, plan.source.meta_columns,
                                         batch_size=plan.batch_size, say=_ActorLog(), concepts=plan.concepts,
                                         mean=concept_mean(plan, writer))
                scan_on_ray(plan, writer, pending, counts, make, functools.partial(_start_line, plan, pending))
            else:
                scan_pending(plan, writer, pending, counts)
        finish_scan(plan, writer, pending, counts, time.perf_counter() - started, plan.opts.engine)
    except BaseException:
        writer.discard_if_unused()
        raise
    finally:
        writer.close()
    return Scan(out)


class _ActorLog:
    """What a Ray actor says (out of memory, smaller batches) goes to its own log: picklable, unlike a lambda."""

    def __call__(self, msg: str) -> None:
        log.info(msg)


def _say(opts: ScanOptions):
    """Progress lines go to the "audit" logger; --quiet (or quiet=True from Python) keeps them back."""
    return (lambda *_: None) if opts.quiet else log.info
