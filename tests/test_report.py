"""The report's numbers against hand-computed values, its escaping, its errors, and its rendering."""

import json
import math

import pytest

import audit
from audit.analysis.associations import associations
from audit.analysis.stats import association_test, bh_qvalues, fisher_exact, log_odds_ci
from audit.cli import main
from audit.outputs.report import build_report, render_report
from audit.store.query import ScanQuery

from .scanfactory import write_scan

HOSTILE_LABEL = "<script>document.title='PWNED'</script>"
HOSTILE_WORD = "\"><img src=x onerror=\"document.title='PWNED'\">"


def planted(tmp_path, label_b="B", word="grass", image_dir=None):
    """20 images: 10 in A, 10 in B. `word` in 8 of A and 1 of B; 'sky' in 5 of each; 'rare' in 2 of A."""
    images = [{"image_id": f"a{i}", "label": "A"} for i in range(10)]
    images += [{"image_id": f"b{i}", "label": label_b} for i in range(10)]
    words = {im["image_id"]: [] for im in images}
    for i in range(8):
        words[f"a{i}"].append(word)
    words["b0"].append(word)
    for i in range(5):
        words[f"a{i}"].append("sky")
        words[f"b{i}"].append("sky")
    words["a8"].append("rare")
    words["a9"].append("rare")
    return write_scan(tmp_path / "scan", images, words, image_dir=image_dir, errors=["broken.png"])


def test_associations_match_hand_computed_values(tmp_path):
    """One-sided (is the word over-represented in the group?): Fisher's mid-p, each (group, word) its own
    hypothesis."""
    result = associations(ScanQuery.open(planted(tmp_path)), "label", min_count=3, fdr=0.05, procedure="bh")
    t = result.table.set_index(["grp", "word"])
    assert set(t.index) == {("A", "grass"), ("B", "grass"), ("A", "sky"), ("B", "sky")}  # 'rare' < 3 images
    row = t.loc[("A", "grass")]
    assert (row.a, row.n_group, row.c) == (8, 10, 1)
    assert row.test == "fisher-mid-p"
    assert math.isclose(row.p, fisher_exact(8, 2, 1, 9, "greater", mid=True))
    # P(X > 8) + P(X = 8) / 2, X the images of A among the 9 with grass
    assert math.isclose(row.p, (math.comb(9, 8) * math.comb(11, 2) / 2 + math.comb(11, 1)) / math.comb(20, 10))
    lor, lo, hi = log_odds_ci(8, 2, 1, 9)
    assert math.isclose(row.log_odds, lor) and math.isclose(row.log_odds_lo, lo)
    assert math.isclose(row.lift, 0.8 / 0.45)
    ps = [association_test(*t, "greater")[0] for t in ((8, 2, 1, 9), (1, 9, 8, 2), (5, 5, 5, 5), (5, 5, 5, 5))]
    assert math.isclose(ps[2], 0.5)  # sky: no difference, half the mass either way
    q = dict(zip([("A", "grass"), ("B", "grass"), ("A", "sky"), ("B", "sky")], bh_qvalues(ps), strict=True))
    for key, qv in q.items():
        assert math.isclose(t.loc[key].q, qv)
    assert list(result.flagged.word) == ["grass"] and list(result.flagged.grp) == ["A"]
    assert result.table.iloc[0].word == "grass"  # ranked by the conservative bound
    looks = result.looks
    assert set(looks.stat) == {"box_mass", "border_mass", "entropy"} and (looks.n_group == 8).all()


