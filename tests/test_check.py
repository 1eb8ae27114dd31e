"""`audit check` and `audit diff` on hand-built scans: exact numbers, exit codes, every output format."""

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xmlschema

from audit.analysis.associations import associations
from audit.analysis.stats import jensen_shannon
from audit.cli import main
from audit.outputs.check_output import junit, markdown, text
from audit.outputs.diff import build_diff
from audit.outputs.diff import markdown as diff_markdown
from audit.policy.parse import load_policy
from audit.policy.rules import run_check
from audit.store.query import ScanQuery

from .browser import open_page
from .scanfactory import write_scan
from .test_report import HOSTILE_LABEL, planted

JUNIT_XSD = Path(__file__).parent / "data" / "junit.xsd"
WATCH = '''group_by = "label"
min_count = 3
[[watch]]
name = "backgrounds"
words = ["grass", "Snow"]
'''


def policy(tmp_path, body: str, name="policy.toml") -> Path:
    p = tmp_path / name
    p.write_text(body, encoding="utf-8")
    return p


def flat(tmp_path, name="flat", a_count=10, b_count=10, grass_a=5, grass_b=5, label_b="B"):
    """Two groups, 'grass' and 'sky' spread evenly (no association)."""
    images = [{"image_id": f"a{i}", "label": "A"} for i in range(a_count)]
    images += [{"image_id": f"b{i}", "label": label_b} for i in range(b_count)]
    words = {im["image_id"]: ["sky"] for im in images}
    for i in range(grass_a):
        words[f"a{i}"].append("grass")
    for i in range(grass_b):
        words[f"b{i}"].append("grass")
    return write_scan(tmp_path / name, images, words)


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_watch_rule_fails_on_a_planted_association_and_passes_without(tmp_path, capsys):
    pol = policy(tmp_path, WATCH)
    code, out, _ = run_cli(capsys, "check", planted(tmp_path), "--policy", pol)
    assert code == 1, out
    assert "FAIL  watch:backgrounds" in out and "'grass' with label=A: 8 of 10 images (80.0%)" in out
    code, out, _ = run_cli(capsys, "check", flat(tmp_path), "--policy", pol)
    assert code == 0, out
    assert "PASS  watch:backgrounds" in out and "1 of 2 words seen in at least 3 images" in out  # 'snow': never


def test_a_warn_rule_reports_but_never_fails_the_build(tmp_path, capsys):
    pol = policy(tmp_path, WATCH + 'level = "warn"\n')
    code, out, _ = run_cli(capsys, "check", planted(tmp_path), "--policy", pol)
    assert code == 0 and "WARN  watch:backgrounds" in out


def test_check_reports_the_numbers_of_the_report(tmp_path, capsys):
    scan = planted(tmp_path)
    pol = policy(tmp_path, WATCH + "min_odds_ratio = 2.0\n[max_association]\nmax_odds_ratio = 2.2\n")
    code, _, _ = run_cli(capsys, "check", scan, "--policy", pol, "--json", tmp_path / "f.json")
    doc = json.loads((tmp_path / "f.json").read_text())
    assert code == 1 and doc["exit_code"] == 1 and doc["status"] == "fail"
    t = associations(ScanQuery.open(scan), "label", min_count=3).table.set_index(["grp", "word"])
    (ev,) = doc["rules"][0]["evidence"]
    assert (ev["grp"], ev["word"], ev["a"], ev["n_group"]) == ("A", "grass", 8, 10)
    assert math.isclose(ev["odds_ratio_lo"], t.loc[("A", "grass")].odds_ratio_lo)
    assert math.isclose(ev["q"], t.loc[("A", "grass")].q)
    assert doc["rules"][1]["status"] == "fail"  # lower bound 2.33 > 2.2
    pol = policy(tmp_path, WATCH + "min_odds_ratio = 2.4\n[max_association]\nmax_odds_ratio = 2.4\n")
    assert main(["check", str(scan), "--policy", str(pol), "-q"]) == 0  # both bounds now above 2.33


