"""Fingerprints for a scan made before scans took them (schema 6): its images read again from their stored
paths, by `audit duplicates`, into a table of their own (the scan's files are never edited)."""

from __future__ import annotations

import logging

import pyarrow as pa

from audit.sources.decode import DecodeError, open_rgb
from audit.sources.fingerprint import fingerprint
from audit.sources.remote import is_url, read_bytes
from audit.store.schema import FINGERPRINTS

log = logging.getLogger("audit.fingerprint")


def fingerprint_files(ids: list[str], paths: list[str], max_pixels: int | None) -> tuple[pa.Table, int]:
    """Fingerprints of images stored before scans took them (schema 6), read again from their stored paths (local
    files or fsspec URLs); returns the FINGERPRINTS rows of those that could be read and how many could not (a
    shard member or a dataset row has no path to open, a file may have moved)."""
    rows: dict[str, list] = {name: [] for name in FINGERPRINTS.names}
    missed = 0
    for image_id, path in zip(ids, paths, strict=True):
        try:
            data = read_bytes(path) if is_url(path) else None
            f = fingerprint(open_rgb(path, max_pixels, data))
        except (DecodeError, OSError, ValueError) as e:
            missed += 1
            log.debug(f"audit: cannot fingerprint {path}: {e}")
            continue
        for name, value in (("image_id", image_id), ("pixel_sha256", f.pixel_sha256), ("phash", f.phash),
                            ("phash_mirror", f.phash_mirror)):
            rows[name].append(value)
    return pa.table(rows, schema=FINGERPRINTS), missed
