"""A scan killed at any moment, then resumed, ends with exactly the rows of an uninterrupted scan."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

import audit
from audit.schema import TABLES
from audit.store import ScanWriter

from .helpers import FAST, save_noise

KEYS = {"images": ["image_id"], "tokens": ["image_id", "word"], "heatmaps": ["image_id", "word"],
        "errors": ["image_id"]}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume") / "ds"
    for i in range(12):
        save_noise(root / f"g{i % 3}" / f"{i:02d}.png", seed=i)
    (root / "g0" / "broken.png").write_bytes(b"\x89PNG not really")
    return root


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    return audit.scan(dataset, tmp_path_factory.mktemp("ref") / "scan", **{**FAST, "batch_size": 2})


def assert_same_rows(got: audit.Scan, want: audit.Scan):
    for t in TABLES:
        a, b = got.df(t), want.df(t)
        assert not a.duplicated(KEYS[t]).any(), f"{t}: rows stored twice"
        a = a.sort_values(KEYS[t]).reset_index(drop=True)
        b = b.sort_values(KEYS[t]).reset_index(drop=True)
        assert len(a) == len(b), t
        for col in a.columns:
            if col in ("grid", "text_relevance"):
                assert np.allclose(np.concatenate(a[col].to_list()), np.concatenate(b[col].to_list()), atol=1e-5)
            elif a[col].dtype.kind == "f":
                assert np.allclose(a[col], b[col], atol=1e-5, equal_nan=True), (t, col)
            else:
                pd.testing.assert_series_equal(a[col], b[col], check_names=False, obj=f"{t}.{col}")


def count_parts(out):
    folder = out / "images"
    return len(list(folder.glob("part-*.parquet"))) if folder.is_dir() else 0


@pytest.mark.parametrize("kill_after_parts", [0, 1, 4])
def test_sigkill_then_resume(dataset, reference, tmp_path, kill_after_parts):
    out = tmp_path / "scan"
    argv = [sys.executable, "-m", "audit.cli", "scan", str(dataset), "--out", str(out), "--model", "audit-tiny",
            "--pretrained", "none", "--steps", str(FAST["steps"]), "--candidates", str(FAST["candidates"]),
            "--views", str(FAST["views"]), "--workers", "0", "--batch-size", "2", "-q"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if (out / "scan.json").exists() and count_parts(out) >= kill_after_parts:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the scan finished before it could be killed: " + proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = count_parts(out)
    assert killed_at < 7  # 13 images in batches of 2 make 7 units
    # Resume with another batch size: the resume point must not matter either.
    resumed = audit.scan(dataset, out, **{**FAST, "batch_size": 3})
    assert_same_rows(resumed, reference)
    assert not [p for t in TABLES for p in (out / t).iterdir() if p.name.startswith(".tmp-")]


class Crash(Exception):
    pass


@pytest.mark.parametrize("crash_at_rename", [1, 2, 3, 4, 6, 9])
def test_crash_inside_a_commit_then_resume(dataset, reference, tmp_path, monkeypatch, crash_at_rename):
    """Die between any two renames of a unit: the half-written unit is discarded, nothing else."""
    out = tmp_path / "scan"
    calls = {"n": 0}
    real_replace = os.replace

    def dying_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == crash_at_rename:
            raise Crash()
        return real_replace(src, dst)

    monkeypatch.setattr("audit.store.os.replace", dying_replace)
    with pytest.raises(Crash):
        audit.scan(dataset, out, **{**FAST, "batch_size": 2})
    monkeypatch.setattr("audit.store.os.replace", real_replace)
    if (out / "scan.json").exists():
        writer = ScanWriter.open(out, audit.Scan(out).config["settings"], {})
        writer.close()
        for t in TABLES:
            names = {p.name for p in (out / t).iterdir()}
            assert names <= {p.name for p in (out / "images").iterdir()}, t
    resumed = audit.scan(dataset, out, **{**FAST, "batch_size": 2})
    assert_same_rows(resumed, reference)


def test_second_writer_is_refused(dataset, tmp_path):
    out = tmp_path / "scan"
    settings = {"x": 1}
    first = ScanWriter.open(out, settings, {})
    try:
        with pytest.raises(audit.errors.AuditError, match="another audit scan is writing"):
            ScanWriter.open(out, settings, {})
    finally:
        first.close()
    ScanWriter.open(out, settings, {}).close()
