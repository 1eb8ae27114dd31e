"""The example GitHub Actions workflow, run locally: its `run:` steps in order, with its `if:` rules.

Two runs as a repository would see them: a push to main that passes and becomes the baseline, then a pull
request whose snapshot drifted, which must fail the check yet still publish the summary and the diff.
Only the model is swapped (audit-tiny, random weights, a few steps) so the run takes seconds.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from audit.demo import make_dataset

WORKFLOW = Path(__file__).parents[1] / "examples" / "github-actions" / "dataset-audit.yml"
# What GitHub does with each `if:` this workflow uses. An unknown one fails the test, so a new condition
# in the workflow cannot go unexercised.
CONDITIONS = {None: "success", "always()": "always", "github.event_name == 'push'": "push"}
SETUP = {"Install audit"}  # the tests run the installed package
FAST = {"AUDIT_MODEL": "audit-tiny", "AUDIT_PRETRAINED": "none", "DATASET": "data/manifest.csv",
        "AUDIT_SCAN_ARGS": "--steps 2 --candidates 2 --views 2 --workers 0 --quiet"}
POLICY = '''group_by = "label"
[max_error_rate]
limit = 0.1
[drift]
max_share_change = 0.1
'''


def run_workflow(repo: Path, event: str) -> dict[str, object]:
    """Returns, per step name, the exit code (int), 'skipped', or 'uses' for an action step."""
    wf = yaml.safe_load(WORKFLOW.read_text())
    env = {**os.environ, **{k: str(v) for k, v in wf["env"].items()}, **FAST,
           "GITHUB_STEP_SUMMARY": str(repo / "step-summary.md"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    failed, outcome = False, {}
    for step in wf["jobs"]["audit"]["steps"]:
        name = step.get("name", step.get("uses"))
        assert step.get("if") in CONDITIONS, f"the test does not know the condition {step.get('if')!r}"
        rule = CONDITIONS[step.get("if")]
        runs = rule == "always" or (not failed and (rule == "success" or event == "push"))
        if "uses" in step:
            outcome[name] = "uses" if runs else "skipped"
        elif name in SETUP:
            outcome[name] = "setup"
        elif not runs:
            outcome[name] = "skipped"
        else:
            r = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], cwd=repo,
                               env=env, capture_output=True, text=True, timeout=600)
            outcome[name] = r.returncode
            outcome[name + ":output"] = r.stdout + r.stderr
            failed = failed or r.returncode != 0
    return outcome


def test_example_workflow_runs_as_documented(tmp_path):
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    make_dataset(repo / "data", images=12, size=64)
    (repo / "audit-policy.toml").write_text(POLICY)

    push = run_workflow(repo, "push")
    assert push["Scan the snapshot"] == 0, push
    assert push["Check the policy"] == 0, push["Check the policy:output"]
    assert push["Accept the snapshot as the baseline"] == 0 and push["Save the baseline"] == "uses"
    report = (repo / "audit-out" / "report.html").read_text()
    assert "Grouped by “label”" in report and "<b>12</b>images scanned" in report
    assert not (repo / "audit-out" / "diff.html").exists()
    assert "SKIP  drift.group_shares" in push["Check the policy:output"]  # no baseline yet
    assert (repo / "audit-baseline" / "scan.json").is_file()
    summary = (repo / "step-summary.md").read_text()
    assert "audit check passed" in summary

    # A pull request: a fresh workspace (the baseline comes from the cache) and a snapshot without
    # most of the west site's photos.
    shutil.rmtree(repo / "audit-out")
    (repo / "step-summary.md").unlink()
    manifest = pd.read_csv(repo / "data" / "manifest.csv")
    drop = manifest[manifest.label == "west"].index[1:]
    manifest.drop(drop).to_csv(repo / "data" / "manifest.csv", index=False)
    pr = run_workflow(repo, "pull_request")
    assert pr["Check the policy"] == 1, pr
    assert "FAIL  drift.group_shares" in pr["Check the policy:output"]
    assert pr["Publish the summary"] == 0 and pr["Upload the report"] == "uses"
    assert pr["Accept the snapshot as the baseline"] == "skipped" and pr["Save the baseline"] == "skipped"
    summary = (repo / "step-summary.md").read_text()
    assert "audit check failed" in summary and "drift.group\\_shares" in summary
    import xml.etree.ElementTree as ET

    cases = {c.get("name"): c for c in ET.parse(repo / "audit-out" / "junit.xml").getroot().iter("testcase")}
    assert cases["drift.group_shares"].find("failure") is not None
    assert "west" in cases["drift.group_shares"].find("failure").get("message")
    diff = (repo / "audit-out" / "diff.html").read_text()
    assert "removed" in diff and "west" in diff