def test_error_rate_and_group_size_rules(tmp_path, capsys):
    scan = planted(tmp_path)  # 20 images and 1 unreadable file
    pol = policy(tmp_path, 'group_by = "label"\n[max_error_rate]\nlimit = 0.05\n[min_images_per_group]\nlimit = 10\n')
    code, out, _ = run_cli(capsys, "check", scan, "--policy", pol)
    assert code == 0 and "1 of 21 images unreadable (4.8%; limit 5.0%)" in out
    pol = policy(tmp_path, 'group_by = "label"\n[max_error_rate]\nlimit = 0.04\n[min_images_per_group]\nlimit = 11\n')
    code, out, _ = run_cli(capsys, "check", scan, "--policy", pol)
    assert code == 1 and out.count("FAIL") == 2 and "label=A (10)" in out and "broken.png" in out


def test_heatmap_rule_compares_where_the_model_looks(tmp_path, capsys):
    images = [{"image_id": f"{g}{i}", "label": g} for g in "AB" for i in range(8)]
    words = {im["image_id"]: ["dog"] for im in images}
    scan = write_scan(tmp_path / "s", images, words, box_mass=lambda i, w: (0.7 if i[0] == "A" else 0.2)
                      + int(i[1:]) * 0.01)
    body = 'group_by = "label"\nmin_count = 3\n[[heatmap]]\nstat = "box_mass"\nmax_difference = {}\n'
    code, out, _ = run_cli(capsys, "check", scan, "--policy", policy(tmp_path, body.format(0.3)))
    assert code == 1 and "'dog' in label=A 0.7" in out and "median_rest=0.235" in out, out
    code, out, _ = run_cli(capsys, "check", scan, "--policy", policy(tmp_path, body.format(0.6)))
    assert code == 0, out
    no_box = write_scan(tmp_path / "nobox", images, words, box_mass=lambda i, w: None)
    code, out, _ = run_cli(capsys, "check", no_box, "--policy", policy(tmp_path, body.format(0.3)))
    assert code == 0 and "SKIP  heatmap:box_mass" in out and "no object boxes" in out


def test_jensen_shannon():
    assert jensen_shannon([3, 1], [3, 1]) == 0.0
    assert jensen_shannon([1, 0], [0, 5]) == 1.0
    # P = (1/2, 1/2), Q = (1, 0), M = (3/4, 1/4)
    kl_p = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    kl_q = math.log2(1 / 0.75)
    assert math.isclose(jensen_shannon([1, 1], [2, 0]), (kl_p + kl_q) / 2)


DRIFT = '''group_by = "label"
min_count = 3
[drift]
max_jsd = {jsd}
max_group_jsd = 0.5
max_share_change = 0.1
new_associations = true
'''


def snapshot(tmp_path, name, counts: dict[str, tuple[int, int]], n=20):
    """n images in A and in B; counts: word -> (images of A, images of B) showing it."""
    images = [{"image_id": f"{g}{i}", "label": g} for g in "AB" for i in range(n)]
    words = {im["image_id"]: [] for im in images}
    for word, (a, b) in counts.items():
        for g, k in (("A", a), ("B", b)):
            for i in range(k):
                words[f"{g}{i}"].append(word)
    return write_scan(tmp_path / name, images, words)


def test_drift_rules_against_a_baseline(tmp_path, capsys):
    base = snapshot(tmp_path, "base", {"sky": (20, 20), "grass": (5, 5)})
    drifted = snapshot(tmp_path, "drifted", {"sky": (5, 5), "grass": (18, 2), "rare": (1, 1)})
    pol = policy(tmp_path, DRIFT.format(jsd=0.01))
    code, out, _ = run_cli(capsys, "check", base, "--policy", pol, "--baseline", base)
    assert code == 0 and out.count("PASS") == 4, out  # identical snapshots
    code, out, _ = run_cli(capsys, "check", drifted, "--policy", pol, "--baseline", base, "--json", tmp_path / "d.json")
    assert code == 1, out
    rules = {r["id"]: r for r in json.loads((tmp_path / "d.json").read_text())["rules"]}
    # 'rare' is seen in 2 images, below min_count: left out of the distribution
    measured = rules["drift.words"]["measured"]
    assert math.isclose(measured["jsd"], jensen_shannon([40, 10], [10, 20])) and measured["vocabulary"] == 2
    assert measured["p"] < 0.05 and measured["noise"] < measured["jsd"]
    assert rules["drift.words"]["status"] == "fail"
    assert rules["drift.group_shares"]["status"] == "pass"  # still 10 and 10
    (new,) = rules["drift.new_associations"]["evidence"]
    assert (new["grp"], new["word"]) == ("A", "grass")
    assert rules["drift.group_words"]["status"] == "pass"
    code, out, _ = run_cli(capsys, "check", base, "--policy", pol)
    assert code == 0 and out.count("SKIP") == 4 and "no --baseline" in out


