"""The user-facing flow on the demo's two datasets, reduced to digests: run before and after a refactor, the two
JSON files must be equal (identical rows, report findings, check results and diff).

    python bench/flow_identity.py --out bench-out/flow-before.json     # on the old commit
    python bench/flow_identity.py --out bench-out/flow-after.json      # on the new one
    diff bench-out/flow-before.json bench-out/flow-after.json

Both datasets are scanned with every opinion (ascent, concepts, probes) by the bundled demo model on the CPU,
then reported, checked with the example policy (the planted scan with the unbiased one as baseline, and alone),
and diffed. Run-time values (times, dates, paths) are left out of the digests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import tempfile
from pathlib import Path

import pyarrow as pa

import audit
from audit.demo import DEMO_SETTINGS, POLICY, make_dataset

KEYS = {"images": ["image_id"], "tokens": ["image_id", "kind", "word"], "heatmaps": ["image_id", "kind", "word"],
        "errors": ["image_id"]}


def table_digest(scan: audit.Scan, name: str) -> dict:
    table: pa.Table = scan.table(name)
    if table.num_rows:
        table = table.sort_by([(k, "ascending") for k in KEYS[name]])
    cols = sorted(c for c in table.column_names if c != "path")  # paths hold the temporary folder
    h = hashlib.sha256()
    for c in cols:
        h.update(c.encode())
        h.update(json.dumps(table.column(c).to_pylist(), default=str).encode())
    return {"rows": table.num_rows, "sha256": h.hexdigest()}


def scrub(text: str, roots: list[Path]) -> str:
    for root in roots:  # as written, and as Markdown escapes it
        text = text.replace(str(root), "<root>").replace(str(root).replace("_", "\\_"), "<root>")
    return re.sub(r"\d{4}-\d\d-\d\dT[\d:]+(\+00:00)?", "<time>", text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--images", type=int, default=30)
    args = ap.parse_args()
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        scans = {}
        for name, seed, bias in (("planted", 0, 0.9), ("unbiased", 1, None)):
            manifest = make_dataset(root / name / "dataset", images=args.images, seed=seed, bias=bias)
            scans[name] = root / name / "scan"
            scan = audit.scan(manifest, scans[name], model="audit-demo", pretrained="auto", workers=0, device="cpu",
                              quiet=True, opinion="both", words=("grass", "red circle", "snow"), **DEMO_SETTINGS)
            result[name] = {t: table_digest(scan, t) for t in KEYS}
            rep = audit.report(scans[name], ["label", "shape"], min_count=3)
            result[name]["findings"] = json.loads(rep.findings.to_json(orient="records", double_precision=12))
        for label, base in (("check", None), ("check_baseline", scans["unbiased"])):
            outcome = audit.check(scans["planted"], POLICY, baseline=base)
            repo = Path(audit.__file__).resolve().parents[1]  # the policy's path: which checkout ran
            result[label] = {"exit": outcome.exit_code,
                             "json": json.loads(scrub(outcome.to_json(), [root, repo]))}
        d = audit.diff(scans["unbiased"], scans["planted"], group_by="label", min_count=3)
        result["diff"] = scrub(d.markdown(), [root])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
