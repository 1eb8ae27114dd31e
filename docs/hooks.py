"""MkDocs hooks: the pages and pictures that are made from the code and the demo at build time, so that they
cannot drift from what `audit` does.

- reference/cli.md: every command and option, read from the Typer app (the text `--help` shows);
- reference/schema.md: every table and column of a scan directory, read from audit/store/schema.py;
- images/report.png, images/explain-mosaic.png and snippets/opinion.txt: `audit demo` run once (cached in
  build/docs-assets under a hash of the package's files), its report photographed in headless Chromium.
"""

from __future__ import annotations

import hashlib
import html
import logging
import shutil
import subprocess
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "build" / "docs-assets"
log = logging.getLogger("mkdocs.hooks.audit")


# ---- the command line ---------------------------------------------------------------------------------

def cell(text: str) -> str:
    """Text for a Markdown table cell: HTML escaped, pipes escaped, on one line."""
    return html.escape(" ".join(str(text).split()), quote=False).replace("|", "\\|")


def code_cell(text: str) -> str:
    """Text as code in a Markdown table cell: a code span shows its text as it is (no escapes), and the table
    does not split a row at a pipe inside one."""
    return f"``{' '.join(str(text).split())}``"


def commands() -> list[tuple[str, object]]:
    """Every command of the Typer app, as click sees it: ("audit scan", command), depth first."""
    import typer

    from audit.cli import app

    found = []

    def walk(path: str, cmd) -> None:
        found.append((path, cmd))
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(f"{path} {name}", sub)

    walk("audit", typer.main.get_command(app))
    return found


def cli_reference() -> str:
    lines = ["# Command-line reference", "",
             "Generated from the command line itself when the documentation is built: the same text as "
             "`audit COMMAND --help`. Options that can come from the environment say so (`env var`).", ""]
    for path, cmd in commands():
        ctx = cmd.make_context(path.split()[-1], [], resilient_parsing=True)
        lines += [f"## `{path}`", "", (cmd.help or "").strip(), "", "```text",
                  f"{path} {' '.join(cmd.collect_usage_pieces(ctx))}", "```", ""]
        params = [p for p in cmd.params if not getattr(p, "hidden", False)]
        if params:
            panels: dict[str, list] = {}
            for p in params:
                panels.setdefault(getattr(p, "rich_help_panel", None) or "", []).append(p)
            for panel, members in panels.items():
                if panel:
                    lines += [f"**{panel}**", ""]
                lines += ["| argument or option | what it does |", "|---|---|"]
                for p in members:
                    name, help_text = p.get_help_record(ctx) or (p.name, "")
                    lines.append(f"| {code_cell(name)} | {cell(help_text)} |")
                lines.append("")
        subs = getattr(cmd, "commands", {})
        if subs:
            lines += ["Commands: " + ", ".join(f"`{path} {n}`" for n in subs), ""]
    return "\n".join(lines)


# ---- the scan directory ---------------------------------------------------------------------------------

def columns(table, docs: dict[str, str]) -> list[str]:
    """A second pass's table as Markdown: each column's name, Arrow type and meaning."""
    return ["| column | type | meaning |", "|---|---|---|",
            *[f"| `{field.name}` | {cell(str(field.type))} | {cell(docs[field.name])} |" for field in table]]


