"""The scan: source -> loader -> model -> ascent -> relevancy -> statistics -> store."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from audit.errors import AuditError, internal_errors_note
from audit.scanner import rng
from audit.scanner.ascent import run_ascent, sequences_to_words
from audit.scanner.device import autocast, resolve_device, tune_cpu_allocator
from audit.scanner.encoders import Towers
from audit.scanner.heatmap_stats import grid_stats
from audit.scanner.loader import Batch, ImageDataset, make_loader
from audit.scanner.memory import cuda_batch_size, is_out_of_memory, release, relevancy_chunk
from audit.scanner.models import load_model, resolve_weights, weights_identity
from audit.scanner.options import ScanOptions
from audit.scanner.probes import check_lengths, parse_probe_words
from audit.scanner.progress import Progress
from audit.scanner.relevancy import relevancy
from audit.scanner.sources import BOX_COLUMNS, Record, open_source
from audit.store.reader import Scan
from audit.store.schema import ASCENT, INTERNAL, PROBE, conform
from audit.store.writer import ScanWriter

log = logging.getLogger("audit.scan")


def _settings(opts: ScanOptions, weights: str | None, sha: str | None, probes: tuple[str, ...]) -> dict:
    """Everything that changes a stored row; resume refuses to mix two different ones."""
    asc = dataclasses.asdict(opts.ascent())
    return {"model": opts.model, "pretrained": weights_identity(weights, sha), "weights_sha256": sha,
            "seed": opts.seed,
            "start_layer": opts.start_layer, "start_layer_text": opts.start_layer_text, "heatmap": opts.heatmap,
            "occlusion_window": opts.occlusion_window, **asc,
            "ascent": not opts.no_ascent, "probe_words": list(probes)}


def _fingerprint(records: list[Record]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(r.image_id.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()


class _BatchScanner:
    """Turns one loader batch into the rows of one unit of work."""

    def __init__(self, opts: ScanOptions, towers: Towers, records: list[Record], meta_columns: list[str],
                 probes: tuple[str, ...]):
        self.opts = opts
        self.towers = towers
        self.records = records
        self.meta_columns = meta_columns
        self.ascent_cfg = opts.ascent()
        self.probes = [{"word": p, "kind": PROBE, "word_rank": i, "seq_rank": -1, "seq_text": p,
                        "seq_cosine": None} for i, p in enumerate(probes)]
        self.relevancy_chunk = relevancy_chunk(towers, towers.device)

    def error_rows(self, batch: Batch) -> dict:
        recs = [self.records[i] for i, _, _ in batch.errors]
        return {"image_id": [r.image_id for r in recs], "path": [r.display_path for r in recs],
                "stage": [stage for *_, stage in batch.errors], "reason": [reason for _, reason, _ in batch.errors]}

    def image_rows(self, recs: list[Record], sizes) -> dict:
        rows = {"image_id": [r.image_id for r in recs], "path": [r.display_path for r in recs],
                "label": [r.label for r in recs], "width": [w for w, _ in sizes], "height": [h for _, h in sizes]}
        for i, col in enumerate(BOX_COLUMNS):
            rows[col] = [r.box[i] if r.box else None for r in recs]
        for col in self.meta_columns:
            rows[col] = [r.meta.get(col) for r in recs]
        return rows

    def run(self, batch: Batch) -> dict[str, pa.Table]:
        tables = {"errors": pa.table(self.error_rows(batch))}
        if not batch.indices:
            return tables
        t = self.towers
        recs = [self.records[i] for i in batch.indices]
        images = batch.pixels.to(t.device, non_blocking=True)
        seeds = torch.tensor([rng.image_seed(self.opts.seed, r.image_id) for r in recs], device=t.device)
        with autocast(t.device):
            if self.opts.no_ascent:
                words = [[] for _ in recs]
            else:
                found = run_ascent(t, images, seeds, self.ascent_cfg)
                words = [[{**w, "kind": ASCENT} for w in sequences_to_words(t.tokenizer, found.seqs[i],
                                                                             found.scores[i])]
                         for i in range(len(recs))]
            words = [ws + self.probes for ws in words]
            pair_image = torch.tensor([i for i, ws in enumerate(words) for _ in ws], dtype=torch.long)
            pair_words = [w["word"] for ws in words for w in ws]
            rel = relevancy(t, images, pair_image, pair_words, self.opts.start_layer, self.opts.start_layer_text,
                            chunk=self.relevancy_chunk, method=self.opts.heatmap, window=self.opts.occlusion_window)
        pairs = [(recs[i], w) for i, ws in enumerate(words) for w in ws]
        cosine = rel.cosine.numpy()
        tokens = {
            "image_id": [r.image_id for r, _ in pairs], "kind": [w["kind"] for _, w in pairs],
            "word": [w["word"] for _, w in pairs],
            "word_rank": [w["word_rank"] for _, w in pairs], "seq_rank": [w["seq_rank"] for _, w in pairs],
            "seq_text": [w["seq_text"] for _, w in pairs],
            "seq_cosine": [c if w["seq_cosine"] is None else w["seq_cosine"]
                           for (_, w), c in zip(pairs, cosine, strict=True)],
            "word_cosine": cosine,
        }
        grids = rel.image.numpy()
        stats = grid_stats(grids, batch.boxes[pair_image.numpy()] if len(pairs) else np.zeros((0, 4)))
        gh, gw = t.grid_size
        heat = {
            "image_id": tokens["image_id"], "kind": tokens["kind"], "word": tokens["word"],
            "grid_h": [gh] * len(pairs), "grid_w": [gw] * len(pairs),
            "grid": pa.array(list(grids.reshape(len(pairs), -1)), type=pa.list_(pa.float32())),
            **{k: pa.array(list(v), type=pa.bool_()) if k == "peak_in_box" else pa.array(v, from_pandas=True)
               for k, v in stats.items()},
            "text_relevance": pa.array([x.numpy() for x in rel.text], type=pa.list_(pa.float32())),
        }
        tables.update(images=pa.table(self.image_rows(recs, batch.sizes)), tokens=pa.table(tokens),
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
class ScanPlan:
    """What a scan will do, decided before any model is loaded or anything is written."""
    source: str
    out: str
    opts: ScanOptions  # with the model's defaults filled in
    records: list[Record]
    source_info: dict
    meta_columns: list[str]
    probes: tuple[str, ...]
    device: torch.device
    batch_size: int  # before the model is loaded; on CUDA "auto" is sized from free memory in scan_pending
    settings: dict  # what the store compares on resume


@dataclass
class ScanCounts:
    images: int = 0
    errors: int = 0
    internal_errors: int = 0
    tokens: int = 0
    retried: int = 0
    batch_size: int = 0  # the batch size the scan started with
    batch_size_used: int | None = None  # the last one, lower if memory ran out; None if nothing was scanned
    preprocess: dict | None = None


def plan_scan(source, out, opts: ScanOptions) -> ScanPlan:
    """Check the options, list the source, read the probe words and find the weights; every mistake a user can
    make is an AuditError here, before a model is loaded."""
    opts.check()
    opts = opts.with_model_defaults()
    device = resolve_device(opts.device)
    batch_size = opts.resolved_batch_size(device)
    if batch_size < 1:
        raise AuditError(f"--batch-size must be at least 1, not {batch_size}")
    src = open_source(source, opts.path_column)
    if not src.records:
        raise AuditError(f"no images found in {source} (looked for common image extensions, recursively)"
                         if src.kind == "folder" else f"manifest {source} lists no images")
    probes = parse_probe_words(opts.words, opts.words_file)
    if opts.no_ascent and not probes:
        raise AuditError("--no-ascent scores only probe words: pass --words or --words-file")
    weights, sha = resolve_weights(opts.model, opts.pretrained)
    source_info = {"kind": src.kind, "location": src.root, "path_column": opts.path_column,
                   "meta_columns": src.meta_columns}
    return ScanPlan(str(source), str(out), opts, src.records, source_info, src.meta_columns, probes, device,
                    batch_size, _settings(opts, weights, sha, probes))


def pending_records(plan: ScanPlan, writer: ScanWriter) -> tuple[list[Record], int]:
    """The records still to scan, and how many of them failed before. An image in errors counts as done unless
    --retry-errors asks for another attempt."""
    scanned, failed = writer.scanned_ids(), writer.failed_ids()
    done = scanned if plan.opts.retry_errors else scanned | failed
    pending = [r for r in plan.records if r.image_id not in done]
    return pending, sum(r.image_id in failed for r in pending)


def scan_pending(plan: ScanPlan, writer: ScanWriter, pending: list[Record], counts: ScanCounts) -> None:
    """Load the model once and scan `pending` batch by batch, committing each batch as one unit of work.
    `counts` is updated after every commit, so it is right even when the scan is interrupted."""
    opts, device = plan.opts, plan.device
    say = _say(opts)
    if device.type == "cpu":
        tune_cpu_allocator()
    loaded = load_model(opts.model, opts.pretrained, device=str(device), seed=opts.seed)
    towers = Towers(loaded)
    check_lengths(plan.probes, loaded.tokenizer, towers.context_length)
    batch_size = plan.batch_size
    if opts.batch_size == "auto" and device.type == "cuda":
        batch_size = cuda_batch_size(opts, towers, device, len(plan.probes))
    counts.batch_size = batch_size
    again = f", {counts.retried} of them failed before and are tried again" if counts.retried else ""
    say(f"audit scan: {len(pending)} images to scan ({len(plan.records) - len(pending)} already done{again}) "
        f"with {opts.model} on {device}, batch size {batch_size}")
    counts.preprocess = {k: (list(v) if isinstance(v, tuple) else v) for k, v in loaded.preprocess.items()}
    scanner = _BatchScanner(opts, towers, pending, plan.meta_columns, plan.probes)
    loader = make_loader(ImageDataset(pending, loaded.preprocess, opts.max_pixels), batch_size,
                         opts.workers, pin_memory=device.type == "cuda")
    fitting = _Fitting(scanner, batch_size, device, say)
    progress = Progress(len(pending), quiet=opts.quiet)
    try:
        for batch in loader:
            tables = fitting.run(batch)
            writer.write_unit(tables)
            counts.images += len(batch.indices)
            counts.errors += len(batch.errors)
            counts.internal_errors += sum(stage == INTERNAL for *_, stage in batch.errors)
            counts.tokens += tables["tokens"].num_rows if "tokens" in tables else 0
            progress.update(len(batch.indices) + len(batch.errors))
    finally:
        progress.close()
        counts.batch_size_used = fitting.limit


def finish_scan(plan: ScanPlan, writer: ScanWriter, pending: list[Record], counts: ScanCounts,
                seconds: float) -> None:
    """Record the run in scan.json and say what was done."""
    say = _say(plan.opts)
    batch_size = counts.batch_size or plan.batch_size
    writer.record_run({
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": str(plan.device), "batch_size": batch_size, "batch_size_used": counts.batch_size_used,
        "workers": plan.opts.workers, "dataset_images": len(plan.records),
        "dataset_fingerprint": _fingerprint(plan.records), "skipped": len(plan.records) - len(pending),
        "images": counts.images, "errors": counts.errors, "internal_errors": counts.internal_errors,
        "tokens": counts.tokens, "retried": counts.retried, "seconds": round(seconds, 3),
        "preprocess": counts.preprocess,
    })
    if not pending:
        say(f"audit scan: nothing to do, all {len(plan.records)} images are already in {plan.out}")
        return
    rate = (counts.images + counts.errors) / seconds if seconds > 0 else 0.0
    used = counts.batch_size_used
    smaller = f", batch size lowered to {used} to fit memory" if used != batch_size else ""
    say(f"audit scan: {counts.images} images scanned, {counts.errors} errors, {counts.tokens} "
        f"words in {seconds:.1f} s ({rate:.2f} images/s{smaller}) -> {plan.out}")
    if counts.internal_errors:
        say(f"audit scan: {internal_errors_note(counts.internal_errors)}")


def run_scan(source, out, **options) -> Scan:
    """Scan `source` into the scan directory `out` (resuming what is there); `options` are ScanOptions fields."""
    unknown = set(options) - {f.name for f in dataclasses.fields(ScanOptions)}
    if unknown:
        raise TypeError(f"unknown scan options: {', '.join(sorted(unknown))}")
    plan = plan_scan(source, out, ScanOptions(**options))
    writer = ScanWriter.open(out, plan.settings, plan.source_info, overwrite=plan.opts.overwrite)
    started = time.perf_counter()
    try:
        pending, retried = pending_records(plan, writer)
        counts = ScanCounts(retried=retried)
        if pending:
            scan_pending(plan, writer, pending, counts)
        finish_scan(plan, writer, pending, counts, time.perf_counter() - started)
    except BaseException:
        writer.discard_if_unused()
        raise
    finally:
        writer.close()
    return Scan(out)


def _say(opts: ScanOptions):
    """Progress lines go to the "audit" logger; --quiet (or quiet=True from Python) keeps them back."""
    return (lambda *_: None) if opts.quiet else log.info
