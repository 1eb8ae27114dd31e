"""Fingerprints for a scan made before scans took them (schema 6): its images read again by their stored keys
(audit.sources.access), by `audit duplicates`, into a table of their own (the scan's files are never edited)."""

from __future__ import annotations

import logging

import pyarrow as pa

from audit.sources.access import SourceImages, open_fetched
from audit.sources.decode import DecodeError
from audit.sources.fingerprint import fingerprint
from audit.store.schema import FINGERPRINTS

log = logging.getLogger("audit.fingerprint")


def fingerprint_files(ids: list[str], paths: list[str], max_pixels: int | None,
                      source: dict | None = None) -> tuple[pa.Table, int]:
    """Fingerprints of images stored before scans took them (schema 6), read again by their stored keys from the
    scan's `source` (scan.json's; None: files or fsspec URLs); returns the FINGERPRINTS rows of those that could be
    read and how many could not (a file moved, a shard changed)."""
    rows: dict[str, list] = {name: [] for name in FINGERPRINTS.names}
    missed = 0
    for image_id, fetched in SourceImages(source).stream(zip(ids, paths, strict=True)):
        try:
            f = fingerprint(open_fetched(fetched, max_pixels))
        except (DecodeError, OSError, ValueError) as e:
            missed += 1
            log.debug(f"audit: cannot fingerprint {fetched.path}: {e}")
            continue
        for name, value in (("image_id", image_id), ("pixel_sha256", f.pixel_sha256), ("phash", f.phash),
                            ("phash_mirror", f.phash_mirror)):
            rows[name].append(value)
    return pa.table(rows, schema=FINGERPRINTS), missed
