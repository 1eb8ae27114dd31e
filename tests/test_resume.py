"""A scan killed at any moment, then resumed, ends with exactly the rows of an uninterrupted scan."""

import os
import signal
import subprocess
import sys
import time

import pytest

import audit
from audit.store.schema import TABLES
from audit.store.writer import ScanWriter

from .helpers import FAST, assert_same_rows, count_parts, save_noise


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


@pytest.mark.parametrize("kill_after_parts", [0, 1, 4])
def test_sigkill_then_resume(dataset, reference, tmp_path, kill_after_parts):
    out = tmp_path / "scan"
    argv = [sys.executable, "-m", "audit.cli", "scan", str(dataset), "--out", str(out), "--model", "audit-tiny",
            "--pretrained", "none", "--steps", str(FAST["steps"]), "--candidates", str(FAST["candidates"]),
            "--views", str(FAST["views"]), "--precision", FAST["precision"], "--workers", "0", "--batch-size", "2", "--commit-every", "0", "-q"]
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
    assert killed_at < 7  # 13 images in batches of 2 make 7 units (--commit-every 0: one part each)
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

    monkeypatch.setattr("audit.store.writer.os.replace", dying_replace)
    with pytest.raises(Crash):
        audit.scan(dataset, out, **{**FAST, "batch_size": 2, "commit_every": 0})
    monkeypatch.setattr("audit.store.writer.os.replace", real_replace)
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


def _oom_above(monkeypatch, size):
    """Make every batch of more than `size` decoded images fail the way a full GPU does."""
    import torch

    from audit.scanner import pipeline as scanner

    real = scanner._BatchScanner.run
    seen = []

    def run(self, batch):
        seen.append(len(batch.indices))
        if len(batch.indices) > size:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(self, batch)

    monkeypatch.setattr(scanner._BatchScanner, "run", run)
    return seen


def test_out_of_memory_halves_the_batch_and_keeps_every_row(dataset, reference, tmp_path, monkeypatch, capsys):
    seen = _oom_above(monkeypatch, 2)
    got = audit.scan(dataset, tmp_path / "scan", **{**FAST, "batch_size": 8, "quiet": False})
    assert_same_rows(got, reference)
    first = seen[0]
    assert first >= 7 and seen[1:3] == [(first + 1) // 2, 2]
    assert max(seen[3:]) <= 2  # later batches start at the size that fit
    run = got.config["runs"][-1]
    assert run["batch_size"] == 8 and run["batch_size_used"] == 2
    err = capsys.readouterr().err
    assert f"out of memory with {first} images at once; going on with batches of {(first + 1) // 2}" in err
    assert err.count("out of memory") == 2
    assert "batch size lowered to 2 to fit memory" in err


def test_an_image_that_never_fits_stops_with_one_line_and_keeps_committed_rows(dataset, tmp_path, monkeypatch,
                                                                                capsys):
    import torch

    from audit.cli import main
    from audit.scanner import pipeline as scanner

    real = scanner._BatchScanner.run

    def run(self, batch):
        if batch.indices and max(batch.indices) >= 6:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(self, batch)

    monkeypatch.setattr(scanner._BatchScanner, "run", run)
    out = tmp_path / "scan"
    assert main(["scan", str(dataset), "--out", str(out), "--model", "audit-tiny", "--pretrained", "none",
                 "--steps", "1", "--candidates", "2", "--views", "2", "--workers", "0", "--batch-size", "2",
                 "--quiet"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("audit: error: a single image does not fit in device memory"), line
    kept = audit.Scan(out)
    assert len(kept.images()) + len(kept.errors()) == 6  # the batches before it stay committed; a rerun resumes


def test_other_errors_are_not_mistaken_for_out_of_memory(dataset, tmp_path, monkeypatch):
    from audit.scanner import pipeline as scanner

    def run(self, batch):
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(scanner._BatchScanner, "run", run)
    with pytest.raises(RuntimeError, match="device-side assert"):
        audit.scan(dataset, tmp_path / "scan", **FAST)


def test_batches_are_committed_together_by_count_and_by_age(dataset, reference, tmp_path, monkeypatch):
    """A part holds the batches of up to COMMIT_IMAGES images or of commit_every seconds since the last commit; the
    rows do not depend on how they were grouped."""
    every = audit.scan(dataset, tmp_path / "every", **{**FAST, "batch_size": 2, "commit_every": 0})
    assert count_parts(every.root) == 7  # 13 images in batches of 2
    assert count_parts(reference.root) == 1  # the default: a minute's work, and this scan takes seconds
    assert_same_rows(every, reference)
    monkeypatch.setattr("audit.store.writer.COMMIT_IMAGES", 4)
    by_count = audit.scan(dataset, tmp_path / "count", **{**FAST, "batch_size": 2})
    assert count_parts(by_count.root) == 4  # 4 + 4 + 4 + 1 (the broken file's error row counts as an image)
    assert_same_rows(by_count, reference)
    monkeypatch.setattr("audit.store.writer.COMMIT_IMAGES", 10**9)
    clock = iter(range(0, 10**6, 25))  # 25 s pass between two looks at the clock
    monkeypatch.setattr("audit.store.writer.time.monotonic", lambda: next(clock))
    by_age = audit.scan(dataset, tmp_path / "age", **{**FAST, "batch_size": 2, "commit_every": 40})
    assert count_parts(by_age.root) == 4  # every second batch comes 50 s after the last commit
    assert_same_rows(by_age, reference)


def test_a_failing_batch_leaves_the_batches_before_it_committed(dataset, reference, tmp_path, monkeypatch):
    from audit.scanner import pipeline as scanner

    real, calls = scanner._BatchScanner.run, {"n": 0}

    def run(self, batch):
        calls["n"] += 1
        if calls["n"] == 4:
            raise Crash()
        return real(self, batch)

    monkeypatch.setattr(scanner._BatchScanner, "run", run)
    out = tmp_path / "scan"
    with pytest.raises(Crash):
        audit.scan(dataset, out, **{**FAST, "batch_size": 2})
    assert len(audit.Scan(out).images()) + len(audit.Scan(out).errors()) == 6  # three batches, held, then committed
    monkeypatch.setattr(scanner._BatchScanner, "run", real)
    assert_same_rows(audit.scan(dataset, out, **{**FAST, "batch_size": 2}), reference)