def test_drift_within_sampling_noise_passes_however_low_the_bound(tmp_path, capsys):
    base = flat(tmp_path, "base", grass_a=5, grass_b=5)
    other = flat(tmp_path, "other", grass_a=6, grass_b=5)  # one image more shows grass
    code, out, _ = run_cli(capsys, "check", other, "--policy", policy(tmp_path, DRIFT.format(jsd=0.0001)),
                           "--baseline", base, "--json", tmp_path / "n.json")
    rules = {r["id"]: r for r in json.loads((tmp_path / "n.json").read_text())["rules"]}
    words = rules["drift.words"]["measured"]
    assert 0 < words["jsd"] < words["noise"] and words["p"] > 0.5, words
    assert rules["drift.words"]["status"] == "pass" and rules["drift.group_words"]["status"] == "pass"


def test_group_shares_and_settings_notes(tmp_path, capsys):
    base = flat(tmp_path, "base")
    shifted = flat(tmp_path, "shifted", a_count=15, b_count=5, grass_a=7, grass_b=3)
    pol = policy(tmp_path, 'group_by = "label"\n[drift]\nmax_share_change = 0.2\n')
    code, out, _ = run_cli(capsys, "check", shifted, "--policy", pol, "--baseline", base)
    assert code == 1 and "label=A 50.0%->75.0%" in out
    assert main(["check", str(shifted), "--policy", str(pol).replace("0.2", "0.3"), "-q"]) == 0


def test_junit_validates_against_the_schema_and_counts_agree(tmp_path):
    scan = planted(tmp_path, label_b="B\x00\x1b[31m" + HOSTILE_LABEL)
    pol = policy(tmp_path, WATCH + 'group_by = "label"\n[min_images_per_group]\nlimit = 11\nlevel = "warn"\n'
                 '[drift]\nmax_jsd = 0.1\n'.replace('group_by = "label"\n', ""))
    result = run_check(scan, load_policy(pol))
    xml = junit(result)
    schema = xmlschema.XMLSchema(JUNIT_XSD)
    schema.validate(xml)
    root = ET.fromstring(xml)
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert int(suite.get("tests")) == len(cases) == 3
    assert int(suite.get("failures")) == len(suite.findall("testcase/failure")) == 1
    assert int(suite.get("skipped")) == len(suite.findall("testcase/skipped")) == 1
    failure = suite.find("testcase/failure")
    assert "grass" in failure.get("message") and "label=A" in failure.text
    warn = next(c for c in cases if c.get("name") == "min_images_per_group").find("system-out").text
    assert warn.startswith("WARNING") and "<script>" in warn  # escaped by XML, read back intact
    assert "\x00" not in xml and "\x1b" not in xml
    with pytest.raises(xmlschema.XMLSchemaValidationError):  # the schema is strict enough to fail
        schema.validate(xml.replace("<testcase ", "<testcas ", 1).replace("</testcase>", "</testcas>", 1))


def test_text_and_markdown_escape_hostile_strings(tmp_path):
    evil = "B|x\x1b[2J<img src=x onerror=alert(1)>\n## owned"
    scan = planted(tmp_path, label_b=evil)
    pol = policy(tmp_path, 'group_by = "label"\nmin_count = 3\n[min_images_per_group]\nlimit = 11\n')
    result = run_check(scan, load_policy(pol))
    out = text(result)
    assert "\x1b" not in out and "\\x1b[2J" in out
    md = markdown(result)
    assert "<img" not in md and "&lt;img" in md and "\n## owned" not in md
    table = [line for line in md.splitlines() if line.startswith("| label |")]
    assert table and all(line.count("|") - line.count("\\|") == 4 for line in table)  # 3 columns, no extra


