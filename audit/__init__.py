"""audit: what a CLIP vision transformer thinks of every image in a dataset, and where it looks.

    import audit
    scan = audit.scan("photos", "photos-scan", model="ViT-B-32", pretrained="openai")
    audit.report("photos-scan", "label").write("report.html")
    result = audit.check("photos-scan", "audit-policy.toml")
    result.passed, result.to_json()
    audit.diff("accepted-scan", "photos-scan", group_by="label").write("diff.md")
"""

from audit.api import (
           CheckOutcome,
           DiffOutcome,
           Report,
           ask,
           check,
           diff,
           duplicates,
           explain,
           report,
           scan,
           slices,
           verify,
)
from audit.scanner.options import ScanOptions
from audit.store.reader import Scan
from audit.version import __version__

__all__ = ["CheckOutcome", "DiffOutcome", "Report", "Scan", "ScanOptions", "__version__", "ask", "check", "diff",
           "duplicates",
           "explain", "report", "scan", "slices", "verify"]
