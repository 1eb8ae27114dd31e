import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from audit.cli import configure_logging

from .helpers import save_noise

# Nothing in the tests may reach a model hub: fail fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The concept vocabulary's embedding cache: one per test session, never the user's ~/.cache.
os.environ.setdefault("AUDIT_CACHE_DIR", tempfile.mkdtemp(prefix="audit-test-cache-"))
torch.set_num_threads(min(2, os.cpu_count() or 1))
# Library code logs (logger "audit"); the command line shows those records on stderr, and so do the tests that
# call the library directly, so their assertions read what a user of the command sees.
configure_logging()


@pytest.fixture(scope="session")
def tiny():
    from audit.scanner.models import load_model

    return load_model("audit-tiny", "none", device="cpu", seed=0)


@pytest.fixture(scope="session")
def towers(tiny):
    from audit.scanner.encoders import Towers

    return Towers(tiny)


@pytest.fixture
def small_folder(tmp_path):
    root = tmp_path / "ds"
    for i in range(5):
        save_noise(root / ("cat" if i % 2 else "dog") / f"{i}.png", seed=i)
    save_noise(root / "top.png", seed=9)
    return root


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """One `audit demo` run (60 photos with the planted grass bias): its folder, report and what it said.
    Shared because the scan takes a minute or two on a CPU. `make test` builds the docs first, which run the demo
    for their pictures (docs/hooks.py): when that run was made from these very package files it is copied
    instead of made again (its images stay where it put them; no test writes to them)."""
    import contextlib
    import io
    import shutil

    from audit.demo import run_demo

    root = tmp_path_factory.mktemp("demo") / "demo"
    made = _docs_demo_run()
    if made is not None:
        shutil.copytree(made, root)
        return root, root / "report.html", (made.parent / "demo.log").read_text(encoding="utf-8")
    printed = io.StringIO()
    with contextlib.redirect_stderr(printed):
        report = run_demo(root, images=60, quiet=True, device="cpu")
    return root, report, printed.getvalue()


def _docs_demo_run():
    import importlib.util
    from pathlib import Path

    try:
        spec = importlib.util.spec_from_file_location("audit_docs_hooks", Path(__file__).parents[1] / "docs" / "hooks.py")
        hooks = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(hooks)
    except ImportError:  # no docs extra: make the run here
        return None
    return hooks.demo_run_for_this_package()


@pytest.fixture(scope="session")
def unbiased_demo_scan(tmp_path_factory):
    """A demo dataset of the same kind without the planted bias (backgrounds uniform at every site)."""
    from audit.demo import DEMO_SETTINGS, make_dataset
    from audit.scanner.pipeline import run_scan

    root = tmp_path_factory.mktemp("unbiased")
    manifest = make_dataset(root / "dataset", images=60, seed=1, bias=None)
    run_scan(str(manifest), str(root / "scan"), model="audit-demo", pretrained="auto", workers=0, device="cpu",
             quiet=True, **DEMO_SETTINGS)
    return root / "scan"


# tests/fused_check.py runs the fused Triton step under Triton's interpreter, in a process of its own (about a
# minute and a half of one core). It starts as soon as the suite knows a test needs it and runs beside the other
# tests; the fixture collects what it measured.
_BACKGROUND: dict[str, subprocess.Popen] = {}


def _start_fused_check() -> subprocess.Popen:
    here = Path(__file__).parent
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(here.parent), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(here / "fused_check.py")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=here.parent, env=env)


def pytest_collection_finish(session):
    if any(Path(str(item.fspath)).name == "test_fused_step.py" for item in session.items):
        _BACKGROUND["fused"] = _start_fused_check()


def pytest_sessionfinish(session, exitstatus):
    for proc in _BACKGROUND.values():
        proc.kill()


@pytest.fixture(scope="session")
def fused_measured():
    proc = _BACKGROUND.pop("fused", None) or _start_fused_check()
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])