POLICY_ERRORS = [
    ("", "has no rules"),
    ("group_by = \"label\"\n[watch\nwords = []", "is not valid TOML"),
    ("group_by = \"label\"\n[watchh]\nwords = [\"a\"]", "unknown table or key 'watchh'"),
    ("group_by = \"label\"\n[[watch]]\nword = [\"a\"]", "unknown key watch[0].word"),
    ("group_by = \"label\"\n[[watch]]\nwords = 3", "watch[0].words must be a list of strings"),
    ("group_by = \"label\"\n[[watch]]\nwords = [\"fire fighter\"]", "not one word"),
    ("group_by = \"label\"\n[[watch]]\nwords = [\"a\"]\nlevel = \"error\"", "is 'fail' or 'warn'"),
    ("group_by = \"label\"\n[[watch]]\nwords = [\"a\"]\nmin_odds_ratio = 0.5", "must be at least 1"),
    ("[[watch]]\nwords = [\"a\"]", "set group_by"),
    ("[max_error_rate]\nlimit = 1.5", "is a share between 0 and 1"),
    ("[max_error_rate]\nlimit = \"5%\"", "must be float"),
    ("[max_error_rate]", "needs 'limit'"),
    ("fdr = 0\n[max_error_rate]\nlimit = 0.1", "fdr must be between 0 and 1"),
    ("[drift]\nlevel = \"warn\"", "sets no bound"),
    ("group_by = \"label\"\n[[heatmap]]\nstat = \"peak_x\"\nmax_difference = 0.1", "stat is one of"),
    ("group_by = \"label\"\n[[watch]]\nwords = [\"a\"]\n[[watch]]\nwords = [\"b\"]\nname = \"list1\"", "both named"),
    ("group_by = \"nope\"\n[[watch]]\nwords = [\"a\"]", "group_by column 'nope' is not in the scan"),
]


@pytest.mark.parametrize("body, message", POLICY_ERRORS)
def test_policy_errors_exit_2_with_one_line(tmp_path, capsys, body, message):
    scan = planted(tmp_path)
    code, out, err = run_cli(capsys, "check", scan, "--policy", policy(tmp_path, body))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("audit: error: ") and message in err, err


def test_usage_errors_exit_2_with_one_line(tmp_path, capsys):
    scan = planted(tmp_path)
    pol = policy(tmp_path, WATCH)
    (tmp_path / "outdir").mkdir()
    cases = [
        (["check", tmp_path / "missing", "--policy", pol], "is not an audit scan"),
        (["check", scan, "--policy", tmp_path / "nope.toml"], "does not exist"),
        (["check", scan, "--policy", pol, "--baseline", tmp_path / "missing"], "is not an audit scan"),
        (["check", scan, "--policy", pol, "--junit", tmp_path / "outdir"], "is a directory"),
        (["diff", scan, tmp_path / "missing"], "is not an audit scan"),
        (["diff", scan, scan, "--group-by", "nope"], "--group-by column 'nope'"),
        (["diff", scan, scan, "--out", tmp_path / "d.pdf"], "must end in .html or .md"),
    ]
    for args, message in cases:
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and err.count("\n") == 1 and message in err, (args, err)
    code, _, err = run_cli(capsys, "check", scan)  # --policy is required: click's usage error
    assert code == 2 and "--policy" in err


def test_diff_shows_what_changed(tmp_path, capsys):
    base = flat(tmp_path, "base", a_count=10, b_count=10)
    new = planted(tmp_path)  # same ids a0..a9, b0..b9
    extra = flat(tmp_path, "extra", a_count=12, b_count=8)  # a10, a11 added; b8, b9 removed
    d = build_diff(base, extra, ["label"], min_count=3)
    assert d.overall.added == ["a10", "a11"] and d.overall.removed == ["b8", "b9"]
    g = d.by_column[0].groups.set_index("grp")
    assert (g.loc["A"].n_old, g.loc["A"].n_new) == (10, 12) and math.isclose(g.loc["A"].delta, 0.1)
    code, out, _ = run_cli(capsys, "diff", base, new, "--group-by", "label", "--out", tmp_path / "diff.md")
    assert code == 0
    assert "images: 20 -> 20 (0 added, 0 removed, 20 in both)" in out
    assert "associations appeared: 1" in out and "'grass' with label=A" in out
    top = out.split("moved most")[1].splitlines()[1].split()
    assert top[0] == "sky" and top[1:4] == ["100.0%", "->", "50.0%"]  # the largest move comes first
    md = (tmp_path / "diff.md").read_text()
    assert "| grass | 50.0% | 45.0% | -5.0% |" in md and "Associations appeared: 1" in md
    assert diff_markdown(d).count("| A |") == 1


