"""audit slices: sub-populations found in the stored embeddings, described, tested; label-issue candidates; the
policy rules that gate on them."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from audit.analysis.slices import SliceSettings, find_slices, stored

from .scanfactory import write_scan

POOL = ["tree", "car", "dog", "house", "cloud", "road", "grass", "sky"]


def planted_scan(out, seed: int, skew: bool = True, n: int = 300, dim: int = 32, flip: float = 0.0,
                 label_by_cluster: bool = False, image_dir=None):
    """n images around four common centres and one planted centre (30 images, 10%) that no column names; the
    planted images hold the concepts 'snow' and 'red'. skew: the planted slice 24/6 across labels a and b (80/20)
    instead of half and half. label_by_cluster: the label is the image's centre (predictable from the
    embedding), a share `flip` of them changed to another centre's. Returns (planted ids, flipped ids)."""
    rs = np.random.RandomState(seed)
    centres = rs.randn(5, dim) * 3
    labels = np.array(["a"] * (n // 2) + ["b"] * (n - n // 2))
    a, b = np.flatnonzero(labels == "a"), np.flatnonzero(labels == "b")
    split = (24, 6) if skew else (15, 15)
    planted = np.concatenate([rs.choice(a, split[0], replace=False), rs.choice(b, split[1], replace=False)])
    which = rs.randint(0, 4, n)
    which[planted] = 4
    emb = centres[which] + rs.randn(n, dim)
    flipped = np.zeros(n, bool)
    if label_by_cluster:
        labels = np.array([f"c{w}" for w in which])
        flipped[rs.permutation(n)[:int(round(flip * n))]] = True
        labels[flipped] = [f"c{(w + 1 + rs.randint(4)) % 5}" for w in which[flipped]]
    ids = [f"im{i:04d}" for i in range(n)]
    concepts = {ids[i]: ([("snow", 0.3), ("red", 0.2)] if which[i] == 4 else [])
                + [(POOL[(which[i] * 2 + j) % 8], 0.1) for j in range(2)] for i in range(n)}
    write_scan(out, [{"image_id": ids[i], "label": labels[i], "site": f"s{i % 3}"} for i in range(n)], {},
               concepts=concepts, embeddings=emb, image_dir=image_dir)
    return {ids[i] for i in planted}, {ids[i] for i in np.flatnonzero(flipped)}


def test_a_planted_slice_is_found_described_and_flagged(tmp_path):
    members, _ = planted_scan(tmp_path / "scan", seed=1)
    found = find_slices(tmp_path / "scan", by=["label", "site"])
    sizes = found.sizes()
    # The best-matching slice: the one holding most of the planted images. Domino's precision-at-10 on the images
    # nearest its centroid.
    rows = found.slices.assign(hit=found.slices.image_id.isin(members))
    best = rows.groupby("slice").hit.sum().idxmax()
    nearest = found.slices[found.slices.slice == best].nlargest(10, "cosine").image_id
    assert nearest.isin(members).mean() >= 0.8
    assert set(found.words_of(best, "stored")[:3]) >= {"snow", "red"}
    flagged = found.flagged
    assert list(zip(flagged.slice, flagged.column, flagged.value, strict=True)) == [(best, "label", "a")]
    row = flagged.iloc[0]
    assert row.in_slice == 24 and row.slice_size == 30 and row.share_slice == pytest.approx(0.8)
    assert row.share_rest == pytest.approx(126 / 270)
    # Every slice is tested on every value of both columns, under one correction.
    assert len(found.tests) == 2 * len(sizes) + 3 * len(sizes)
    assert found.tests.q.notna().any() and (found.tests.flagged == (found.tests.q.fillna(1) <= 0.05)).all()


def test_nothing_is_flagged_without_a_planted_skew(tmp_path):
    for seed in range(4):
        planted_scan(tmp_path / f"scan{seed}", seed=seed, skew=False)
        found = find_slices(tmp_path / f"scan{seed}", by=["label", "site"])
        assert len(found.tests) and not found.tests.flagged.any(), found.tests.head()


def test_slices_are_stored_and_do_not_depend_on_part_order(tmp_path):
    planted_scan(tmp_path / "scan", seed=2)
    first = find_slices(tmp_path / "scan", labels="label")
    again = stored(__import__("audit").Scan(tmp_path / "scan"))
    assert again is not None and again.k == first.k and again.by == ["label"] and again.labels == "label"
    pd.testing.assert_frame_equal(again.tests, first.tests, check_dtype=False)
    # The same rows written as three parts in another order: the same slices, numbers and tests.
    import pyarrow.parquet as pq

    from audit.store.reader import Scan
    from audit.store.schema import embeddings_table
    from audit.store.writer import ScanWriter

    scan = Scan(tmp_path / "scan")
    images, tokens = scan.table("images"), scan.table("tokens")
    ids, emb = scan.embeddings()
    order = np.random.RandomState(0).permutation(len(ids))
    out = tmp_path / "shuffled"
    writer = ScanWriter.open(out, dict(scan.settings), {"kind": "test"})
    try:
        for chunk in np.array_split(order, 3):
            chosen = [ids[i] for i in chunk]
            pick = pd.Index(images.column("image_id").to_pylist()).get_indexer(chosen)
            unit = {"images": images.take(pick),
                    "tokens": tokens.filter(__import__("pyarrow.compute", fromlist=["x"]).is_in(
                        tokens["image_id"], value_set=__import__("pyarrow").array(chosen))),
                    "embeddings": embeddings_table(__import__("pyarrow").array(chosen), emb[chunk], "float16")}
            writer.write_unit(unit)
    finally:
        writer.close()
    other = find_slices(out, labels="label")
    pd.testing.assert_frame_equal(other.slices, first.slices)
    pd.testing.assert_frame_equal(other.tests, first.tests)
    pd.testing.assert_frame_equal(other.label_issues, first.label_issues)
    assert pq.read_table(out / "slices" / "slices.parquet").num_rows == len(ids)


def test_flipped_labels_are_found_as_label_issue_candidates(tmp_path):
    _, flipped = planted_scan(tmp_path / "scan", seed=3, label_by_cluster=True, flip=0.05)
    found = find_slices(tmp_path / "scan", by=[], labels="label")
    candidates = set(found.label_issues.image_id)
    assert len(flipped) == 15
    assert len(candidates & flipped) / len(flipped) >= 0.8  # recall
    assert len(candidates & flipped) / max(len(candidates), 1) >= 0.8  # precision
    issues = found.label_issues
    assert (issues.given != issues.suggested).all() and issues.quality.is_monotonic_increasing
    assert any("predicts 'label' out of fold" in n for n in found.notes)


def test_unpredictable_labels_say_the_candidates_say_little(tmp_path):
    planted_scan(tmp_path / "scan", seed=4, skew=False)
    found = find_slices(tmp_path / "scan", by=[], labels="site")
    assert any("say little" in n for n in found.notes), found.notes


def test_the_command_prints_writes_json_and_refuses_bad_input(tmp_path):
    planted_scan(tmp_path / "scan", seed=1)
    run = [sys.executable, "-m", "audit", "slices", str(tmp_path / "scan")]
    done = subprocess.run(run + ["--labels", "label", "--json", str(tmp_path / "s.json")], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert "skewed slices (q <= 0.05, across label):" in done.stdout and "label=a is 80.0% of it" in done.stdout
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["k"] == len(summary["slices"]) and summary["flagged"][0]["value"] == "a"
    for bad, said in ((["--k", "many"], "'auto' or a number of slices"),
                      (["--by", "camera"], "unknown --by column 'camera'"),
                      (["--labels", "camera"], "unknown --labels column 'camera'")):
        done = subprocess.run(run + bad, capture_output=True, text=True)
        assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_scan_without_embeddings_is_refused_in_one_line(tmp_path):
    write_scan(tmp_path / "scan", [{"image_id": f"i{k}", "label": "a"} for k in range(6)], {})
    from audit.errors import AuditError

    with pytest.raises(AuditError, match="stored embeddings"):
        find_slices(tmp_path / "scan")


def test_policy_rules_fail_on_a_skewed_slice_and_on_label_issues(tmp_path):
    planted_scan(tmp_path / "scan", seed=3, label_by_cluster=True, flip=0.05)
    planted_scan(tmp_path / "skewed", seed=1)
    policy = tmp_path / "policy.toml"
    policy.write_text('[slices]\ncolumn = "label"\nmin_share = 0.05\nmax_lift = 1.5\n\n'
                      '[label_issues]\ncolumn = "label"\nmax_share = 0.02\n')
    import audit

    skewed = audit.check(tmp_path / "skewed", policy)
    by_rule = {r.rule.kind: r for r in skewed.rules}
    assert by_rule["slices"].failed
    assert "slice(s) of at least 5.0% of the images are skewed across 'label'" in by_rule["slices"].summary
    assert "words: red, snow" in by_rule["slices"].summary  # equal evidence: alphabetical
    flipped = audit.check(tmp_path / "scan", policy)
    by_rule = {r.rule.kind: r for r in flipped.rules}
    assert by_rule["label_issues"].failed and "label-issue candidates in 'label' (limit 2.0%)" in \
        by_rule["label_issues"].summary
    loose = tmp_path / "loose.toml"
    loose.write_text('[slices]\nmax_lift = 5.0\n\n[label_issues]\nmax_share = 0.5\n')
    assert audit.check(tmp_path / "skewed", loose).passed
    bad = tmp_path / "bad.toml"
    bad.write_text('[label_issues]\ncolumn = "label"\n')
    from audit.errors import AuditError

    with pytest.raises(AuditError, match="needs 'max_share'"):
        audit.check(tmp_path / "scan", bad)


def test_the_demos_slices_are_named_by_their_shapes(demo_run, tmp_path):
    """Meaning, on the demo's real scan: audit-demo's embeddings group the scenes by shape first; each slice's
    stored concepts and its vocabulary words (Domino's describe, through the demo model's text tower) name a
    shape, and the site labels (which only the grass background tells apart) are not skewed by shape."""
    root, _, _ = demo_run
    scan = tmp_path / "scan"
    shutil.copytree(root / "scan", scan)
    import audit

    found = audit.slices(scan, vocabulary="default", device="cpu")
    from audit.demo.scenes import SHAPES

    named = [s for s in range(found.k) if set(found.words_of(s, "vocabulary")[:2]) & set(SHAPES)]
    assert len(named) >= 0.75 * found.k, found.words
    assert not len(found.flagged)


def test_settings_are_checked():
    from audit.errors import AuditError

    with pytest.raises(AuditError, match="--max-k must be at least 2"):
        SliceSettings(max_k=1).check()
    with pytest.raises(AuditError, match="--k is 'auto' or a number of slices of at least 2"):
        SliceSettings(k=1).check()


def test_a_tight_group_inside_a_slice_becomes_a_sub_slice_of_its_own(tmp_path):
    """Four broad clusters; inside the first, 30 near-identical images (one product shot), 24 of them under label
    a. The first level cannot separate them from their cluster; the second level does, and tests them."""
    rs = np.random.RandomState(5)
    dim, n = 32, 400
    centres = rs.randn(4, dim) * 4
    which = np.arange(n) % 4
    emb = centres[which] + rs.randn(n, dim)
    labels = np.where((np.arange(n) // 4) % 2 == 0, "a", "b")
    first = np.flatnonzero(which == 0)
    tight = np.concatenate([rs.choice(first[labels[first] == "a"], 24, replace=False),
                            rs.choice(first[labels[first] == "b"], 6, replace=False)])
    emb[tight] = centres[0] + 1.5 * rs.randn(dim) + 0.1 * rs.randn(len(tight), dim)
    ids = [f"im{i:04d}" for i in range(n)]
    write_scan(tmp_path / "scan", [{"image_id": ids[i], "label": labels[i]} for i in range(n)], {},
               embeddings=emb)
    found = find_slices(tmp_path / "scan", by=["label"], copies="keep")
    members = {ids[i] for i in tight}
    rows = found.slices.assign(hit=found.slices.image_id.isin(members))
    per = rows.groupby("slice").agg(parent=("parent", "first"), n=("hit", "size"), hit=("hit", "sum"))
    top = per[per.parent < 0]
    assert (top.hit / top.n).max() < 0.5  # no top slice is the group
    sub = per[(per.parent >= 0) & (per.hit / per.n >= 0.9) & (per.hit >= 27)]
    assert len(sub) == 1, per
    # Every image has one top slice, and at most one sub-slice.
    assert (found.slices[found.slices.parent < 0].image_id.value_counts() == 1).all()
    assert found.slices.image_id.value_counts().max() <= 2
    flagged = found.flagged
    assert (sub.index[0], "a") in set(zip(flagged.slice, flagged.value, strict=True))


def test_the_report_shows_the_slices_in_a_browser(tmp_path):
    """The report's Slices section after `audit slices`: the skewed slice first with its words and skew, the
    images nearest each centre and the label-issue candidates as thumbnails; no console error, nothing fetched."""
    from .browser import open_page

    images = tmp_path / "images"
    images.mkdir()
    planted_scan(tmp_path / "scan", seed=1, image_dir=images)
    import audit

    audit.report(tmp_path / "scan", "label").write(tmp_path / "before.html")
    assert 'id="slices"' not in (tmp_path / "before.html").read_text()  # none stored: the report finds none itself
    found = audit.slices(tmp_path / "scan", labels="label")
    audit.report(tmp_path / "scan", "label").write(tmp_path / "report.html")
    run = open_page(tmp_path / "report.html", tmp_path / "chromium")
    assert run.console == [] and run.requests == []
    section = run.dom.split('id="slices"', 1)[1].split("<h2", 1)[0]
    first = section.split("<tbody>", 1)[1].split("</tr>", 1)[0]
    skewed = int(found.flagged.slice.iloc[0])
    assert f'<td class="n">{skewed}' in first and "label = a" in first and "red" in first and "snow" in first
    assert section.count("<img") >= 6 * found.k // 2
    assert f"{len(found.label_issues)} images whose label" in section


def test_hostile_column_names_and_values_are_tested_and_escaped(tmp_path):
    members, _ = planted_scan(tmp_path / "scan0", seed=1)
    from audit.store.reader import Scan

    scan = Scan(tmp_path / "scan0")
    images = scan.df("images")
    ids, emb = scan.embeddings()
    hostile = 'we"ird <col>'
    value = {True: "<script>alert(1)</script>", False: "ok & fine"}
    rows = [{"image_id": i, "label": lab, hostile: value[i in members and k % 5 != 0]}
            for k, (i, lab) in enumerate(zip(images.image_id, images.label, strict=True))]
    order = {i: k for k, i in enumerate(ids)}
    write_scan(tmp_path / "scan", rows, {}, concepts={i: [("<b>bold</b>", 0.2)] for i in members},
               embeddings=emb[[order[r["image_id"]] for r in rows]])
    found = find_slices(tmp_path / "scan", by=[hostile])
    assert set(found.tests.column) == {hostile} and value[True] in set(found.flagged.value)
    import audit

    audit.report(tmp_path / "scan", "label").write(tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text()
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>bold</b>" not in html


def test_a_second_pass_folder_is_replaced_whole_or_not_at_all(tmp_path):
    from audit.store.layout import replace_folder

    assert replace_folder(tmp_path, "slices", lambda tmp: (tmp / "a.txt").write_text("one"))
    assert (tmp_path / "slices" / "a.txt").read_text() == "one"

    def half(tmp):
        (tmp / "a.txt").write_text("two")
        raise OSError(28, "No space left on device")

    assert not replace_folder(tmp_path, "slices", half)
    assert (tmp_path / "slices" / "a.txt").read_text() == "one"  # the old files, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slices"]  # nothing half-written left behind


def test_a_rule_that_needs_label_issues_keeps_the_stored_slices(tmp_path):
    """The policy path: slices stored without label issues get them added, the slices themselves untouched, and
    the candidates are those `audit slices --labels` finds."""
    from audit.analysis.slices import slices_of

    planted_scan(tmp_path / "scan", seed=3, label_by_cluster=True, flip=0.05)
    first = find_slices(tmp_path / "scan", by=["label"])
    assert first.labels is None and not len(first.label_issues)
    after = slices_of(tmp_path / "scan", ["label"], labels="label")
    pd.testing.assert_frame_equal(after.slices, first.slices)
    pd.testing.assert_frame_equal(after.tests, first.tests)
    direct = find_slices(tmp_path / "scan", by=["label"], labels="label", store=False)
    pd.testing.assert_frame_equal(after.label_issues, direct.label_issues)
    again = stored(__import__("audit").Scan(tmp_path / "scan"))
    assert again.labels == "label" and len(again.label_issues) == len(direct.label_issues) > 0