def test_report_escapes_hostile_strings_and_embeds_everything(tmp_path):
    scan = planted(tmp_path, label_b=HOSTILE_LABEL, word=HOSTILE_WORD, image_dir=tmp_path)
    out = build_report(scan, ["label"], tmp_path / "r.html", min_count=3)
    html = out.read_text()
    assert HOSTILE_LABEL not in html and HOSTILE_WORD not in html
    assert "&lt;script&gt;document.title=" in html
    assert "&#34;&gt;&lt;img src=x onerror=" in html
    # The only scripts are the report's own two: its data (JSON that no '<' can close) and its code, which the
    # Content-Security-Policy names by hash, so nothing else could run even if a string escaped.
    assert html.lower().count("<script") == 2
    data = html.split('<script type="application/json" id="report-data">')[1].split("</script>")[0]
    assert "<" not in data and ">" not in data and "&" not in data
    groups = json.loads(data)["sections"]["s1"]["groups"]
    assert HOSTILE_LABEL in [g["name"] for g in groups]
    code = html.split("<script>")[1].split("</script>")[0]
    import base64
    import hashlib

    digest = base64.b64encode(hashlib.sha256(code.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in html and "innerHTML" not in code
    assert "http://" not in html and "https://" not in html and "src=\"x\"" not in html
    # One flagged association (grass with A, 8 images): the report embeds its first EXAMPLES images.
    from audit.outputs.report import EXAMPLES

    assert html.count("data:image/png;base64,") == EXAMPLES == 4
    assert "Methods: what these numbers mean" in html
    # An ascent scan: the overview counts its words; the concept opinion's settings are not shown.
    n_words = len(audit.Scan(scan).tokens())
    assert f"<b>{n_words}</b>(image, word) pairs from the ascent" in html and "<td>concept_l1</td>" not in html


def test_report_user_errors_exit_2(tmp_path, capsys):
    scan = planted(tmp_path)
    empty = write_scan(tmp_path / "empty", [], {})
    other = tmp_path / "other"
    write_scan(other, [{"image_id": "x", "label": "A"}], {"x": []})
    cfg = json.loads((other / "scan.json").read_text())
    cfg["schema_version"] = 99
    (other / "scan.json").write_text(json.dumps(cfg))
    cases = [
        (["report", str(scan), "--group-by", "colour", "--out", str(tmp_path / "r.html")], "unknown --group-by column 'colour'"),
        (["report", str(empty), "--group-by", "label", "--out", str(tmp_path / "r.html")], "holds no scanned images"),
        (["report", str(other), "--group-by", "label", "--out", str(tmp_path / "r.html")], "schema version 99"),
        (["report", str(tmp_path / "nope"), "--group-by", "label"], "is not an audit scan"),
        (["report", str(scan), "--group-by", "label", "--fdr", "2"], "--fdr"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], (argv, err)


def test_group_column_is_checked_before_it_reaches_sql(tmp_path):
    q = ScanQuery.open(planted(tmp_path))
    with pytest.raises(Exception, match="unknown --group-by column"):
        q.group_sizes('label" FROM images; DROP TABLE images; --')


def test_a_groups_own_name_is_flagged_but_not_a_finding(tmp_path):
    images = [{"image_id": f"d{i}", "label": "Dog"} for i in range(10)]
    images += [{"image_id": f"c{i}", "label": "cat"} for i in range(10)]
    words = {f"d{i}": ["dog", "leash"] if i < 8 else ["dog"] for i in range(10)}
    words.update({f"c{i}": [] for i in range(10)})
    result = associations(ScanQuery.open(write_scan(tmp_path / "scan", images, words)), "label", min_count=3)
    flagged = set(zip(result.flagged.grp, result.flagged.word, strict=True))
    assert {("Dog", "dog"), ("Dog", "leash")} <= flagged
    assert list(result.findings.word) == ["leash"]


def test_a_significant_word_is_flagged_only_when_its_interval_excludes_no_association(tmp_path):
    """A word in all 4 images of A and none of the 3 of B: Fisher p = 1/35 < 0.05, yet the 95% interval of its
    odds ratio still reaches 1 (lower log-odds bound -0.02), so the two-sided test (audit 0.2's) flags nothing,
    in A or in B. One-sided, "snow over-represented in A" and "sky in B" are two of four hypotheses with a
    mid-p of 0.5/35 each: q = 1/35, and both are flagged (every image of A and none of B has snow)."""

    images = [{"image_id": f"a{i}", "label": "A"} for i in range(4)] + [{"image_id": f"b{i}", "label": "B"}
                                                                         for i in range(3)]
    words = {im["image_id"]: ["snow"] if im["label"] == "A" else ["sky"] for im in images}
    # Plain BH: the point here is the interval (under Tarone-BH these tables could not reach significance at all).
    q = ScanQuery.open(write_scan(tmp_path / "scan", images, words))
    result = associations(q, "label", min_count=3, fdr=0.05, procedure="bh", alternative="two-sided")
    t = result.table.set_index(["grp", "word"])
    a_snow = t.loc[("A", "snow")]
    assert math.isclose(a_snow.p, 1 / 35, rel_tol=1e-9) and a_snow.q < 0.05
    lo = log_odds_ci(4, 0, 0, 3)[1]
    assert -0.05 < lo < 0 and math.isclose(a_snow.log_odds_lo, lo)
    assert t.loc[("B", "snow")].log_odds_hi > 0  # the mirror image: significant, interval reaches 1 from below
    assert not result.table.flagged.any()
    one_sided = associations(q, "label", min_count=3, fdr=0.05, procedure="bh").table.set_index(["grp", "word"])
    assert math.isclose(one_sided.loc[("A", "snow")].q, 1 / 35, rel_tol=1e-9)
    assert set(one_sided.index[one_sided.flagged]) == {("A", "snow"), ("B", "sky")}


def test_a_report_of_many_groups_grows_with_findings_not_groups_times_words(tmp_path):
    """40 groups of 8 images, 30 words spread at random, 'snow' on group g07's images only, and two probes, one
    scoring g07 higher: past 12 groups no matrix and no per-group section is written; the page lists the groups
    once, the findings, and the flagged probe rows; each group's top words travel as data for its detail."""
    import numpy as np

    rs = np.random.default_rng(0)
    images = [{"image_id": f"{k}-{i}", "label": f"g{k:02d}"} for k in range(40) for i in range(8)]
    words = {im["image_id"]: [f"w{rs.integers(30)}", f"w{rs.integers(30)}"] for im in images}
    for i in range(8):
        words[f"7-{i}"].append("snow")
    probes = {im["image_id"]: [("doctor", 0.3 if im["label"] == "g07" else float(rs.normal(0.2, 0.01))),
                               ("nurse", float(rs.normal(0.2, 0.01)))] for im in images}
    scan = write_scan(tmp_path / "scan", images, words, probes=probes)
    rendered = render_report(scan, ["label"], min_count=3)
    html = rendered.html
    assert "Word × group matrix" not in html and html.count("<button type=\"button\" class=\"open\"") == 40
    flagged = rendered.associations[0].flagged
    assert ("g07", "snow") in set(zip(flagged.grp, flagged.word, strict=True))
    assert "80 (probe, group) comparisons tested" in html
    probe_rows = html.split('id="probes"')[1].split('id="methods"')[0].count("<tr>") - 1
    assert probe_rows == 1  # doctor with g07, the one flagged
    data = json.loads(html.split('id="report-data">')[1].split("</script>")[0])["sections"]["s1"]
    assert len(data["groups"]) == 40 and not data["open"] and all(len(r) <= 10 for r in data["rows"])
