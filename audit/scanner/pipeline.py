"""The scan: source -> loader -> model -> opinions -> relevancy -> statistics -> store."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import hashlib
import itertools
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import torch

from audit.errors import AuditError, internal_errors_note
from audit.scanner import rng
from audit.scanner.ascent import resolve_kernel
from audit.scanner.device import (
    autocast,
    native_bfloat16,
    resolve_device,
    resolve_precision,
    tune_cpu_allocator,
)
from audit.scanner.encoders import Towers
from audit.scanner.first_pass import FirstPass, first_pass
from audit.scanner.heatmap_stats import heatmap_columns
from audit.scanner.loader import Batch, StreamDataset, make_loader
from audit.scanner.memory import cuda_batch_size, is_out_of_memory, release, relevancy_chunk
from audit.scanner.models import load_model, resolve_weights, vocab_size, weights_identity
from audit.scanner.opinions import OPINIONS, opinion_class
from audit.scanner.opinions.base import OpinionBatch, token_columns
from audit.scanner.options import ScanOptions
from audit.scanner.progress import Progress, waited
from audit.scanner.relevancy import METHODS, check_method, method_options, prefix_layer, relevancy
from audit.sources import BOX_COLUMNS, Record, Source, open_source
from audit.store.reader import Scan
from audit.store.schema import IMAGES, INTERNAL, conform, embeddings_table
from audit.store.writer import ScanWriter

log = logging.getLogger("audit.scan")


def _settings(opts: ScanOptions, weights: str | None, sha: str | None, planned: dict) -> dict:
    """Everything that changes a stored row (options.RUN_OPTIONS lists the options that do not): the shared
    settings and each chosen opinion's own. A resume refuses to mix two different ones; check and diff name the
    ones in which two scans differ."""
    settings = {"model": opts.model, "pretrained": weights_identity(weights, sha), "weights_sha256": sha,
                "seed": opts.seed, "heatmap": opts.heatmap, "opinions": list(planned), "precision": opts.precision}
    # The settings of the method that draws the heatmaps only (store.settings.upgrade reads older scans so).
    settings.update({field: getattr(opts, field) for field in METHODS[opts.heatmap].options.values()})
    for name, inputs in planned.items():
        settings.update(opinion_class(name).settings(opts, inputs))
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
    """Turns one loader batch into the rows of one unit of work: each chosen opinion's words, a relevancy heatmap
    for the words each opinion shows, and their statistics."""

    def __init__(self, opts: ScanOptions, towers: Towers, meta_columns: list[str] | None, opinions: list,
                 known: dict[str, torch.Tensor] | None = None, known_hidden: dict[str, torch.Tensor] | None = None):
        self.opts = opts
        # Embeddings (and relevancy hidden states) the first pass already computed, by image id: used once each,
        # instead of a second forward.
        self.known = dict(known or {})
        self.known_hidden = dict(known_hidden or {})
        self.towers = towers
        self.meta_columns = meta_columns  # None: whatever each record carries (WebDataset JSON)
        self.opinions = opinions  # built Opinion objects, in the registry's order
        self.relevancy_params = method_options(opts.heatmap, opts)
        check_method(towers, opts.heatmap, self.relevancy_params)
        # The relevancy pass starts from the hidden states entering this block: kept from the embedding pass.
        self.keep = prefix_layer(towers, opts.heatmap, self.relevancy_params)
        self.relevancy_chunk = relevancy_chunk(towers, towers.device)

    def error_rows(self, batch: Batch) -> dict:
        recs = batch.error_records
        return {"image_id": [r.image_id for r in recs], "path": [r.display_path for r in recs],
                "stage": [stage for *_, stage in batch.errors], "reason": [reason for _, reason, _ in batch.errors]}

    def image_rows(self, recs: list[Record], sizes, fingerprints, columns: dict) -> dict:
        rows = {"image_id": [r.image_id for r in recs], "path": [r.display_path for r in recs],
                "label": [r.label for r in recs], "width": [w for w, _ in sizes], "height": [h for _, h in sizes],
                "pixel_sha256": [f.pixel_sha256 for f in fingerprints],
                "phash": pa.array([f.phash for f in fingerprints], pa.int64()),
                "phash_mirror": pa.array([f.phash_mirror for f in fingerprints], pa.int64())}
        for i, col in enumerate(BOX_COLUMNS):
            rows[col] = [r.box[i] if r.box else None for r in recs]
        rows["concept_cosine"] = pa.array(columns.get("concept_cosine", [None] * len(recs)), pa.float32())
        meta = self.meta_columns if self.meta_columns is not None else sorted({k for r in recs for k in r.meta})
        for col in meta:
            # A metadata key named like one of audit's own columns (a JSON "width") is kept beside it.
            rows[col if col not in IMAGES.names else f"meta_{col}"] = [r.meta.get(col) for r in recs]
        return rows

    def _known(self, recs: list[Record], images: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The batch's embeddings and relevancy hidden states where the first pass kept them (the rest computed
        now), else None: each image's are the same bits either way (Towers.image_pass). Hidden states are given
        only where every image has them; otherwise OpinionBatch computes them when a heatmap needs them."""
        if not self.known:
            return None, None
        found = [self.known.pop(r.image_id, None) for r in recs]
        if all(f is None for f in found):
            return None, None
        held = [self.known_hidden.pop(r.image_id, None) for r in recs]
        t = self.towers
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            with torch.no_grad(), autocast(t.device, self.opts.precision):
                fresh, hidden = t.image_pass(images[missing], self.keep)
            for j, i in enumerate(missing):
                found[i] = fresh[j]
                held[i] = None if hidden is None else hidden[j]
        features = torch.stack([f.to(t.device) for f in found])
        if any(h is None for h in held):
            return features, None
        return features, torch.stack([h.to(t.device) for h in held])

    def run(self, batch: Batch) -> dict[str, pa.Table]:
        tables = {"errors": pa.table(self.error_rows(batch))}
        if not batch.indices:
            return tables
        t = self.towers
        recs = batch.records
        images = batch.pixels.to(t.device, non_blocking=True)
        seeds = torch.tensor([rng.image_seed(self.opts.seed, r.image_id) for r in recs], device=t.device)
        features, hidden = self._known(recs, images)
        view = OpinionBatch(t, images, seeds, features, hidden, keep=self.keep)
        with autocast(t.device, self.opts.precision):
            if self.opts.embeddings != "none":
                view.features()  # under the same autocast as the opinions that read it: one vector for both
            found = [op.rows(view) for op in self.opinions]
            # Per image, the words with a heatmap first (each opinion's in order), then the others.
            shown = [[w for f in found for w in f.words[i][:f.heatmaps[i]]] for i in range(len(recs))]
            pair_image = torch.tensor([i for i, ws in enumerate(shown) for _ in ws], dtype=torch.long)
            pair_words = [w["word"] for ws in shown for w in ws]
            rel = relevancy(t, images, pair_image, pair_words, self.opts.heatmap, self.relevancy_chunk,
                            hidden=view.hidden() if pair_words else None, **self.relevancy_params)
        pairs = [(recs[i], w) for i, ws in enumerate(shown) for w in ws]
        rows = pairs + [(recs[i], w) for i in range(len(recs)) for f in found for w in f.words[i][f.heatmaps[i]:]]
        # A word's own cosine: the relevancy pass's, unless its opinion measured it already (a concept's, from
        # the decomposition: the same quantity, also for those without a heatmap).
        cosine = [w.get("word_cosine", c) for (_, w), c in zip(pairs, rel.cosine.tolist(), strict=True)]
        cosine += [w["word_cosine"] for _, w in rows[len(pairs):]]
        tokens = token_columns([r.image_id for r, _ in rows], [w for _, w in rows], cosine)
        heat = heatmap_columns(tokens["image_id"][:len(pairs)], tokens["kind"][:len(pairs)],
                               tokens["word"][:len(pairs)], rel, batch.boxes[pair_image.numpy()], t.grid_size)
        columns = {k: v for f in found for k, v in f.image_columns.items()}
        tables.update(images=pa.table(self.image_rows(recs, batch.sizes, batch.fingerprints, columns)), tokens=pa.table(tokens),
                      heatmaps=pa.table(heat))
        if self.opts.embeddings != "none":
            tables["embeddings"] = embedding_table([r.image_id for r in recs], view.features(), self.opts.embeddings)
        return tables


