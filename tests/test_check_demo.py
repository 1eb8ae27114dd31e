"""`audit check` and `audit diff` on demo scans made with the project's own CLIP: the example policy
catches the planted bias, stays quiet without it, and the drift rules see the change between the two."""

from audit.cli import main
from audit.demo import POLICY


def check(capsys, *args) -> tuple[int, str]:
    code = main(["check", *map(str, args)])
    return code, capsys.readouterr().out


def test_example_policy_fails_the_planted_bias_and_passes_without_it(demo_run, unbiased_demo_scan, capsys):
    root, _, printed = demo_run
    code, out = check(capsys, root / "scan", "--policy", POLICY)
    assert code == 1, out
    assert "FAIL  watch:backgrounds" in out and "'grass' with label=north" in out
    assert "PASS  watch:occupations" in out and "PASS  max_error_rate" in out
    code, out = check(capsys, unbiased_demo_scan, "--policy", POLICY)
    assert code == 0, out
    assert "PASS  watch:backgrounds" in out
    assert "exit 1, failed: watch:backgrounds" in printed  # `audit demo` runs the same check
    md = (root / "check.md").read_text()
    assert md.startswith("## ❌ audit check failed") and "| ❌ | watch:backgrounds | fail |" in md
    assert "| ✅ | watch:occupations |" in md and "grass" in md
    import xml.etree.ElementTree as ET

    suite = ET.parse(root / "check-junit.xml").getroot().find("testsuite")
    failed = {c.get("name"): c.find("failure") for c in suite.iter("testcase")}
    assert suite.get("failures") == "1" and failed["watch:backgrounds"] is not None
    assert "grass" in failed["watch:backgrounds"].get("message")
    assert failed["watch:occupations"] is None and failed["max_error_rate"] is None


def test_drift_rules_see_the_planted_bias_arrive(demo_run, unbiased_demo_scan, capsys):
    scan = demo_run[0] / "scan"
    code, out = check(capsys, scan, "--policy", POLICY, "--baseline", unbiased_demo_scan)
    assert code == 1, out
    assert "FAIL  drift.new_associations" in out and "'grass' with label=north" in out
    # The snapshot as a whole did not move beyond sampling noise. (Within the north site the word distribution
    # moves too, but within the noise of 20 images (JSD 0.098 with audit-demo v1); the association
    # rule, which looks at each word, is what sees one word arrive.)
    assert "PASS  drift.words" in out
    code, out = check(capsys, scan, "--policy", POLICY, "--baseline", scan)
    for rule in ("drift.words", "drift.group_words", "drift.group_shares", "drift.new_associations"):
        assert f"PASS  {rule}" in out, out
    assert main(["diff", str(unbiased_demo_scan), str(scan), "-g", "label"]) == 0
    out = capsys.readouterr().out
    assert "associations appeared: 1" in out and "'grass' with label=north" in out
