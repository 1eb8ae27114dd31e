"""The scan: source -> loader -> model -> ascent -> relevancy -> statistics -> store."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime as _dt
import hashlib
import sys
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from audit.errors import AuditError, internal_errors_note
from audit.scanner import rng
from audit.scanner.ascent import AscentConfig, run_ascent, sequences_to_words
from audit.scanner.encoders import Towers
from audit.scanner.heatmap_stats import grid_stats
from audit.scanner.loader import Batch, ImageDataset, make_loader
from audit.scanner.memory import (
    ascent_bytes_per_image,
    fit_count,
    free_bytes,
    is_out_of_memory,
    release,
    relevancy_bytes_per_pair,
)
from audit.scanner.models import (
    default_heatmap,
    default_occlusion_window,
    default_start_layer,
    load_model,
    resolve_device,
    resolve_weights,
    weights_identity,
)
from audit.scanner.options import DEFAULT_MAX_PIXELS, DEFAULT_MODEL, DEFAULT_PRETRAINED
from audit.scanner.probes import check_lengths, parse_probe_words
from audit.scanner.progress import Progress
from audit.scanner.relevancy import METHODS, relevancy
from audit.scanner.sources import BOX_COLUMNS, Record, open_source
from audit.store.reader import Scan
from audit.store.schema import ASCENT, INTERNAL, PROBE, conform
from audit.store.writer import ScanWriter


@dataclass(frozen=True)
class ScanOptions:
    model: str = DEFAULT_MODEL
    pretrained: str = DEFAULT_PRETRAINED
    device: str = "auto"
    batch_size: int | str = "auto"
    workers: int = 2
    seed: int = 0
    steps: int = 200
    tokens_per_seq: int = 4
    candidates: int = 16
    lr: float = 5.0
    views: int = 64
    resample_views: bool = False
    refine_rounds: int = 3
    refine_top: int = 64
    prompt: str = ""
    start_layer: int | None = None  # None: the model's default (models.default_start_layer)
    start_layer_text: int = -1
    heatmap: str | None = None  # relevancy method; None: the model's default (models.default_heatmap)
    occlusion_window: int | None = None  # patches per side of the blanked window; None: the model's default
    path_column: str = "path"
    max_pixels: int = DEFAULT_MAX_PIXELS
    words: tuple[str, ...] | str = ()  # probe words (see probes.py)
    words_file: str | None = None
    no_ascent: bool = False
    overwrite: bool = False
    retry_errors: bool = False  # re-attempt images whose last attempt failed (a run-time choice, not a setting)
    quiet: bool = False

    def resolved_batch_size(self, device: torch.device) -> int:
        """The batch size before the model is loaded; on a GPU, run_scan sizes "auto" from free memory."""
        if self.batch_size == "auto":
            if device.type == "cuda":
                return 64
            if self.no_ascent:
                return 16  # no vocabulary-sized tensors: only relevancy passes, which batch well
            # On CPU, a vocabulary-sized tensor above glibc's 32 MB mmap ceiling is unmapped when freed and
            # page-faulted again by the next op; batches that stay under it are 2-3x faster per image
            # (bench/cpu_batch.py).
            per_image = self.candidates * self.tokens_per_seq * 49408 * 4
            return max(1, (32 << 20) // per_image)
        try:
            return int(self.batch_size)
        except (TypeError, ValueError):
            raise AuditError(f"--batch-size must be a number or auto, not {self.batch_size!r}") from None

    def check(self) -> None:
        positive = {"tokens_per_seq": self.tokens_per_seq,
                    "candidates": self.candidates, "views": self.views, "max_pixels": self.max_pixels}
        for name, value in positive.items():
            if value < 1:
                raise AuditError(f"--{name.replace('_', '-')} must be at least 1, not {value}")
        if self.steps < 0 or self.workers < 0 or self.refine_rounds < 0:
            raise AuditError("--steps, --workers and --refine-rounds cannot be negative")
        if self.refine_top < 1:
            raise AuditError(f"refine_top must be at least 1, not {self.refine_top}")
        if not self.lr > 0:
            raise AuditError(f"--lr must be positive, not {self.lr}")
        if self.heatmap is not None and self.heatmap not in METHODS:
            raise AuditError(f"--heatmap must be one of {', '.join(METHODS)}, not {self.heatmap!r}")
        if self.occlusion_window is not None and self.occlusion_window < 1:
            raise AuditError(f"--occlusion-window must be at least 1 patch, not {self.occlusion_window}")

    def ascent(self) -> AscentConfig:
        return AscentConfig(tokens_per_seq=self.tokens_per_seq, candidates=self.candidates, steps=self.steps,
                            lr=self.lr, views=self.views, resample_views=self.resample_views, prompt=self.prompt,
                            refine_rounds=self.refine_rounds, refine_top=self.refine_top)


def _words_per_image(opts: ScanOptions, n_probes: int) -> int:
    return (0 if opts.no_ascent else 5 * opts.tokens_per_seq) + n_probes  # the ascent keeps 5 sequences


def _pair_bytes(towers: Towers) -> int:
    shape = towers.shape()
    return relevancy_bytes_per_pair(shape["vision_layers"], shape["vision_heads"], shape["grid_tokens"],
                                    shape["vision_width"])


def _cuda_batch(opts: ScanOptions, towers: Towers, device: torch.device, n_probes: int = 0) -> int:
    """The largest batch whose ascent fits the free GPU memory, next to one relevancy chunk."""
    free = free_bytes(device) or 0
    per_pair = _pair_bytes(towers)
    reserved = _relevancy_chunk(towers, device, free) * per_pair
    if opts.no_ascent:
        per_image = max(1, _words_per_image(opts, n_probes)) * per_pair // 4
    else:
        shape = towers.shape()
        per_image = ascent_bytes_per_image(opts.candidates, opts.tokens_per_seq, towers.vocab_size,
                                           shape["text_width"], shape["text_layers"], opts.tokens_per_seq + 2)
    return fit_count(free, per_image, reserved)


def _relevancy_chunk(towers: Towers, device: torch.device, free: int | None = None) -> int:
    """(image, word) pairs per relevancy pass: 256 on a CPU; on a GPU, what a quarter of free memory holds."""
    if device.type != "cuda":
        return 256
    free = free_bytes(device) if free is None else free
    return fit_count(free // 4, _pair_bytes(towers), cap=256)


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


def _tune_cpu_allocator() -> None:
    """Keep freed blocks up to glibc's 32 MB ceiling in the heap instead of returning them to the OS, so the
    ascent's per-step temporaries are reused rather than page-faulted anew (see bench/cpu_batch.py)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
        self.relevancy_chunk = _relevancy_chunk(towers, towers.device)

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
        with _autocast(t.device):
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


