"""The package installs without the source tree: configs ship in the wheel, the console script exists."""

import subprocess
import sys
import zipfile


def test_wheel_carries_model_configs_and_entry_point(tmp_path):
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(root)], check=True)
    wheel = next(tmp_path.glob("clip_audit-*.whl"))  # the distribution is clip-audit; `audit` on PyPI is another
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert "audit/scanner/model_configs/audit-tiny.json" in names
        assert "audit/demo/__init__.py" in names
        assert "audit/scanner/model_configs/audit-demo.json" in names
        assert "audit/outputs/templates/report.html.j2" in names and "audit/outputs/templates/report.js" in names
        assert "audit/outputs/templates/diff.html.j2" in names and "audit/outputs/templates/_style.html.j2" in names
        assert "audit/demo/audit-policy.toml" in names  # `audit demo` checks with it
        assert "audit/outputs/fonts/DejaVuSans-Bold.ttf" in names and "audit/outputs/fonts/DejaVu-LICENSE.txt" in names
        assert "audit/demo/weights/audit-demo.safetensors" in names
        assert "audit/demo/weights/MODEL_CARD.md" in names
        entry = next(n for n in names if n.endswith("entry_points.txt"))
        assert "audit = audit.cli:main" in z.read(entry).decode()
        assert "audit/__main__.py" in names and "audit/version.py" in names
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        assert "Name: clip-audit" in meta
        for dep in ("scipy", "safetensors", "filelock"):  # imported directly, so declared
            assert f"Requires-Dist: {dep}" in meta, dep