def embedding_table(ids: list[str], features: torch.Tensor, dtype: str) -> pa.Table:
    """The embeddings table's rows for a batch: each image's features at the stored precision."""
    return embeddings_table(pa.array(ids, pa.string()), features.detach().float().cpu().numpy(), dtype)


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
class ScanPlan:
    """What a scan will do, decided before any model is loaded or anything is written."""
    out: str
    opts: ScanOptions  # with the model's defaults and the kernel filled in
    source: Source
    device: torch.device
    batch_size: int  # before the model is loaded; on CUDA "auto" is sized from free memory in scan_pending
    settings: dict  # what the store compares on resume
    opinions: dict  # opinion name -> what its plan() read (probe words, a vocabulary), in the registry's order
    requested_precision: str = "auto"  # what --precision said; opts.precision is what it resolved to
    resumed_precision: bool = False  # `auto` kept the precision the scan directory began with

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
    """Check the options, open the source, read each opinion's inputs and find the weights; every mistake a user
    can make is an AuditError here, before a model is loaded."""
    opts.check()
    if opts.no_ascent:
        warnings.warn("--no-ascent is deprecated: name the opinions to run instead (--opinion probes, or "
                      "--opinion concepts)", DeprecationWarning, stacklevel=3)
        log.warning("audit scan: --no-ascent is deprecated; write --opinion probes (with --words) or --opinion "
                    "concepts instead")
    opts = opts.with_model_defaults()
    device = resolve_device(opts.device)
    requested, stored = opts.precision, _stored_precision(out, opts)
    opts = dataclasses.replace(opts, kernel=resolve_kernel(opts.kernel, device),
                               precision=resolve_precision(opts.precision, device, stored))
    batch_size = opts.resolved_batch_size(device, vocab_size(opts.model))
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
    weights, sha = resolve_weights(opts.model, opts.pretrained)
    probes = opinion_class("probes").plan(opts)
    words = probes[0]
    chosen = set(opts.opinions) | ({"probes"} if words else set())  # --words are scored whatever --opinion says
    if not words and ("probes" in chosen or not chosen):
        raise AuditError("--no-ascent scores only probe words: pass --words or --words-file (or --opinion concepts)"
                         if opts.no_ascent else "--opinion probes scores probe words: pass --words or --words-file")
    planned = {name: probes if name == "probes" else opinion_class(name).plan(opts)
               for name in OPINIONS if name in chosen}
    return ScanPlan(str(out), opts, src, device, batch_size, _settings(opts, weights, sha, planned), planned,
                    requested, requested == "auto" and stored is not None)


