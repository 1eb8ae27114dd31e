"""The one writer of a scan directory: atomic part files, resume bookkeeping, the commit marker.

A part holds one or more units of work (a scan's batches): `add` gathers them and commits a part once it holds
COMMIT_IMAGES images or the last commit is `commit_seconds` old, so a kill loses about that much work (and the
batch in progress), and a million images are a few hundred files rather than tens of thousands (reading them
back, `audit ask` pays per file). Each part is written to a hidden temporary name, flushed, then renamed; the
`images` part is renamed last and is the commit marker. On open, temporaries and parts without their `images` twin (a unit killed halfway) are
removed, so a killed scan leaves exactly the committed units and resume redoes the rest.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import time
from pathlib import Path

import filelock
import pyarrow as pa
import pyarrow.parquet as pq

from audit.errors import AuditError
from audit.store.layout import CONFIG_FILE, PART, parts, read_config
from audit.store.schema import (
    SCHEMA_VERSION,
    TABLES,
    VOCABULARY_FOLDER,
    compression,
    conform,
    dictionary_columns,
    empty_table,
    statistics_columns,
)
from audit.store.settings import upgrade as upgrade_settings
from audit.version import __version__

# Images in one committed part, at most: bounds what a part holds in memory before it is written (rows and maps of
# 8,192 images are tens of MB) and is large enough that reading a part costs far more than opening it.
COMMIT_IMAGES = 8192
COMMIT_SECONDS = 60.0  # the default: at most a minute of work lost to a kill


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _diff(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "; ".join(f"{k}: stored {old.get(k)!r}, now {new.get(k)!r}" for k in keys[:4])


class ScanWriter:
    """Exclusive writer of one scan directory (a lock file keeps a second scan out)."""

    def __init__(self, root: Path, config: dict, lock: filelock.BaseFileLock, made_dir: bool = False):
        self.root = root
        self.config = config
        self._lock = lock
        # A run that made the scan directory, and has committed nothing, may take it back on failure.
        self.made_dir = made_dir
        self.created = not config.get("runs") and not parts(root / "images")
        self._next = 1 + max((int(PART.match(p.name).group(1)) for t in TABLES for p in parts(root / t)),
                             default=0)
        self.commit_seconds = COMMIT_SECONDS
        self._held: list[dict[str, pa.Table]] = []
        self._held_images = 0
        self._committed_at = time.monotonic()

    @classmethod
    def open(cls, out: str | os.PathLike, settings: dict, source: dict, overwrite: bool = False) -> ScanWriter:
        root = Path(out)
        if root.exists() and not root.is_dir():
            raise AuditError(f"--out {root} is a file; pass a directory (new or an earlier scan)")
        config_path = root / CONFIG_FILE
        ours = {".lock", f".tmp-{CONFIG_FILE}"}  # all a run killed before its first commit can leave
        if root.is_dir() and not config_path.exists() and any(p.name not in ours for p in root.iterdir()):
            raise AuditError(f"--out {root} is not empty and holds no audit scan; pass a new or empty directory")
        made_dir = not root.exists()
        root.mkdir(parents=True, exist_ok=True)
        # An OS lock (flock on POSIX, msvcrt on Windows): the system drops it when a process dies, even by kill -9.
        lock = filelock.FileLock(root / ".lock")
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            raise AuditError(f"another audit scan is writing to {root}; wait for it or pass another --out") from None
        try:
            config = cls._prepare(root, settings, source, overwrite)
        except BaseException:
            lock.release()
            raise
        writer = cls(root, config, lock, made_dir)
        writer.recover()
        return writer

    @staticmethod
    def _prepare(root: Path, settings: dict, source: dict, overwrite: bool) -> dict:
        config_path = root / CONFIG_FILE
        if config_path.exists() and overwrite:
            # The vocabulary's text embeddings go too: they name no scan state to be found stale by, and the
            # scan that starts over may use another model.
            for t in (*TABLES, VOCABULARY_FOLDER):
                shutil.rmtree(root / t, ignore_errors=True)
            config_path.unlink()
        if config_path.exists():
            config = read_config(root)
            stored = upgrade_settings(config["settings"], config.get("runs", []))
            if "precision" not in stored and "precision" in settings:
                # Made before --precision and killed before its first run was recorded: nothing says otherwise.
                stored["precision"] = settings["precision"]
            if stored != settings:
                raise AuditError(f"{root} holds a scan made with other settings ({_diff(stored, settings)}); "
                                 "resume with the same settings, pass another --out, or --overwrite to start over")
            if config["schema_version"] != SCHEMA_VERSION or config["settings"] != settings:
                # Resuming an older scan: its parts stay as they are (readers upgrade them), new ones are current;
                # its settings are stored in this audit's form.
                if config["schema_version"] != SCHEMA_VERSION:
                    config.setdefault("upgraded_from", config["schema_version"])
                config.update(schema_version=SCHEMA_VERSION, settings=settings)
                _write_json(config_path, config)
            return config
        config = {
            "tool": "audit", "tool_version": __version__, "schema_version": SCHEMA_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "settings": settings, "source": source, "runs": [],
        }
        _write_json(config_path, config)  # before the table folders: without it the folder is not ours
        for t in TABLES:
            (root / t).mkdir(exist_ok=True)
        return config

    def recover(self) -> list[str]:
        """Delete temporaries and half-committed units; returns what was removed."""
        removed = []
        (self.root / f".tmp-{CONFIG_FILE}").unlink(missing_ok=True)
        committed = {p.name for p in parts(self.root / "images")}
        for t in TABLES:
            folder = self.root / t
            folder.mkdir(exist_ok=True)
            for p in folder.iterdir():
                if p.name.startswith(".tmp-") or (t != "images" and PART.match(p.name) and p.name not in committed):
                    p.unlink()
                    removed.append(f"{t}/{p.name}")
        return removed

    def scanned_ids(self) -> set[str]:
        """Images with a committed `images` row."""
        return self._ids("images")

    def failed_ids(self) -> set[str]:
        """Images with a committed error row (some may have been scanned by a later attempt)."""
        return self._ids("errors")

    def _ids(self, table: str) -> set[str]:
        ids: set[str] = set()
        for p in parts(self.root / table):  # open() has already removed uncommitted parts
            ids.update(pq.read_table(p, columns=["image_id"]).column(0).to_pylist())
        return ids

    def add(self, tables: dict[str, pa.Table]) -> str | None:
        """Hold one unit of work (every table, possibly empty), and commit what is held once it is COMMIT_IMAGES
        images or the last commit (or the writer's opening) is `commit_seconds` old (0: every unit at once);
        returns the part name committed, if any. Units held are not committed until then: call `flush` when the
        work ends, however it ends."""
        self._held.append(tables)
        self._held_images += sum(tables[t].num_rows for t in ("images", "errors") if t in tables)
        if self._held_images >= COMMIT_IMAGES or time.monotonic() - self._committed_at >= self.commit_seconds:
            return self.flush()
        return None

    def flush(self) -> str | None:
        """Commit the units held as one part; returns its name (None when nothing was held)."""
        if not self._held:
            return None
        held, self._held, self._held_images = self._held, [], 0
        merged = held[0]
        if len(held) > 1:
            merged = {}
            for t in TABLES:
                tables = [conform(t, u[t]) for u in held if t in u and u[t].num_rows]
                if tables:
                    merged[t] = pa.concat_tables(tables, promote_options="default")
        name = self.write_unit(merged)
        self._committed_at = time.monotonic()
        return name

    def write_unit(self, tables: dict[str, pa.Table]) -> str:
        """Write one unit of work (every table, possibly empty) and commit it now; returns the part name."""
        name = f"part-{self._next:06d}.parquet"
        self._next += 1
        staged = []
        for t in TABLES:
            table = conform(t, tables[t]) if t in tables else empty_table(t)
            tmp = self.root / t / f".tmp-{name}"
            with open(tmp, "wb") as f:
                pq.write_table(table, f, compression=compression(table), use_dictionary=dictionary_columns(table),
                               write_statistics=statistics_columns(table))
                f.flush()
                os.fsync(f.fileno())
            staged.append((tmp, self.root / t / name))
        # images last: its rename is the commit.
        for tmp, final in sorted(staged, key=lambda s: s[1].parent.name == "images"):
            os.replace(tmp, final)
        for t in TABLES:
            _fsync_dir(self.root / t)
        return name

    def discard_if_unused(self) -> None:
        """Undo a scan directory this run created but never committed to (say, the model failed to load),
        so that a retry with other settings is not refused."""
        if not self.created or parts(self.root / "images"):
            return
        for t in TABLES:
            shutil.rmtree(self.root / t, ignore_errors=True)
        (self.root / CONFIG_FILE).unlink(missing_ok=True)
        (self.root / ".lock").unlink(missing_ok=True)
        if self.made_dir:
            with contextlib.suppress(OSError):
                self.root.rmdir()

    def set_config(self, key: str, value) -> None:
        """Record something a scan decided once and every later run must reuse (the concept image mean)."""
        self.config[key] = value
        _write_json(self.root / CONFIG_FILE, self.config)

    def record_run(self, run: dict) -> None:
        self.config.setdefault("runs", []).append(run)
        _write_json(self.root / CONFIG_FILE, self.config)

    def close(self) -> None:
        if self._lock.is_locked:
            self._lock.release()
