"""The report as a user sees it: headless Chromium, screenshot, no console errors, no requests, no script."""

import numpy as np
from PIL import Image

from audit.outputs.report import build_report

from .browser import open_page
from .scanfactory import write_scan
from .test_report import HOSTILE_LABEL, HOSTILE_WORD, planted


def test_the_detectors_catch_a_bad_page(tmp_path):
    """Control: a page that fetches, logs and runs script is caught, so a pass below means something."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><head><title>ok</title></head><body><img src='http://example.invalid/x.png'>"
                   "<script>console.error('boom'); document.title='PWNED'</script></body></html>")
    run = open_page(bad, tmp_path / "chromium")
    assert run.requests == ["http://example.invalid/x.png"]
    assert any("boom" in line for line in run.console)
    assert "<title>PWNED</title>" in run.dom


def test_report_in_chromium_is_inert_and_readable(tmp_path):
    scan = planted(tmp_path, label_b=HOSTILE_LABEL, word=HOSTILE_WORD, image_dir=tmp_path)
    html = build_report(scan, ["label"], tmp_path / "report.html", min_count=3, title="Hostile <b>title</b>")
    run = open_page(html, tmp_path / "chromium")
    assert run.console == []
    assert run.requests == []
    assert "<title>Hostile &lt;b&gt;title&lt;/b&gt;</title>" in run.dom  # no script renamed it
    assert "<script" not in run.dom.lower() and "<img src=\"x\"" not in run.dom
    assert HOSTILE_LABEL.replace("<", "&lt;").replace(">", "&gt;") in run.dom  # shown as text
    img = np.asarray(Image.open(run.screenshot).convert("L"), dtype=float)
    assert img.shape == (2400, 1200) and img.std() > 10  # something is drawn, not a blank page


def test_empty_findings_render(tmp_path):
    scan = write_scan(tmp_path / "scan", [{"image_id": f"i{k}", "label": "A" if k % 2 else "B"} for k in range(6)],
                      {f"i{k}": ["same"] for k in range(6)})
    html = build_report(scan, ["label"], tmp_path / "r.html", min_count=1)
    run = open_page(html, tmp_path / "chromium")
    assert run.console == [] and run.requests == []
    assert "No word is associated with any group" in run.dom
