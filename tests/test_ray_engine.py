"""`audit scan --engine ray` on a local Ray cluster (2 CPUs): the same rows as the local engine, and the same rows
after the driver is killed with SIGKILL and the command run again, or after a Ray worker process is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import audit
from audit.demo import make_dataset

from .helpers import assert_same_rows, count_parts

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

# Both opinions: the concept decomposition's dataset mean is computed by the driver, before any actor starts.
SETTINGS = ["--model", "audit-tiny", "--pretrained", "none", "--steps", "3", "--candidates", "4", "--views", "4",
            "--refine-rounds", "1", "--words", "red,grass", "--device", "cpu", "--batch-size", "2", "--opinion", "both"]
KW = dict(model="audit-tiny", pretrained="none", steps=3, candidates=4, views=4, refine_rounds=1, words="red,grass",
          device="cpu", batch_size=2, quiet=True, opinion="both")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    make_dataset(root / "ds", images=18, size=64)
    (root / "ds" / "north" / "broken.png").write_bytes(b"not a png")
    return root / "ds"


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    return audit.scan(dataset, tmp_path_factory.mktemp("ref") / "scan", workers=0, **KW)


def _command(dataset: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "audit", "scan", str(dataset), "--out", str(out), *SETTINGS, "--engine", "ray",
            "--workers", "2", "--commit-every", "0", "-q"]


def _wait_for_parts(proc: subprocess.Popen, out: Path, n: int, timeout: float = 240) -> None:
    start = time.monotonic()
    while count_parts(out) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - start < timeout, "no committed unit in time"
        time.sleep(0.2)


def test_ray_engine_gives_the_rows_of_the_local_engine(dataset, reference, tmp_path, monkeypatch):
    import logging

    import ray.data  # noqa: F401 - Ray sets its loggers' levels on import: what the engine must give back

    monkeypatch.delenv("RAY_BACKEND_LOG_LEVEL", raising=False)
    levels = {name: logging.getLogger(name).level for name in ("ray", "ray.data")}
    got = audit.scan(dataset, tmp_path / "scan", engine="ray", workers=2, **KW)
    assert_same_rows(got, reference)
    # The engine quiets Ray while it runs and gives the process's logging back afterwards.
    assert "RAY_BACKEND_LOG_LEVEL" not in os.environ
    assert {name: logging.getLogger(name).level for name in levels} == levels
    run = got.config["runs"][-1]
    assert run["engine"] == "ray" and run["images"] == 18 and run["errors"] == 1
    assert run["dataset_fingerprint"] == reference.config["runs"][-1]["dataset_fingerprint"]
    assert {"ascent", "concept", "probe"} == set(got.tokens().kind)
    assert got.config["concept_mean"] == reference.config["concept_mean"]  # the driver's mean is the local one


def test_webdataset_probes_on_ray_equal_the_local_rows_bit_for_bit(tmp_path):
    """Two shards, 48 images, probe words: every value the two engines store is the same bits (each image's
    embedding and scores are computed in chunks of one shape, whatever the batch an actor was given); the
    heatmaps, the model's own pass over each batch's pairs, within float noise."""
    from .source_kinds import write_shards

    manifest = make_dataset(tmp_path / "ds", images=48, size=64)
    shards = write_shards(manifest, tmp_path / "shards", per_shard=24)
    kw = dict(model="audit-tiny", pretrained="none", opinion="probes", words="cat,dog", device="cpu", quiet=True,
              embeddings="float32", precision="float32")
    local = audit.scan(shards, tmp_path / "local", workers=0, batch_size=16, **kw)
    ray = audit.scan(shards, tmp_path / "ray", engine="ray", workers=2, batch_size=5, **kw)
    assert ray.config["runs"][-1]["engine"] == "ray" and len(ray.images()) == 48
    assert_same_rows(ray, local, exact=True)


def test_driver_killed_then_rerun_gives_the_uninterrupted_rows(dataset, reference, tmp_path):
    out = tmp_path / "scan"
    proc = subprocess.Popen(_command(dataset, out), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        _wait_for_parts(proc, out, 2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert count_parts(out) < 10  # it was stopped partway
    done = subprocess.run(_command(dataset, out), env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert_same_rows(audit.Scan(out), reference)


def test_a_killed_ray_worker_is_replaced_and_the_scan_finishes_with_the_same_rows(dataset, reference, tmp_path):
    out = tmp_path / "scan"
    proc = subprocess.Popen(_command(dataset, out), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        _wait_for_parts(proc, out, 1)
        actors = subprocess.run(["pgrep", "-f", "MapWorker"], capture_output=True, text=True).stdout.split()
        assert actors, "no Ray actor process found"
        os.kill(int(actors[0]), signal.SIGKILL)
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err.decode()
    assert_same_rows(audit.Scan(out), reference)