def test_diff_html_is_self_contained_and_escaped(tmp_path, capsys):
    base = flat(tmp_path, "base", label_b=HOSTILE_LABEL)
    new = planted(tmp_path, label_b=HOSTILE_LABEL)
    code, _, _ = run_cli(capsys, "diff", base, new, "-g", "label", "-o", tmp_path / "diff.html")
    html = (tmp_path / "diff.html").read_text()
    assert code == 0 and "<script>" not in html and "&lt;script&gt;" in html
    run = open_page(tmp_path / "diff.html", tmp_path / "chromium")
    assert run.console == [] and run.requests == [] and "<title>PWNED" not in run.dom
    assert "Associations that appeared (1)" in run.dom


def test_report_check_and_diff_start_without_loading_torch():
    import subprocess
    import sys

    code = ("import sys, audit, audit.cli, audit.policy.rules, audit.outputs.check_output, audit.outputs.diff, "
            "audit.outputs.report, audit.policy.parse, audit.store.query;"
            "print(sorted(m for m in ('torch', 'open_clip', 'kornia') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"  # a CI gate should not spend seconds importing a model it never runs


def test_scans_of_schema_version_1_are_read_and_resumed(tmp_path, capsys):
    """An older scan is read as it is and resumed in place: its parts stay, new parts are of this version, and
    scan.json says which version it came from. Settings added since (the opinion) count as what it was made
    with; other settings are compared as always."""
    import pyarrow.parquet as pq

    from audit.store.reader import Scan
    from audit.store.schema import SCHEMA_VERSION
    from audit.store.writer import ScanWriter

    scan = planted(tmp_path)
    for table in ("tokens", "heatmaps"):  # the layout before probe words: no kind column
        for part in (scan / table).glob("part-*.parquet"):
            pq.write_table(pq.read_table(part).drop_columns(["kind"]), part)
    config = json.loads((scan / "scan.json").read_text())
    config["schema_version"] = 1
    (scan / "scan.json").write_text(json.dumps(config))
    assert set(Scan(scan).tokens().kind) == {"ascent"}
    code, out, _ = run_cli(capsys, "check", scan, "--policy", policy(tmp_path, WATCH))
    assert code == 1 and "'grass' with label=A: 8 of 10 images" in out  # the same finding as before
    # As this audit writes them: the opinions that ran, and the kernel and precision a CPU ran with then.
    now = {**config["settings"], "refine_words": False, "kernel": "eager", "opinions": ["ascent"],
           "precision": "float32"}
    with pytest.raises(Exception, match="precision: stored 'float32', now 'bfloat16'"):
        ScanWriter.open(scan, {**now, "precision": "bfloat16"}, {"kind": "test"})
    with pytest.raises(Exception, match="other settings"):
        ScanWriter.open(scan, {**now, "opinions": ["concepts"]}, {"kind": "test"})
    with pytest.raises(Exception, match="refine_words: stored False, now True"):  # the default changed since
        ScanWriter.open(scan, {**now, "refine_words": True}, {"kind": "test"})
    writer = ScanWriter.open(scan, now, {"kind": "test"})
    writer.close()
    upgraded = json.loads((scan / "scan.json").read_text())
    assert (upgraded["schema_version"], upgraded["upgraded_from"]) == (SCHEMA_VERSION, 1)
    assert upgraded["settings"] == now
    tokens = Scan(scan).tokens()
    assert set(tokens.kind) == {"ascent"} and tokens.weight.isna().all() and len(tokens) == 21
    assert Scan(scan).images().concept_cosine.isna().all()


def test_the_permutation_p_value_counts_the_observed_split():
    """p = (1 + splits at least as divergent) / (rounds + 1): exactly 1 for identical snapshots, and never
    below 1 / (rounds + 1), however far apart they are (the observed split is one of the possible splits)."""
    from audit.analysis.drift import divergence

    ids = [f"i{k}" for k in range(10)]
    pairs = pd.DataFrame({"image_id": ids, "word": ["red"] * 5 + ["blue"] * 5})
    same = divergence(ids, ids, pairs, pairs, ["red", "blue"])
    assert same.jsd == 0.0 and same.p == 1.0
    old = pd.DataFrame({"image_id": ids, "word": ["red"] * 10})
    new_ids = [f"j{k}" for k in range(10)]
    new = pd.DataFrame({"image_id": new_ids, "word": ["blue"] * 10})
    apart = divergence(ids, new_ids, old, new, ["red", "blue"])
    k = apart.p * (apart.permutations + 1)
    assert apart.jsd == 1.0 and k >= 1 and math.isclose(k, round(k)) and apart.p < 0.05


def test_a_watch_rule_without_a_bound_flags_any_association(tmp_path):
    """min_odds_ratio defaults to 1 (as examples/audit-policy.toml says): any over-representation counts."""
    pol = policy(tmp_path, 'group_by = "label"\n[[watch]]\nname = "w"\nwords = ["grass"]\n')
    (rule,) = load_policy(pol).rules
    assert rule.kind == "watch" and rule.params["min_odds_ratio"] == 1.0
    assert "1 when not given" in (Path(__file__).parents[1] / "examples" / "audit-policy.toml").read_text()


def test_there_is_one_example_policy_and_the_demo_gates_on_it():
    """examples/audit-policy.toml is the file the package ships and `audit demo` checks with (a link to it), so
    the documented example and the demo's cannot drift apart."""
    from audit.demo import POLICY

    example = Path(__file__).parents[1] / "examples" / "audit-policy.toml"
    assert example.is_symlink() and example.resolve() == POLICY.resolve()
    assert load_policy(example).rules


def test_each_groups_drift_is_the_divergence_of_its_own_images(tmp_path):
    """compare() codes every pair once and slices a group's; each group's divergence, noise and p must be what
    divergence() gives on that group's own images and pairs, with groups that appear, vanish, or show no word."""
    from audit.analysis.associations import word_filter
    from audit.analysis.drift import compare, divergence
    from audit.store.query import ScanQuery

    rs = np.random.default_rng(4)

    def snapshot(name, groups, shift):
        images = [{"image_id": f"{name}{g}-{i}", "label": g} for g in groups for i in range(int(rs.integers(3, 12)))]
        words = {im["image_id"]: [f"w{int(rs.integers(0, 6 + shift * (im['label'] == 'c')))}"] for im in images}
        words[images[0]["image_id"]] = []
        return ScanQuery.open(write_scan(tmp_path / name, images, words))

    old, new = snapshot("o", ["a", "b", "c", "gone"], 0), snapshot("n", ["a", "b", "c", "new", "zz"], 4)
    keep = word_filter()
    drift = compare(old, new, "label", min_count=1, keep=keep)
    images_old, images_new = old.images_groups("label"), new.images_groups("label")
    pairs_old, pairs_new = old.word_pairs("ascent", keep), new.word_pairs("ascent", keep)
    vocab = sorted(set(pairs_old.word) | set(pairs_new.word))
    for row in drift.groups.itertuples():
        if not (row.n_old and row.n_new):
            assert math.isnan(row.jsd) and math.isnan(row.p)
            continue
        io, inew = images_old[images_old.grp == row.grp], images_new[images_new.grp == row.grp]
        want = divergence(list(io.image_id), list(inew.image_id), pairs_old[pairs_old.image_id.isin(io.image_id)],
                          pairs_new[pairs_new.image_id.isin(inew.image_id)], vocab)
        assert (row.jsd, row.p) == (want.jsd, want.p) and math.isclose(row.noise, want.noise, rel_tol=1e-12)
    assert set(drift.groups.grp) == {"a", "b", "c", "gone", "new", "zz"}