def run_scan(source, out, **options) -> Scan:
    unknown = set(options) - {f.name for f in dataclasses.fields(ScanOptions)}
    if unknown:
        raise TypeError(f"unknown scan options: {', '.join(sorted(unknown))}")
    opts = ScanOptions(**options)
    opts.check()
    if opts.start_layer is None:
        opts = dataclasses.replace(opts, start_layer=default_start_layer(opts.model))
    if opts.heatmap is None:
        opts = dataclasses.replace(opts, heatmap=default_heatmap(opts.model))
    if opts.occlusion_window is None:
        opts = dataclasses.replace(opts, occlusion_window=default_occlusion_window(opts.model))
    log = (lambda *_: None) if opts.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    device = resolve_device(opts.device)
    batch_size = opts.resolved_batch_size(device)
    if batch_size < 1:
        raise AuditError(f"--batch-size must be at least 1, not {batch_size}")
    used = None
    src = open_source(source, opts.path_column)
    if not src.records:
        raise AuditError(f"no images found in {source} (looked for common image extensions, recursively)"
                         if src.kind == "folder" else f"manifest {source} lists no images")
    probes = parse_probe_words(opts.words, opts.words_file)
    if opts.no_ascent and not probes:
        raise AuditError("--no-ascent scores only probe words: pass --words or --words-file")
    weights, sha = resolve_weights(opts.model, opts.pretrained)
    settings = _settings(opts, weights, sha, probes)
    source_info = {"kind": src.kind, "location": src.root, "path_column": opts.path_column,
                   "meta_columns": src.meta_columns}
    writer = ScanWriter.open(out, settings, source_info, overwrite=opts.overwrite)
    started = time.perf_counter()
    try:
        # An image in errors counts as done unless --retry-errors asks for another attempt.
        scanned, failed = writer.scanned_ids(), writer.failed_ids()
        done = scanned if opts.retry_errors else scanned | failed
        pending = [r for r in src.records if r.image_id not in done]
        retried = sum(r.image_id in failed for r in pending)
        counts = {"images": 0, "errors": 0, "internal_errors": 0, "tokens": 0, "retried": retried}
        preprocess = None
        if pending:
            if device.type == "cpu":
                _tune_cpu_allocator()
            loaded = load_model(opts.model, opts.pretrained, device=str(device), seed=opts.seed)
            towers = Towers(loaded)
            check_lengths(probes, loaded.tokenizer, towers.context_length)
            if opts.batch_size == "auto" and device.type == "cuda":
                batch_size = _cuda_batch(opts, towers, device, len(probes))
            again = f", {retried} of them failed before and are tried again" if retried else ""
            log(f"audit scan: {len(pending)} images to scan ({len(src.records) - len(pending)} already done{again}) "
                f"with {opts.model} on {device}, batch size {batch_size}")
            preprocess = {k: (list(v) if isinstance(v, tuple) else v) for k, v in loaded.preprocess.items()}
            scanner = _BatchScanner(opts, towers, pending, src.meta_columns, probes)
            loader = make_loader(ImageDataset(pending, loaded.preprocess, opts.max_pixels), batch_size,
                                 opts.workers, pin_memory=device.type == "cuda")
            fitting = _Fitting(scanner, batch_size, device, log)
            progress = Progress(len(pending), quiet=opts.quiet)
            try:
                for batch in loader:
                    tables = fitting.run(batch)
                    writer.write_unit(tables)
                    counts["images"] += len(batch.indices)
                    counts["errors"] += len(batch.errors)
                    counts["internal_errors"] += sum(stage == INTERNAL for *_, stage in batch.errors)
                    counts["tokens"] += tables["tokens"].num_rows if "tokens" in tables else 0
                    progress.update(len(batch.indices) + len(batch.errors))
            finally:
                progress.close()
                used = fitting.limit
        seconds = time.perf_counter() - started
        writer.record_run({
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "device": str(device), "batch_size": batch_size, "batch_size_used": used, "workers": opts.workers,
            "dataset_images": len(src.records), "dataset_fingerprint": _fingerprint(src.records),
            "skipped": len(src.records) - len(pending), **counts, "seconds": round(seconds, 3),
            "preprocess": preprocess,
        })
        scanned = counts["images"] + counts["errors"]
        rate = scanned / seconds if seconds > 0 else 0.0
        if pending:
            smaller = f", batch size lowered to {used} to fit memory" if used != batch_size else ""
            log(f"audit scan: {counts['images']} images scanned, {counts['errors']} errors, {counts['tokens']} "
                f"words in {seconds:.1f} s ({rate:.2f} images/s{smaller}) -> {out}")
            if counts["internal_errors"]:
                log(f"audit scan: {internal_errors_note(counts['internal_errors'])}")
        else:
            log(f"audit scan: nothing to do, all {len(src.records)} images are already in {out}")
    except BaseException:
        writer.discard_if_unused()
        raise
    finally:
        writer.close()
    return Scan(out)