def _stored_precision(out, opts: ScanOptions) -> str | None:
    """The precision an earlier run of this scan directory used (what `auto` keeps on resume), if any."""
    from audit.store.layout import CONFIG_FILE, read_config
    from audit.store.settings import upgrade

    if opts.overwrite or not (Path(out) / CONFIG_FILE).is_file():
        return None
    try:
        config = read_config(Path(out))
    except (AuditError, OSError, ValueError):
        return None  # the writer says what is wrong with it
    return upgrade(config.get("settings", {}), config.get("runs", [])).get("precision")


class ScanSetup:
    """What an opinion's before_scan may use: the scan directory's writer, the source, the model (loaded on first
    use, once) and the first pass over the source's first images (read on first use, once)."""

    def __init__(self, plan: ScanPlan, writer: ScanWriter, loaded: tuple[Towers, dict] | None = None,
                 keep_batches: bool = False):
        self.plan, self.writer, self.source, self.loaded = plan, writer, plan.source, loaded
        self.say = _say(plan.opts)
        self.keep_batches = keep_batches  # the local engine scans the first pass's batches; Ray reads them again
        self.first: FirstPass | None = None

    def model(self) -> tuple[Towers, dict]:
        if self.loaded is None:
            self.loaded = load_model_for(self.plan.opts, self.plan.device)
        return self.loaded

    def first_pass(self) -> FirstPass:
        if self.first is None:
            towers, preprocess = self.model()
            opts = self.plan.opts
            keep = prefix_layer(towers, opts.heatmap, method_options(opts.heatmap, opts))
            self.first = first_pass(towers, self.source, preprocess, opts.max_pixels, opts.workers,
                                    opts.precision, self.keep_batches, keep=keep)
        return self.first


def prepare_opinions(plan: ScanPlan, writer: ScanWriter, loaded: tuple[Towers, dict] | None = None,
                     keep_batches: bool = False) -> tuple[dict, FirstPass | None]:
    """Each opinion's last step of planning, once in the driver (the concept opinion's image mean, stored in
    scan.json): what build() gets, by name; and the first pass over the source, if an opinion made one."""
    setup = ScanSetup(plan, writer, loaded, keep_batches)
    prepared = {name: opinion_class(name).before_scan(inputs, setup) for name, inputs in plan.opinions.items()}
    return prepared, setup.first


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


def load_scanner(opts: ScanOptions, opinions: dict, meta_columns: list[str] | None, device: torch.device,
                 batch_size: int, say, loaded: tuple[Towers, dict] | None = None,
                 known: dict[str, torch.Tensor] | None = None,
                 known_hidden: dict[str, torch.Tensor] | None = None) -> tuple[_Fitting, dict, int]:
    """The model, once (per process or Ray actor; or `loaded` already), and the chosen opinions built on it
    (`opinions`: name -> what prepare_opinions gave): the batch scanner inside its memory fitting, the model's
    preprocessing, and the batch size (on CUDA with "auto", what the free memory holds). `known`: embeddings the
    first pass computed, by image id."""
    towers, preprocess = loaded or load_model_for(opts, device)
    built = [opinion_class(name).build(opts, towers, inputs) for name, inputs in opinions.items()]
    if opts.batch_size == "auto" and device.type == "cuda":
        batch_size = cuda_batch_size(opts, towers, device, sum(op.words_per_image() for op in built))
    scanner = _BatchScanner(opts, towers, meta_columns, built, known, known_hidden)
    return _Fitting(scanner, batch_size, device, say), preprocess, batch_size


