"""The package installs without the source tree: configs ship in the wheel, the console script exists."""

import subprocess
import sys
import zipfile


def test_wheel_carries_model_configs_and_entry_point(tmp_path):
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(root)], check=True)
    wheel = next(tmp_path.glob("audit-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert "audit/model_configs/audit-tiny.json" in names
        assert "audit/demo/__init__.py" in names
        entry = next(n for n in names if n.endswith("entry_points.txt"))
        assert "audit = audit.cli:main" in z.read(entry).decode()


def test_demo_runs_end_to_end(tmp_path, capsys):
    from audit.demo import run_demo

    run_demo(tmp_path / "demo", images=6, quiet=True)
    out = capsys.readouterr().out
    assert "Most frequent words per label" in out
    import audit

    scan = audit.Scan(tmp_path / "demo" / "scan")
    images = scan.images()
    assert len(images) == 6 and set(images.label) == {"circle", "square"}
    assert images.x0.notna().all() and scan.heatmaps().box_mass.notna().all()
