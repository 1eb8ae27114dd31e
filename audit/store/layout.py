"""Where a scan directory keeps what: its config file and the part files of each table.

One commit (a scan's batches since the last one: store.writer) becomes one part file in each table, all named
alike; the `images` part is the commit marker. The writer and the reader share these names and nothing else.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from audit.errors import AuditError
from audit.store.schema import READABLE_VERSIONS, SCHEMA_VERSION, VOCABULARY_FOLDER, vocabulary_table

CONFIG_FILE = "scan.json"
PART = re.compile(r"^part-(\d{6,})\.parquet$")


def parts(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if PART.match(p.name))


def read_config(root: str | os.PathLike) -> dict:
    """A scan's scan.json, of any schema version this audit reads (and resumes: older parts are upgraded on
    the fly, column by column)."""
    path = Path(root) / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AuditError(f"{root} is not an audit scan (no {CONFIG_FILE}); run `audit scan` first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AuditError(f"{path} is damaged ({e}); re-run the scan with --overwrite") from None
    version = config.get("schema_version")
    if version not in READABLE_VERSIONS:
        raise AuditError(f"{root} was written with schema version {version}, this audit reads versions "
                         f"{', '.join(map(str, READABLE_VERSIONS))} (it writes {SCHEMA_VERSION}); re-run the scan "
                         "with this version (--overwrite), or use the audit that wrote it")
    return config


def committed_parts(root: Path, table: str) -> list[Path]:
    """The part files of a table whose unit is committed (its `images` twin exists)."""
    committed = {p.name for p in parts(root / "images")}
    return [p for p in parts(root / table) if p.name in committed]


def replace_folder(root: Path, name: str, write) -> bool:
    """A second pass's folder of whole files (duplicates/, slices/) replaced at once: `write(tmp)` fills a
    temporary folder, which is then renamed over the old one, so a reader sees the old files or the new, never a
    mix. False where the scan directory cannot be written (a read-only snapshot): nothing is left behind."""
    folder, tmp, old = root / name, root / f".tmp-{name}", root / f".old-{name}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        write(tmp)
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
        return True
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return False


VOCABULARY_FILE = "vocabulary.parquet"


def vocabulary_path(root: str | os.PathLike) -> Path:
    """Where a scan directory keeps its vocabulary's text embeddings (schema.VOCABULARY)."""
    return Path(root) / VOCABULARY_FOLDER / VOCABULARY_FILE


def write_vocabulary(root: Path, words: list[str], vectors, model: str) -> bool:
    """A vocabulary's text embeddings into scan-dir/vocabulary/ (schema.VOCABULARY), with the model identity they
    were made under. False where the scan directory cannot be written."""
    table = vocabulary_table(list(words), vectors).replace_schema_metadata({"model": model})
    return replace_folder(Path(root), VOCABULARY_FOLDER, lambda tmp: pq.write_table(table, tmp / VOCABULARY_FILE))