def _start_line(plan: ScanPlan, pending: Pending, batch_size: int, where: str) -> str:
    if pending.pending is None:
        todo = f"scanning {plan.source.kind} source {plan.source.location} ({len(pending.done)} images already done)"
    else:
        again = f", {pending.retried} of them failed before and are tried again" if pending.retried else ""
        todo = f"{pending.pending} images to scan ({pending.total - pending.pending} already done{again})"
    return (f"audit scan: {todo} with {plan.opts.model} on {where} in {plan.opts.precision} ({_why_precision(plan)}), "
            f"batch size {batch_size}")


def _why_precision(plan: ScanPlan) -> str:
    if plan.requested_precision != "auto":
        return "--precision"
    if plan.resumed_precision:
        return "as this scan began"
    return "native on this device" if native_bfloat16(plan.device) else "no native bfloat16 here"


def scan_pending(plan: ScanPlan, writer: ScanWriter, pending: Pending, counts: ScanCounts) -> None:
    """Load the model once and stream the source through it, batch by batch; the writer commits them in parts
    (store.writer), and what it holds is committed when the loop ends, however it ends."""
    opts, device = plan.opts, plan.device
    say = _say(opts)
    loaded = load_model_for(opts, device)
    # The first pass's batches are scanned first, unless a resume's done ids are among them (a mean that was not
    # stored: then only their embeddings are reused, and the stream reads them again).
    started = time.perf_counter()
    opinions, first = prepare_opinions(plan, writer, loaded, keep_batches=not pending.done)
    first_seconds = time.perf_counter() - started
    fitting, preprocess, batch_size = load_scanner(opts, opinions, plan.source.meta_columns, device,
                                                   plan.batch_size, say, loaded,
                                                   first.features if first is not None else None,
                                                   first.hidden if first is not None else None)
    ahead = first.batches if first is not None else []
    counts.batch_size = batch_size
    say(_start_line(plan, pending, batch_size, str(device)))
    counts.preprocess = {k: (list(v) if isinstance(v, tuple) else v) for k, v in preprocess.items()}
    taken = first.taken if first is not None else frozenset()
    loader = make_loader(StreamDataset(plan.source, pending.done, preprocess, opts.max_pixels, taken), batch_size,
                         opts.workers, pin_memory=device.type == "cuda")
    progress = Progress(pending.pending, quiet=opts.quiet)
    phases = counts.phases = {"waiting_for_images": 0.0, "model": 0.0, "writing": 0.0}
    if first is not None:  # reading and encoding the first images for the concept mean, before the stream
        phases["first_pass"] = first_seconds
    try:
        for batch in itertools.chain(_drain(ahead), waited(loader, phases, "waiting_for_images")):
            t1 = time.perf_counter()
            if batch.indices or batch.errors:
                tables = fitting.run(batch)  # ends in copies to the host, so the GPU's work is in this span
                t2 = time.perf_counter()
                writer.add(tables)
                phases["model"] += t2 - t1
                phases["writing"] += time.perf_counter() - t2
            else:
                tables = {}
            counts.add(tables, batch.skipped, pending.failed)
            progress.update(len(batch.indices) + len(batch.errors))
    finally:
        t2 = time.perf_counter()
        writer.flush()  # the batches held, however the loop ended: finished work is never thrown away
        phases["writing"] += time.perf_counter() - t2
        progress.close()
        counts.batch_size_used = fitting.limit


def _drain(batches: list[Batch]):
    """Yield the batches and let go of each (the first pass's pixels are freed as they are scanned)."""
    while batches:
        yield batches.pop(0)


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
        # Which implementation ran the ascent's step (also a setting: a resume with another one is refused).
        "kernel": plan.opts.kernel if "ascent" in plan.opinions else None, "precision": plan.opts.precision,
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
    writer.commit_seconds = plan.opts.commit_every
    started = time.perf_counter()
    try:
        pending = pending_images(plan, writer)
        counts = ScanCounts()
        if pending.pending != 0:
            if plan.opts.engine == "ray":
                from audit.scanner.engines.ray_data import scan_on_ray

                opinions, first = prepare_opinions(plan, writer)
                make = functools.partial(load_scanner, plan.opts, opinions, plan.source.meta_columns,
                                         batch_size=plan.batch_size, say=_ActorLog(),
                                         known=first.features if first is not None else None)
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
