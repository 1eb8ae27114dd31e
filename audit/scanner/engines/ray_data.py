"""`audit scan --engine ray`: the scan as a Ray Data pipeline.

Read tasks stream the source one shard at a time (each record not yet done, with its bytes); `map_batches` runs
the batch scanner on an actor pool, the model loaded once per actor (one actor per GPU, or --workers actors on a
CPU cluster); each output is one unit of work, and the driver commits it through the same store writer as the
local engine (atomic parts, commit marker), so resume, kill -9 of the driver and the rows themselves are the
same. Ray restarts an actor whose process dies and retries its batch; Ray Data hands each batch's output to
the driver once, so a retried batch is stored once (the kill test checks it: no row twice).

The engine is handed the function that builds a scanner (audit.scanner.pipeline.load_scanner) rather than
importing the pipeline, which imports this module.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os

from audit.errors import AuditError
from audit.scanner.loader import Decoder, collate
from audit.scanner.progress import Progress
from audit.sources import Record
from audit.sources.remote import require
from audit.store.schema import TABLES

log = logging.getLogger("audit.scan")
CPU_PER_ACTOR = 0.5  # on a small machine, whole CPUs per actor would leave none for the read tasks (deadlock)


def _ipc(table) -> bytes:
    import pyarrow as pa

    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _from_ipc(data: bytes):
    import pyarrow as pa

    return pa.ipc.open_stream(io.BytesIO(data)).read_all()


class _Reader:
    """A read task's work: one shard -> rows for the records not yet done, and the done ids it passed over."""

    def __init__(self, shards, done_ref):
        self.shards = shards
        self.done_ref = done_ref

    def __call__(self, task: dict) -> list[dict]:
        import ray

        done = ray.get(self.done_ref)
        rows, skipped = [], []
        k, m = task["part"], task["parts"]
        for i, rec in enumerate(self.shards[task["shard"]].records()):
            if i % m != k:
                continue
            if rec.image_id in done:
                skipped.append(rec.image_id)
                continue
            # Every column always set (no nulls: Ray would turn them into NaN); the bytes travel as bytes.
            fields = {"image_id": rec.image_id, "path": rec.path, "label": rec.label, "box": rec.box,
                      "meta": rec.meta, "error": rec.error, "has_data": rec.data is not None}
            rows.append({"record": json.dumps(fields), "data": rec.data or b"", "skipped": "[]"})
        if skipped:
            rows.append({"record": "", "data": b"", "skipped": json.dumps(skipped)})
        return rows


class _ScanActor:
    """One model per actor; each call turns a batch of rows into one unit of work (Arrow IPC per table)."""

    def __init__(self, make_scanner, device: str, max_pixels: int):
        import torch

        dev = torch.device(device)
        self.fitting, preprocess, _ = make_scanner(device=dev)
        self.decoder = Decoder(preprocess, max_pixels)
        self.preprocess = {k: (list(v) if isinstance(v, tuple) else v) for k, v in preprocess.items()}

    def __call__(self, batch: dict) -> dict:
        items, skipped = [], []
        for i in range(len(batch["record"])):
            skipped += json.loads(batch["skipped"][i])
            if not batch["record"][i]:
                continue
            f = json.loads(batch["record"][i])
            rec = Record(f["image_id"], f["path"], f["label"], tuple(f["box"]) if f["box"] else None, f["meta"],
                         bytes(batch["data"][i]) if f["has_data"] else None, f["error"])
            items.append(self.decoder(rec, len(items)))
        tables = self.fitting.run(collate(items)) if items else {}
        # The limit after the batch: lower than the batch size if memory ran out on the way.
        out = {"skipped": [json.dumps(skipped)], "limit": [self.fitting.limit],
               "preprocess": [json.dumps(self.preprocess)]}
        for name in TABLES:
            out[name] = [_ipc(tables[name]) if name in tables else b""]
        return out


