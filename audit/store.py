"""A scan directory on disk: atomic part files, resume bookkeeping, and reading a scan back.

One unit of work (a batch of images) becomes one part file in each table, all named alike. Each part is
written to a hidden temporary name, flushed, then renamed; the `images` part is renamed last and is the
commit marker. On open, temporaries and parts without their `images` twin (a unit killed halfway) are
removed, so a killed scan leaves exactly the committed units and resume redoes the rest.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import __version__
from .errors import AuditError
from .schema import READABLE_VERSIONS, SCHEMA_VERSION, SCHEMAS, TABLES, conform, empty_table, upgrade

CONFIG_FILE = "scan.json"
_PART = re.compile(r"^part-(\d{6,})\.parquet$")


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


def _parts(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _PART.match(p.name))


def _diff(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "; ".join(f"{k}: stored {old.get(k)!r}, now {new.get(k)!r}" for k in keys[:4])


class ScanWriter:
    """Exclusive writer of one scan directory (a lock file keeps a second scan out)."""

    def __init__(self, root: Path, config: dict, lock_fd: int, made_dir: bool = False):
        self.root = root
        self.config = config
        self._lock_fd = lock_fd
        # A run that made the scan directory, and has committed nothing, may take it back on failure.
        self.made_dir = made_dir
        self.created = not config.get("runs") and not _parts(root / "images")
        self._next = 1 + max((int(_PART.match(p.name).group(1)) for t in TABLES for p in _parts(root / t)),
                             default=0)

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
        lock_fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise AuditError(f"another audit scan is writing to {root}; wait for it or pass another --out") from None
        try:
            config = cls._prepare(root, settings, source, overwrite)
        except BaseException:
            os.close(lock_fd)
            raise
        writer = cls(root, config, lock_fd, made_dir)
        writer.recover()
        return writer

    @staticmethod
    def _prepare(root: Path, settings: dict, source: dict, overwrite: bool) -> dict:
        config_path = root / CONFIG_FILE
        if config_path.exists() and overwrite:
            for t in TABLES:
                shutil.rmtree(root / t, ignore_errors=True)
            config_path.unlink()
        if config_path.exists():
            config = read_config(root, writing=True)
            if config["settings"] != settings:
                raise AuditError(f"{root} holds a scan made with other settings ({_diff(config['settings'], settings)}); "
                                 "resume with the same settings, pass another --out, or --overwrite to start over")
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
        committed = {p.name for p in _parts(self.root / "images")}
        for t in TABLES:
            folder = self.root / t
            folder.mkdir(exist_ok=True)
            for p in folder.iterdir():
                if p.name.startswith(".tmp-") or (t != "images" and _PART.match(p.name) and p.name not in committed):
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
        for p in _parts(self.root / table):  # open() has already removed uncommitted parts
            ids.update(pq.read_table(p, columns=["image_id"]).column(0).to_pylist())
        return ids

    def write_unit(self, tables: dict[str, pa.Table]) -> str:
        """Write one unit of work (every table, possibly empty) and commit it; returns the part name."""
        name = f"part-{self._next:06d}.parquet"
        self._next += 1
        staged = []
        for t in TABLES:
            table = conform(t, tables[t]) if t in tables else empty_table(t)
            tmp = self.root / t / f".tmp-{name}"
            with open(tmp, "wb") as f:
                pq.write_table(table, f, compression="zstd")
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
        if not self.created or _parts(self.root / "images"):
            return
        for t in TABLES:
            shutil.rmtree(self.root / t, ignore_errors=True)
        (self.root / CONFIG_FILE).unlink(missing_ok=True)
        (self.root / ".lock").unlink(missing_ok=True)
        if self.made_dir:
            with contextlib.suppress(OSError):
                self.root.rmdir()

    def record_run(self, run: dict) -> None:
        self.config.setdefault("runs", []).append(run)
        _write_json(self.root / CONFIG_FILE, self.config)

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def _latest_errors(attempts: pa.Table, scanned: pa.Array) -> pa.Table:
    """One row per image that is not scanned: its latest attempt (part files are in commit order)."""
    if attempts.num_rows == 0:
        return attempts
    ids = attempts.column("image_id").to_pylist()
    latest = {image_id: row for row, image_id in enumerate(ids)}  # the last occurrence wins
    keep = sorted(latest.values())
    table = attempts.take(pa.array(keep, pa.int64()))
    return table.filter(pc.invert(pc.is_in(table["image_id"], value_set=scanned)))


def read_config(root: str | os.PathLike, writing: bool = False) -> dict:
    """A scan's scan.json. Readers accept every schema version they can upgrade on the fly; a writer (resume)
    only its own, so one scan never mixes two layouts."""
    path = Path(root) / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AuditError(f"{root} is not an audit scan (no {CONFIG_FILE}); run `audit scan` first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AuditError(f"{path} is damaged ({e}); re-run the scan with --overwrite") from None
    version = config.get("schema_version")
    if version != SCHEMA_VERSION and (writing or version not in READABLE_VERSIONS):
        what = "resumes" if writing and version in READABLE_VERSIONS else "reads"
        raise AuditError(f"{root} was written with schema version {version}, this audit {what} version "
                         f"{SCHEMA_VERSION}; re-run the scan with this version (--overwrite)")
    return config


class Scan:
    """Read access to a scan directory: `scan.tokens()` (pandas) or `scan.table("tokens")` (Arrow)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.config = read_config(self.root)

    def files(self, name: str) -> list[Path]:
        """The committed part files of a table (a unit whose images part is missing is not committed)."""
        if name not in SCHEMAS:
            raise AuditError(f"unknown table {name!r}; tables are {', '.join(TABLES)}")
        committed = {p.name for p in _parts(self.root / "images")}
        return [p for p in _parts(self.root / name) if p.name in committed]

    def table(self, name: str) -> pa.Table:
        """A table's committed rows. For `errors`, each image's latest failed attempt, and none for an image
        that a later attempt scanned (see `error_attempts` for every attempt)."""
        if name == "errors":
            return _latest_errors(self.error_attempts(), self._image_ids())
        return self._read(name)

    def error_attempts(self) -> pa.Table:
        """Every failed attempt ever committed, oldest first (a retried image can have several)."""
        return self._read("errors")

    def _read(self, name: str) -> pa.Table:
        files = self.files(name)
        if not files:
            return empty_table(name)
        table = pa.concat_tables([pq.read_table(p) for p in files], promote_options="default")
        return upgrade(name, table, self.config.get("schema_version"))

    def _image_ids(self) -> pa.Array:
        files = self.files("images")
        if not files:
            return pa.array([], pa.string())
        return pa.concat_arrays([pq.read_table(p, columns=["image_id"]).column(0).combine_chunks() for p in files])

    def df(self, name: str) -> pd.DataFrame:
        return self.table(name).to_pandas()

    def images(self) -> pd.DataFrame:
        return self.df("images")

    def tokens(self) -> pd.DataFrame:
        return self.df("tokens")

    def heatmaps(self) -> pd.DataFrame:
        return self.df("heatmaps")

    def errors(self) -> pd.DataFrame:
        return self.df("errors")

    def __repr__(self) -> str:
        return f"Scan({str(self.root)!r})"
