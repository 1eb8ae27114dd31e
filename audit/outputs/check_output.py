"""The four faces of a check result: a terminal table, JUnit XML, JSON and Markdown for a CI step summary.

Group values, words and paths come from datasets, so each format escapes them its own way: control
characters are shown as escapes on a terminal, characters XML 1.0 cannot hold are replaced, and Markdown
gets HTML entities and backslashes (a CI summary renders HTML).
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
import re
import socket
import unicodedata
import xml.etree.ElementTree as ET

from audit.formats import association
from audit.outputs.files import write_text
from audit.policy.base import ASSOC_EVIDENCE, EVIDENCE_ROWS, RuleResult
from audit.policy.rules import CheckResult
from audit.version import __version__

MARK = {"pass": "PASS", "fail": "FAIL", "warn": "WARN", "skip": "SKIP"}
EMOJI = {"pass": "✅", "fail": "❌", "warn": "⚠️", "skip": "⏭️"}


def plain(text: object) -> str:
    """One terminal line: control and bidi-override characters become visible escapes."""
    out = []
    for ch in str(text):
        cat = unicodedata.category(ch)
        out.append(ch.encode("unicode_escape").decode("ascii") if cat == "Cc" or (cat == "Cf" and ch != "\u200d")
                   else ch)
    return "".join(out)


def _value(v) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.4g}"
    return "–" if v is None else str(v)


def evidence_line(result: RuleResult, row: dict) -> str:
    if set(ASSOC_EVIDENCE) <= set(row):
        return association(row)
    return ", ".join(f"{k}={_value(v)}" for k, v in row.items())


def _tail(result: CheckResult) -> str:
    n = len(result.results)
    return (f"{n} rule(s): {result.count('pass')} passed, {result.count('fail')} failed, {result.count('warn')} "
            f"warned, {result.count('skip')} skipped -> exit {result.exit_code}")


def text(result: CheckResult, evidence_rows: int = 5) -> str:
    lines = [plain(f"audit check: {result.scan} ({result.images} images, {result.unreadable} unreadable); "
                   f"baseline: {result.baseline or 'none'}; policy: {result.policy.path}")]
    if result.copies:
        lines.append(plain(result.copies))
    lines += [plain(f"note: {n}") for n in result.notes]
    width = max(len(r.rule.id) for r in result.results)
    for r in result.results:
        lines.append(plain(f"{MARK[r.status]}  {r.rule.id.ljust(width)}  {r.summary}"))
        if r.status in ("fail", "warn"):
            for row in r.evidence[:evidence_rows]:
                lines.append(plain(f"      - {evidence_line(r, row)}"))
            if len(r.evidence) > evidence_rows:
                lines.append(f"      ... {len(r.evidence) - evidence_rows} more (see --json)")
    lines.append(_tail(result))
    return "\n".join(lines) + "\n"


# ---- JUnit XML ---------------------------------------------------------------------------------------
_XML_BAD = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _x(text: object) -> str:
    return _XML_BAD.sub("\ufffd", str(text))


def junit(result: CheckResult) -> str:
    counts = {"tests": len(result.results), "failures": result.count("fail"), "errors": 0,
              "skipped": result.count("skip")}
    attrs = {k: str(v) for k, v in counts.items()}
    root = ET.Element("testsuites", {"name": "audit check", **attrs, "time": "0"})
    suite = ET.SubElement(root, "testsuite", {
        "name": _x(f"audit check {result.scan}"), **attrs, "time": "0", "id": "0", "package": "audit",
        "hostname": _x(socket.gethostname() or "localhost"),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")})
    props = ET.SubElement(suite, "properties")
    for name, value in (("scan", result.scan), ("baseline", result.baseline or ""),
                        ("policy", result.policy.path), ("images", result.images),
                        ("unreadable", result.unreadable), ("audit_version", __version__)):
        ET.SubElement(props, "property", {"name": name, "value": _x(value)})
    for r in result.results:
        case = ET.SubElement(suite, "testcase", {"classname": f"audit.check.{r.rule.kind}", "name": _x(r.rule.id),
                                                 "time": "0"})
        detail = "\n".join(evidence_line(r, row) for row in r.evidence[:EVIDENCE_ROWS])
        if len(r.evidence) > EVIDENCE_ROWS:
            detail += f"\n... {len(r.evidence) - EVIDENCE_ROWS} more (see the JSON output)"
        if r.status == "fail":
            el = ET.SubElement(case, "failure", {"message": _x(r.summary), "type": r.rule.kind})
            el.text = _x(detail)
        elif r.status == "skip":
            ET.SubElement(case, "skipped", {"message": _x(r.summary)})
        out = ET.SubElement(case, "system-out")
        out.text = _x(("WARNING (level warn): " if r.status == "warn" else "") + r.summary
                      + ("\n" + detail if detail and r.status == "warn" else ""))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# ---- JSON ---------------------------------------------------------------------------------------------
def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def to_json(result: CheckResult) -> str:
    doc = {
        "tool": "audit check", "version": __version__, "status": "fail" if result.exit_code else "pass",
        "exit_code": result.exit_code, "scan": result.scan, "baseline": result.baseline,
        "policy": result.policy.path, "group_by": result.policy.group_by, "min_count": result.policy.min_count,
        "fdr": result.policy.fdr, "images": result.images, "unreadable": result.unreadable, "notes": result.notes,
        "copies": result.copies, "copies_mode": result.copies_mode,
        "counts": {s: result.count(s) for s in MARK},
        "rules": [{"id": r.rule.id, "kind": r.rule.kind, "name": r.rule.name, "level": r.rule.level,
                   "status": r.status, "summary": r.summary, "params": r.rule.params,
                   "measured": r.measured, "evidence": r.evidence} for r in result.results],
    }
    return json.dumps(_clean(doc), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


# ---- Markdown -----------------------------------------------------------------------------------------
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def md(text: object) -> str:
    """Safe inside a Markdown table cell and in a summary that GitHub renders as HTML."""
    s = plain(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", s).replace("\n", " ")


def markdown(result: CheckResult) -> str:
    verdict = "failed" if result.exit_code else "passed"
    lines = [f"## {EMOJI['fail' if result.exit_code else 'pass']} audit check {verdict}", "",
             f"Scan {md(result.scan)}: {result.images} images, {result.unreadable} unreadable. "
             f"Baseline: {md(result.baseline or 'none')}. Policy: {md(result.policy.path)}.", ""]
    if result.copies:
        lines += [md(result.copies[0].upper() + result.copies[1:]) + ".", ""]
    lines += [f"> **Note:** {md(n)}\n" for n in result.notes]
    lines += ["| | Rule | Level | Result |", "|---|---|---|---|"]
    for r in result.results:
        lines.append(f"| {EMOJI[r.status]} | {md(r.rule.id)} | {r.rule.level} | {md(r.summary)} |")
    lines += ["", md(_tail(result).replace("->", "→")), ""]
    for r in result.results:
        if r.status not in ("fail", "warn") or not r.evidence:
            continue
        keys = list(r.evidence[0])
        lines += [f"<details><summary>Evidence for {html.escape(plain(r.rule.id))} ({len(r.evidence)} row(s))"
                  "</summary>", "",
                  "| " + " | ".join(md(k) for k in keys) + " |", "|" + "---|" * len(keys)]
        for row in r.evidence[:EVIDENCE_ROWS]:
            lines.append("| " + " | ".join(md(_value(row.get(k))) for k in keys) + " |")
        if len(r.evidence) > EVIDENCE_ROWS:
            lines.append(f"\n{len(r.evidence) - EVIDENCE_ROWS} more rows in the JSON output.")
        lines += ["", "</details>", ""]
    return "\n".join(lines) + "\n"


def write_outputs(result: CheckResult, *, junit_path: str | os.PathLike | None = None,
                  json_path: str | os.PathLike | None = None, markdown_path: str | os.PathLike | None = None) -> None:
    """Write each format asked for, whole or not at all."""
    outputs = ((junit_path, junit, "junit.xml"), (json_path, to_json, "check.json"),
               (markdown_path, markdown, "summary.md"))
    for path, render, example in outputs:
        if path is not None:
            write_text(path, render(result), example)