def _actors(ray, device: str, workers: int) -> tuple[int, dict]:
    """How many actors and what each asks of the cluster: one GPU each, or a share of a CPU."""
    if device.startswith("cuda"):
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if gpus < 1:
            raise AuditError("--engine ray --device cuda: the Ray cluster has no GPU; use --device cpu")
        return gpus, {"num_gpus": 1}
    return max(1, workers), {"num_cpus": CPU_PER_ACTOR}


def _read_tasks(n_shards: int, n_actors: int) -> list[dict]:
    """One read task per shard; a source with fewer shards than twice the actors (a folder, a manifest, one tar)
    is read in that many interleaved parts, so that every actor gets work."""
    parts = 1 if n_shards >= 2 * n_actors else -(-2 * n_actors // max(1, n_shards))
    return [{"shard": s, "part": k, "parts": parts} for s in range(n_shards) for k in range(parts)]


def _device(ray, asked: str) -> str:
    if asked != "auto":
        return asked
    return "cuda" if ray.cluster_resources().get("GPU", 0) >= 1 else "cpu"


def scan_on_ray(plan, writer, pending, counts, make_scanner, start_line) -> None:
    """Scan plan.source on Ray, committing units through `writer`; updates `counts` like the local engine.
    `make_scanner(device=...)` builds (fitting, preprocess, batch size) inside an actor, and
    `start_line(batch_size=..., where=...)` words the scan's opening line as the local engine does."""
    ray = require("ray", "--engine ray")
    require("ray.data", "--engine ray")
    started_here = not ray.is_initialized()
    with _quiet_ray():
        _scan(ray, plan, writer, pending, counts, make_scanner, start_line, started_here)


@contextlib.contextmanager
def _quiet_ray():
    """Ray's own progress and start-up chatter would drown the scan's lines; its warnings and errors still show.
    The process's settings are given back afterwards: a library must not change its caller's logging."""
    env = os.environ.get("RAY_BACKEND_LOG_LEVEL")
    loggers = {name: logging.getLogger(name).level for name in ("ray", "ray.data")}
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        if env is None:
            os.environ.pop("RAY_BACKEND_LOG_LEVEL", None)
        else:
            os.environ["RAY_BACKEND_LOG_LEVEL"] = env
        for name, level in loggers.items():
            logging.getLogger(name).setLevel(level)


def _scan(ray, plan, writer, pending, counts, make_scanner, start_line, started_here) -> None:
    opts = plan.opts
    if started_here:
        ray.init(address=opts.ray_address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING, configure_logging=False)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.execution_options.preserve_order = False
        ctx.print_on_execution_start = False
        device = _device(ray, opts.device)
        n_actors, resources = _actors(ray, device, opts.workers)
        batch_size = plan.batch_size if not (device.startswith("cuda") and opts.batch_size == "auto") else 256
        counts.batch_size = batch_size
        if not opts.quiet:
            log.info(start_line(batch_size=batch_size, where=f"Ray, {n_actors} actor(s) on {device}"))
        shards = plan.source.shards
        done_ref = ray.put(pending.done)
        tasks = _read_tasks(len(shards), n_actors)
        ds = ray.data.from_items(tasks, override_num_blocks=len(tasks))
        ds = ds.flat_map(_Reader(shards, done_ref), num_cpus=CPU_PER_ACTOR)
        ds = ds.map_batches(_ScanActor, batch_size=batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=n_actors),
                            fn_constructor_kwargs={"make_scanner": make_scanner, "device": device,
                                                   "max_pixels": opts.max_pixels}, **resources)
        progress = Progress(pending.pending, quiet=opts.quiet)
        try:
            for unit in ds.iter_rows():
                tables = {name: _from_ipc(unit[name]) for name in TABLES if len(unit[name])}
                if tables:
                    writer.add(tables)
                ids = counts.add(tables, json.loads(unit["skipped"]), pending.failed)
                counts.preprocess = json.loads(unit["preprocess"])
                limit = int(unit["limit"])
                counts.batch_size_used = limit if counts.batch_size_used is None else min(counts.batch_size_used, limit)
                progress.update(len(ids))
        finally:
            writer.flush()
            progress.close()
    finally:
        if started_here:
            ray.shutdown()
