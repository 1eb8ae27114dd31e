"""The command line as documented: every command and option has help text, every command has a page of the
documentation with a worked example and a section of the generated reference, every policy key and scan column
is documented (in the style of sqlite-utils' docs test), plus the conventions a user of a Python tool relies on."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

import audit
from audit.cli import app, main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = ROOT / "docs"


def docs_hooks():
    """docs/hooks.py, which generates the reference pages when the site is built."""
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def commands() -> list[tuple[str, object]]:
    root = typer.main.get_command(app)
    found = []

    def walk(prefix: str, cmd) -> None:
        found.append((prefix, cmd))
        if hasattr(cmd, "commands"):  # a group (typer may bring its own copy of click)
            for name, sub in cmd.commands.items():
                walk(f"{prefix} {name}", sub)

    walk("audit", root)
    return found


@pytest.mark.parametrize("path,cmd", commands(), ids=[p for p, _ in commands()])
def test_every_command_and_option_has_help(path, cmd):
    assert (cmd.help or "").strip(), f"{path} has no help text"
    for param in cmd.params:
        assert (getattr(param, "help", None) or "").strip(), f"{path} {param.name} has no help text"


@pytest.mark.parametrize("path", [p for p, _ in commands() if p != "audit"])
def test_every_command_has_a_page_with_a_worked_example(path):
    """docs/commands/<command>.md shows the command at work: a line of a shell block that runs it."""
    page = DOCS / "commands" / f"{path.split()[1]}.md"
    assert page.is_file(), f"no page {page.relative_to(ROOT)} for `{path}`"
    blocks = re.findall(r"```sh\n(.*?)```", page.read_text(encoding="utf-8"), re.S)
    assert any(re.search(rf"^{re.escape(path)}( |$)", b, re.M) for b in blocks), f"{page.name} has no example of `{path}`"


def test_the_generated_cli_reference_has_every_command_and_option():
    text = docs_hooks().cli_reference()
    for path, cmd in commands():
        section = text.split(f"## `{path}`\n", 1)[1].split("\n## `", 1)[0]
        for param in cmd.params:
            name = (param.opts or [param.name])[0] if hasattr(param, "opts") else param.name
            assert name in section, f"`{path}` {name} is missing from the command-line reference"


def test_the_generated_schema_page_has_every_column():
    from audit.store.schema import COLUMN_DOCS, SCHEMAS, VERIFICATION, VERIFICATION_DOCS, VERIFICATION_FOLDER

    hooks = docs_hooks()
    text = hooks.schema_reference()
    for table, schema in SCHEMAS.items():
        section = text.split(f"## `{table}`\n", 1)[1].split("\n## ", 1)[0]
        for field in schema:
            assert f"| `{field.name}` |" in section and hooks.cell(COLUMN_DOCS[table][field.name]) in section
    section = text.split(f"## `{VERIFICATION_FOLDER}`\n", 1)[1]
    for field in VERIFICATION:
        assert f"| `{field.name}` |" in section and hooks.cell(VERIFICATION_DOCS[field.name]) in section


def test_the_policy_reference_names_every_rule_and_key():
    from audit.analysis.associations import LOOK_STATS
    from audit.policy.kinds import KINDS

    text = (DOCS / "reference" / "policy.md").read_text(encoding="utf-8")
    top = text.split("## Top-level keys", 1)[1].split("\n## ", 1)[0]
    for key in ("group_by", "min_count", "fdr", "stop_words", "min_relative_cosine"):
        assert f"| `{key}` |" in top, key
    for name, kind in KINDS.items():
        section = text.split(f"### {name}\n", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
        for key in kind.keys:
            assert f"| `{key}` |" in section, f"[{name}].{key} is not in the policy reference"
    heatmap = text.split("### heatmap\n", 1)[1]
    assert all(f'"{stat}"' in heatmap for stat in LOOK_STATS)


def test_the_readme_is_short_and_its_links_exist():
    assert len(README.splitlines()) <= 120
    assert "make demo" in README and "make test" in README
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_version_from_the_command_and_from_python_m(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"audit {audit.__version__}"
    out = subprocess.run([sys.executable, "-m", "audit", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"audit {audit.__version__}"


@pytest.mark.parametrize("args,complaint", [
    (["--heatmap", "gradcam"], "--heatmap"),
    (["--device", "tpu"], "--device"),
    (["--steps", "-1"], "--steps"),
    (["--candidates", "0"], "--candidates"),
    (["--lr", "0"], "--lr"),
    (["--workers", "-2"], "--workers"),
])
def test_the_parser_refuses_bad_choices_and_bounds(tmp_path, capsys, args, complaint):
    (tmp_path / "photos").mkdir()
    code = main(["scan", str(tmp_path / "photos"), "--out", str(tmp_path / "s"), *args])
    err = capsys.readouterr().err
    assert code == 2 and complaint in err, err
    assert not (tmp_path / "s").exists()  # refused before anything was written


def test_help_lists_the_choices(capsys):
    assert main(["scan", "--help"]) == 0
    out = capsys.readouterr().out
    assert "chefer|occlusion" in out and "auto|cpu|cuda" in out
    assert "AUDIT_MODEL" in out and "AUDIT_PRETRAINED" in out and "AUDIT_DEVICE" in out


def test_environment_variables_set_the_model(tmp_path, capsys, monkeypatch):
    """CI sets the model once for every step: AUDIT_MODEL and AUDIT_PRETRAINED are read by scan and explain."""
    from audit.demo import make_dataset

    make_dataset(tmp_path / "d", images=3, size=64)
    monkeypatch.setenv("AUDIT_MODEL", "audit-tiny")
    monkeypatch.setenv("AUDIT_PRETRAINED", "none")
    monkeypatch.setenv("AUDIT_DEVICE", "cpu")
    code = main(["scan", str(tmp_path / "d"), "--out", str(tmp_path / "s"), "--steps", "2", "--candidates", "2",
                 "--views", "2", "--refine-rounds", "0", "--workers", "0", "-q"])
    assert code == 0, capsys.readouterr().err
    settings = audit.Scan(tmp_path / "s").config["settings"]
    assert settings["model"] == "audit-tiny" and settings["pretrained"] == "none"
    assert audit.Scan(tmp_path / "s").config["runs"][-1]["device"] == "cpu"
    monkeypatch.setenv("AUDIT_DEVICE", "tpu")
    assert main(["scan", str(tmp_path / "d"), "--out", str(tmp_path / "s")]) == 2


def test_cli_defaults_are_the_library_defaults():
    """One source: each scan option's default on the command line is ScanOptions' own."""
    from audit.scanner.options import ScanOptions

    defaults = ScanOptions()
    scan_cmd = dict(commands())["audit scan"]
    seen = 0
    for param in scan_cmd.params:
        if param.name in ("source", "out", "words", "words_file"):
            continue
        expected = getattr(defaults, param.name)
        default = param.default
        if param.name == "batch_size":
            expected = str(expected)
        assert default == expected, (param.name, default, expected)
        seen += 1
    assert seen >= 20


def test_python_api_signature_matches_scan_options():
    import dataclasses
    import inspect

    from audit.scanner.options import ScanOptions

    params = inspect.signature(audit.scan).parameters
    fields = {f.name: f.default for f in dataclasses.fields(ScanOptions)}
    assert {k: p.default for k, p in params.items() if p.kind is p.KEYWORD_ONLY} == fields
    assert all(p.annotation is not inspect.Parameter.empty for p in params.values())


def test_audit_functions_survive_importing_every_module():
    """audit.scan and audit.check stay functions: no subpackage of the same name replaces them on import."""
    code = ("import importlib, pkgutil, audit;"
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(audit.__path__, 'audit.')"
            " if not m.name.endswith('__main__')];"
            "print(all(callable(getattr(audit, f)) and not hasattr(getattr(audit, f), '__path__')"
            " for f in ('scan', 'report', 'check', 'diff', 'explain')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.stdout.strip() == "True", out.stderr


def test_the_library_logs_instead_of_printing(tmp_path):
    """From Python, a scan's lines are log records of the "audit" logger: silent until the caller configures
    logging, then shown. Nothing goes to stdout either way."""
    from audit.demo import make_dataset

    make_dataset(tmp_path / "d", images=3, size=64)
    call = (f"audit.scan({str(tmp_path / 'd')!r}, {{out!r}}, model='audit-tiny', pretrained='none', steps=1, "
            "candidates=2, views=2, refine_rounds=0, workers=0, device='cpu')")
    outputs = []
    for setup, out in (("", tmp_path / "s1"), ("logging.basicConfig(level=logging.INFO);", tmp_path / "s2")):
        code = f"import logging, audit; {setup} " + call.format(out=str(out))
        outputs.append(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                      env={**os.environ, "HF_HUB_OFFLINE": "1"}))
    silent, shown = outputs
    assert silent.stdout == shown.stdout == ""
    assert "audit scan:" not in silent.stderr
    assert "3 images to scan" in shown.stderr and "images scanned" in shown.stderr
