"""audit's own failures are told apart from unreadable files, and `--retry-errors` scans exactly the images
whose last attempt failed: afterwards an image that was read has no error row anywhere, one that failed again
has one, with the newest reason."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import audit
from audit.outputs.report import build_report
from audit.policy.parse import load_policy
from audit.policy.rules import run_check
from audit.store.query import ScanQuery

from .helpers import FAST, assert_same_rows, count_parts, save_noise
from .scanfactory import write_scan

BUG = "box offset can't be negative"


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "ds"
    for i in range(6):
        save_noise(root / f"g{i % 2}" / f"{i}.png", seed=i)
    (root / "g0" / "broken.png").write_bytes(b"\x89PNG not really")
    return root


def _buggy_decoder(monkeypatch, ids):
    """Make the decoder fail on some files the way the centre-crop bug did: an exception audit did not expect."""
    from audit.scanner import loader

    real = loader.decode

    def decode(path, preprocess, max_pixels, data=None):
        if any(path.endswith(i) for i in ids):
            raise ValueError(BUG)
        return real(path, preprocess, max_pixels, data)

    monkeypatch.setattr(loader, "decode", decode)


def _policy(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('group_by = ["label"]\n[max_error_rate]\nlimit = 0.9\n')
    return load_policy(path)


def test_internal_failures_are_counted_apart_and_told_to_the_user(dataset, tmp_path, monkeypatch, capsys):
    _buggy_decoder(monkeypatch, ["g1/1.png", "g1/3.png"])
    out = tmp_path / "scan"
    scan = audit.scan(dataset, out, **{**FAST, "quiet": False})
    err = capsys.readouterr().err
    assert "4 images scanned, 3 errors" in err
    assert "2 image(s) failed through a fault of audit, not of your data: this is a bug of audit" in err
    assert "--retry-errors" in err
    stages = dict(zip(scan.errors().image_id, scan.errors().stage, strict=True))
    assert stages == {"g1/1.png": "internal", "g1/3.png": "internal", "g0/broken.png": "decode"}
    q = ScanQuery.open(out)
    assert (q.unreadable(), q.internal_errors()) == (3, 2)

    html = build_report(out, ["label"], tmp_path / "r.html").read_text()
    assert "<b>1</b>images that could not be read" in html
    assert "<b>2</b>images audit failed on (a bug of audit)" in html
    assert "2 image(s) failed through a fault of audit, not of your data" in html

    result = run_check(out, _policy(tmp_path))
    (rule,) = result.results
    assert rule.status == "pass"  # 3 of 7 is under the limit, and the user is still told
    assert rule.measured["internal_errors"] == 2 and rule.measured["unreadable"] == 3
    assert "2 image(s) failed through a fault of audit" in rule.summary
    assert [e["stage"] for e in rule.evidence] == ["internal", "internal", "decode"]  # audit's own first
    assert result.notes[0].startswith("2 image(s) failed through a fault of audit")


def test_retry_errors_scans_exactly_the_failed_images(dataset, tmp_path, monkeypatch, capsys):
    out = tmp_path / "scan"
    with monkeypatch.context() as m:
        _buggy_decoder(m, ["g1/1.png", "g1/3.png"])
        audit.scan(dataset, out, **FAST)
    # Without the option, a resume counts an error row as done: nothing is tried again.
    again = audit.scan(dataset, out, **FAST)
    assert len(again.errors()) == 3 and again.config["runs"][-1]["images"] == 0
    # The broken file is now broken another way: its new reason must replace the old one.
    (dataset / "g0" / "broken.png").write_bytes(b"")
    retried = audit.scan(dataset, out, **{**FAST, "retry_errors": True, "quiet": False})
    err = capsys.readouterr().err
    assert "3 images to scan (4 already done, 3 of them failed before and are tried again)" in err
    assert "2 images scanned, 1 errors" in err and "fault of audit" not in err
    assert sorted(retried.images().image_id) == sorted(f"g{i % 2}/{i}.png" for i in range(6))
    errors = retried.errors()
    assert errors.image_id.tolist() == ["g0/broken.png"]
    assert errors.reason.tolist() == ["empty file (0 bytes)"] and errors.stage.tolist() == ["decode"]
    assert len(retried.error_attempts()) == 4  # history kept on disk, never counted
    q = ScanQuery.open(out)
    assert (q.unreadable(), q.internal_errors(), q.counts()["errors"]) == (1, 0, 1)
    html = build_report(out, ["label"], tmp_path / "r.html").read_text()
    assert "<b>1</b>images that could not be read" in html and "a bug of audit" not in html
    result = run_check(out, _policy(tmp_path))
    assert result.unreadable == 1 and not result.notes
    assert result.results[0].summary.startswith("1 of 7 images unreadable")
    # Row for row what one clean scan of the repaired dataset gives.
    assert_same_rows(retried, audit.scan(dataset, tmp_path / "clean", **FAST))


def test_old_scans_read_audit_failures_as_internal(tmp_path):
    """Scans written before the 'internal' stage stored the crop bug's rows as 'decode'."""
    out = write_scan(tmp_path / "old", [{"image_id": "a", "label": "x"}], {"a": ["red"]}, errors=["b", "c"])
    import pyarrow as pa
    import pyarrow.parquet as pq

    part = next((out / "errors").glob("part-*.parquet"))
    t = pq.read_table(part)
    reasons = pa.array([f"unexpected decoder failure: ValueError: {BUG}", "not an image file Pillow can read"])
    pq.write_table(t.set_column(t.schema.get_field_index("reason"), "reason", reasons), part)
    errors = audit.Scan(out).errors().set_index("image_id")
    assert errors.stage.to_dict() == {"b": "internal", "c": "decode"}
    assert ScanQuery.open(out).internal_errors() == 1


@pytest.mark.parametrize("kill_after_new_parts", [0, 1])
def test_sigkill_during_a_retry_then_resume(dataset, tmp_path, kill_after_new_parts):
    """A retry killed at any moment, then run again, ends with exactly the rows of one clean scan."""
    reference = audit.scan(dataset, tmp_path / "clean", **{**FAST, "batch_size": 2})
    originals = tmp_path / "originals"
    shutil.copytree(dataset, originals)
    lost = [f"g{i % 2}/{i}.png" for i in (1, 2, 4, 5)]
    for name in lost:  # a transient read failure: these files are unreadable during the first scan
        (dataset / name).write_bytes(b"")
    out = tmp_path / "scan"
    first = audit.scan(dataset, out, **{**FAST, "batch_size": 2})
    assert len(first.errors()) == 5
    for name in lost:
        shutil.copy(originals / name, dataset / name)
    before = count_parts(out)
    argv = [sys.executable, "-m", "audit.cli", "scan", str(dataset), "--out", str(out), "--model", "audit-tiny",
            "--pretrained", "none", "--steps", str(FAST["steps"]), "--candidates", str(FAST["candidates"]),
            "--views", str(FAST["views"]), "--precision", FAST["precision"], "--workers", "0", "--batch-size", "1", "--retry-errors", "--commit-every", "0", "-q"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if count_parts(out) >= before + kill_after_new_parts:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the retry finished before it could be killed: " + proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert count_parts(out) < before + 5  # 5 retried images in batches of 1
    resumed = audit.scan(dataset, out, **{**FAST, "batch_size": 3, "retry_errors": True})
    assert_same_rows(resumed, reference)
