"""audit: what a CLIP vision transformer thinks of every image in a dataset, and where it looks."""

from audit.store.reader import Scan
from audit.version import __version__


def scan(source, out, **options) -> Scan:
    """Scan a dataset (image folder or manifest) into `out`; returns a handle that reads the tables back.

    Options are those of `audit scan` with underscores (model, pretrained, steps, batch_size, ...).
    """
    from audit.scanner.pipeline import run_scan

    return run_scan(source, out, **options)


__all__ = ["Scan", "scan", "__version__"]