def schema_reference() -> str:
    from audit.store import schema

    lines = ["# The scan directory", "",
             f"Generated from `audit/store/schema.py` when the documentation is built. Schema version "
             f"{schema.SCHEMA_VERSION}; versions {', '.join(map(str, schema.READABLE_VERSIONS))} are read (and "
             "resumed) as this one, every column added since being null in their rows.", "",
             "```text", "scan-dir/",
             "  scan.json                 settings, tool and schema version, one record per run",
             *[f"  {name}/part-*.parquet" for name in schema.TABLES],
             f"  {schema.VERIFICATION_FOLDER}/part-*.parquet  written by `audit verify`, with its settings.json",
             f"  {schema.DUPLICATES_FOLDER}/copies.parquet, leaks.parquet, settings.json  written by `audit duplicates` "
             "(or on first use)",
             f"  {schema.SLICES_FOLDER}/slices.parquet, words.parquet, tests.parquet, label_issues.parquet, "
             "settings.json  written by `audit slices` (or on first use by a policy rule)",
             f"  {schema.VOCABULARY_FOLDER}/vocabulary.parquet  a concepts scan's (or `audit slices --vocabulary`'s) "
             "text embeddings",
             "```", "",
             "Each table is a folder of Parquet part files; a part counts once its commit marker is written, so "
             "a reader never sees half a batch. Read them with `audit.Scan(path)` (pandas or Arrow), DuckDB "
             "(`read_parquet('scan-dir/tokens/*.parquet')`) or any Parquet reader.", ""]
    for name in schema.TABLES:
        lines += [f"## `{name}`", "", "| column | type | meaning |", "|---|---|---|"]
        for field in schema.SCHEMAS[name]:
            kind = f"{field.type}" + ("" if field.nullable else ", never null")
            lines.append(f"| `{field.name}` | {cell(kind)} | {cell(schema.COLUMN_DOCS[name][field.name])} |")
        lines.append("")
    lines += ["An `images` table also holds the source's metadata columns (a manifest's other columns, a "
              "WebDataset sample's JSON keys), stored as strings after these.", "",
              f"## `{schema.VERIFICATION_FOLDER}`", "",
              "Written by `audit verify` (a folder of part files and the settings they were made with), never by "
              "the scan itself; read it with `audit.Scan(path).verification()`.", "",
              *columns(schema.VERIFICATION, schema.VERIFICATION_DOCS)]
    lines += ["", f"## `{schema.DUPLICATES_FOLDER}`", "",
              "Written by `audit duplicates` (and by report, check, diff and verify the first time they count "
              "copies), never by the scan itself: whole files beside a settings.json that names the scan's parts "
              "they were computed from (a resumed scan's are computed again). `copies.parquet` holds one row per "
              "image in a cluster of copies:", "", *columns(schema.DUPLICATES, schema.DUPLICATES_DOCS)]
    lines += ["", "`leaks.parquet` one row per image with a copy on the other side of a split or in another scan:",
              "", *columns(schema.LEAKS, schema.LEAKS_DOCS)]
    lines += ["", f"## `{schema.SLICES_FOLDER}`", "",
              "Written by `audit slices` (and by `audit check` the first time a `[slices]` or `[label_issues]` "
              "rule needs them), never by the scan itself: whole files beside a settings.json that names the scan's "
              "parts and the settings they were computed from."]
    for file, table, docs in (("slices.parquet", schema.SLICES, schema.SLICES_DOCS),
                              ("words.parquet", schema.SLICE_WORDS, schema.SLICE_WORDS_DOCS),
                              ("tests.parquet", schema.SLICE_TESTS, schema.SLICE_TESTS_DOCS),
                              ("label_issues.parquet", schema.LABEL_ISSUES, schema.LABEL_ISSUES_DOCS)):
        lines += ["", f"`{file}`:", "", *columns(table, docs)]
    lines += ["", f"## `{schema.VOCABULARY_FOLDER}`", "",
              "Written by a concepts scan (its vocabulary) and by `audit slices --vocabulary` (the one it described "
              "slices with; the last one written stays), so that `audit check` and `audit diff`, which load no "
              "model, can say an embedding drift in words. `vocabulary.parquet`, with the model it was embedded "
              "under in its metadata:", "", *columns(schema.VOCABULARY, schema.VOCABULARY_DOCS)]
    return "\n".join(lines) + "\n"


# ---- pictures from the demo -----------------------------------------------------------------------------

def _package_key() -> str:
    """A hash of every file of the package: the demo's pictures are made again when any of them changes."""
    digest = hashlib.sha256()
    for p in sorted((ROOT / "audit").rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            digest.update(str(p.relative_to(ROOT)).encode() + b"\0" + p.read_bytes())
    return digest.hexdigest()[:16]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise RuntimeError("the docs photograph the demo's report with headless Chromium: run `make browser` "
                           "(Debian's chromium package) first")
    return path


def _logged(call, path: Path):
    """call() with the "audit" logger's messages (what the command prints on stderr) also written to path, which
    the tests' demo fixture reads when it takes this run instead of making its own."""
    logger = logging.getLogger("audit")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        return call()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def demo_run_for_this_package() -> Path | None:
    """The demo folder of the run made for this very version of the package, when one is complete."""
    done = ASSETS / _package_key()
    return done / "demo" if (done / "complete").exists() and (done / "demo.log").exists() else None


def demo_assets() -> Path:
    """The demo run once per version of the package: its report photographed, an explain mosaic and its
    opinion.txt. Returns the folder holding report.png, explain-mosaic.png and opinion.txt."""
    from audit.demo import run_demo

    done = ASSETS / _package_key()
    if (done / "complete").exists():
        return done
    if ASSETS.exists():
        shutil.rmtree(ASSETS)
    log.info("running `audit demo` for the documentation's pictures (a minute or two, once per version)")
    done.mkdir(parents=True)
    report = _logged(lambda: run_demo(done / "demo", quiet=True, device="cpu"), done / "demo.log")
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--no-first-run", "--disable-background-networking", f"--user-data-dir={done / 'profile'}",
                    "--window-size=1200,1500", f"--screenshot={done / 'report.png'}", report.resolve().as_uri()],
                   check=True, capture_output=True, timeout=180)
    shutil.rmtree(done / "profile", ignore_errors=True)
    folder = sorted(p for p in (done / "demo" / "explain").iterdir() if (p / "mosaic.png").exists())[0]
    shutil.copy(folder / "mosaic.png", done / "explain-mosaic.png")
    shutil.copy(folder / "opinion.txt", done / "opinion.txt")
    (done / "complete").touch()
    return done


# ---- MkDocs ---------------------------------------------------------------------------------------------

def on_files(files, config):
    files.append(File.generated(config, "reference/cli.md", content=cli_reference()))
    files.append(File.generated(config, "reference/schema.md", content=schema_reference()))
    assets = demo_assets()
    for name in ("report.png", "explain-mosaic.png"):
        files.append(File.generated(config, f"images/{name}", abs_src_path=str(assets / name)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    """`{{ demo_opinion }}` in a page: the opinion.txt that `audit demo` wrote for one of its photos."""
    if "{{ demo_opinion }}" in markdown:
        text = (demo_assets() / "opinion.txt").read_text(encoding="utf-8")
        markdown = markdown.replace("{{ demo_opinion }}", text.rstrip("\n"))
    return markdown
