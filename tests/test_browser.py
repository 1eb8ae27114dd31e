"""The report as a user sees it: headless Chromium, screenshot, no console errors, no requests, no script but its
own; and, driven by Playwright through the same Chromium, a report of 300 groups searched, sorted and opened."""

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
    assert run.dom.lower().count("<script") == 2 and "<img src=\"x\"" not in run.dom  # its data and its code
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


def many_groups_scan(tmp_path, groups=300, per_group=6):
    """`groups` groups of `per_group` images: 'sky' everywhere, 'snow' on every image of group-007 only, one
    group named with a hostile string, and a word per image drawn from 40 common ones."""
    rs = np.random.default_rng(0)
    names = [f"group-{k:03d}" for k in range(groups)]
    names[5] = HOSTILE_LABEL
    images = [{"image_id": f"{k}-{i}", "label": names[k]} for k in range(groups) for i in range(per_group)]
    words = {im["image_id"]: ["sky", f"w{rs.integers(40)}"] for im in images}
    for i in range(per_group):
        words[f"7-{i}"].append("snow")
    return write_scan(tmp_path / "scan", images, words)


def test_a_report_of_300_groups_is_searched_sorted_and_opened(tmp_path):
    import shutil

    from playwright import sync_api  # a dev dependency: missing, the test fails rather than skips
    html = build_report(many_groups_scan(tmp_path), ["label"], tmp_path / "report.html", min_count=3)
    assert html.stat().st_size < 2_000_000
    console, requests, errors = [], [], []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or shutil.which("chromium-browser"),
                                    args=["--no-sandbox"])
        page = browser.new_page()
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(html.resolve().as_uri())
        groups = page.locator("#s1-groups tbody tr")
        assert groups.count() == 300 and page.locator(".group-detail").count() == 0  # too many to open them all
        # The findings come first: snow with group-007.
        findings = page.locator("#findings-table tbody tr")
        assert "snow" in findings.first.inner_text() and "group-007" in findings.first.inner_text()
        page.fill('input[data-table="findings-table"][data-column="3"]', "sno")
        assert page.locator("#findings-table tbody tr:visible").count() == findings.filter(has_text="snow").count()
        # Search a group, open it: its detail shows its table.
        page.fill('input[data-table="s1-groups"]', "group-123")
        visible = page.locator("#s1-groups tbody tr:visible")
        assert visible.count() == 1 and visible.first.locator("td").first.inner_text() == "group-123"
        assert page.locator("#s1-groups-count").inner_text() == "1 of 300 shown"
        strongest = visible.first.locator("td").nth(3).inner_text()
        visible.first.locator("button.open").click()
        detail = page.locator(".group-detail")
        assert detail.count() == 1 and detail.locator("h4").inner_text().startswith("group-123 (6 images)")
        assert detail.locator("tbody tr").count() == 10  # its top words (TOP)
        assert detail.locator("tbody tr").first.locator("td").first.inner_text() == strongest
        assert detail.locator(".bar").count() == detail.locator("tbody tr").count()
        # Sorting by findings puts group-007 first; the hostile group opens as text.
        page.fill('input[data-table="s1-groups"]', "")
        page.click("#s1-groups th:has-text('findings')")
        assert page.locator("#s1-groups tbody tr").first.locator("td").first.inner_text() == "group-007"
        page.fill('input[data-table="s1-groups"]', "script")
        page.locator("#s1-groups tbody tr:visible button.open").click()
        assert page.locator(".group-detail h4").last.inner_text().startswith(HOSTILE_LABEL)
        assert page.title() != "PWNED"
        page.locator(".group-detail button.close").first.click()
        assert page.locator(".group-detail").count() == 1
        browser.close()
    assert errors == [] and console == []
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
