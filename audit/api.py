"""The Python API: the command line's jobs as functions with typed keyword arguments, returning objects that
read back, render and write what they found. `import audit` exposes them (audit.scan, audit.report, ...).

Defaults are read from the one place that defines them (ScanOptions, audit.analysis, audit.outputs), so the
API, the command line and the library cannot disagree.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from audit.analysis import COPIES, FDR, MIN_COUNT, MIN_RELATIVE_COSINE, PROCEDURE, STOP_WORDS
from audit.errors import AuditError
from audit.outputs import TOP
from audit.scanner.options import ScanOptions, VerifyOptions
from audit.store.reader import Scan

if TYPE_CHECKING:
    import pandas as pd

    from audit.analysis.associations import Associations
    from audit.analysis.duplicates import Copies
    from audit.outputs.diff import Diff
    from audit.outputs.explain import Explained
    from audit.outputs.verification import VerificationSummary
    from audit.policy.rules import CheckResult

log = logging.getLogger("audit")
_D = ScanOptions()


def scan(source: str | os.PathLike, out: str | os.PathLike, *,
         model: str = _D.model,
         pretrained: str = _D.pretrained,
         device: str = _D.device,
         batch_size: int | str = _D.batch_size,
         workers: int = _D.workers,
         seed: int = _D.seed,
         steps: int = _D.steps,
         tokens_per_seq: int = _D.tokens_per_seq,
         candidates: int = _D.candidates,
         lr: float = _D.lr,
         views: int = _D.views,
         resample_views: bool = _D.resample_views,
         refine_rounds: int = _D.refine_rounds,
         refine_top: int = _D.refine_top,
         refine_words: bool = _D.refine_words,
         prompt: str = _D.prompt,
         start_layer: int | None = _D.start_layer,
         start_layer_text: int = _D.start_layer_text,
         heatmap: str | None = _D.heatmap,
         occlusion_window: int | None = _D.occlusion_window,
         legrad_layers: int | None = _D.legrad_layers,
         source_kind: str = _D.source_kind,
         path_column: str = _D.path_column,
         image_column: str | None = _D.image_column,
         id_column: str | None = _D.id_column,
         split: str | None = _D.split,
         max_pixels: int = _D.max_pixels,
         words: tuple[str, ...] | str = _D.words,
         words_file: str | None = _D.words_file,
         templates: str | None = _D.templates,
         embeddings: str = _D.embeddings,
         no_ascent: bool = _D.no_ascent,
         opinion: str = _D.opinion,
         vocabulary: str | None = _D.vocabulary,
         concept_l1: float = _D.concept_l1,
         concepts_per_image: int = _D.concepts_per_image,
         concept_heatmaps: int = _D.concept_heatmaps,
         concept_mean: str | None = _D.concept_mean,
         overwrite: bool = _D.overwrite,
         engine: str = _D.engine,
         ray_address: str | None = _D.ray_address,
         retry_errors: bool = _D.retry_errors,
         commit_every: float = _D.commit_every,
         kernel: str = _D.kernel,
         triton_tiles: str | None = _D.triton_tiles,
         precision: str = _D.precision,
         quiet: bool = _D.quiet) -> Scan:
    """Scan a dataset into the scan directory `out`, resuming what is there; returns a handle that reads the
    tables back. `source` is an image folder, a manifest, WebDataset shards, a Parquet file of image bytes or a
    Hugging Face dataset (local path or URL); the options are `audit scan`'s (see ScanOptions). A `kernel` of
    "auto" and no `triton_tiles` take the environment's AUDIT_KERNEL (AUDIT_COMPILE=0: eager) and
    AUDIT_TRITON_TILES: the one place the library reads them."""
    from audit.scanner.pipeline import run_scan

    return run_scan(str(source), str(out), model=model, pretrained=pretrained, device=device,
                    batch_size=batch_size, workers=workers, seed=seed, steps=steps,
                    tokens_per_seq=tokens_per_seq, candidates=candidates, lr=lr, views=views,
                    resample_views=resample_views, refine_rounds=refine_rounds, refine_top=refine_top,
                    refine_words=refine_words,
                    prompt=prompt, start_layer=start_layer, start_layer_text=start_layer_text,
                    heatmap=heatmap, occlusion_window=occlusion_window, legrad_layers=legrad_layers,
                    source_kind=source_kind,
                    path_column=path_column, image_column=image_column, id_column=id_column, split=split,
                    max_pixels=max_pixels, words=words, words_file=words_file,
                    templates=None if templates is None else str(templates), embeddings=embeddings,
                    no_ascent=no_ascent,
                    opinion=opinion, vocabulary=None if vocabulary is None else str(vocabulary),
                    concept_l1=concept_l1, concepts_per_image=concepts_per_image,
                    concept_heatmaps=concept_heatmaps,
                    concept_mean=None if concept_mean is None else str(concept_mean), overwrite=overwrite,
                    engine=engine, ray_address=ray_address, retry_errors=retry_errors,
                    commit_every=commit_every, kernel=env_kernel() if kernel == "auto" else kernel,
                    triton_tiles=os.environ.get("AUDIT_TRITON_TILES") or None if triton_tiles is None else triton_tiles,
                    precision=precision, quiet=quiet)


def env_kernel() -> str:
    """The ascent kernel the environment asks for: AUDIT_KERNEL, else eager under AUDIT_COMPILE=0, else auto."""
    asked = os.environ.get("AUDIT_KERNEL", "").strip().lower()
    if asked:
        return asked
    return "eager" if os.environ.get("AUDIT_COMPILE", "1").strip() == "0" else "auto"


@dataclass
class Report:
    """A rendered bias report: the HTML document and the associations it shows."""
    html: str
    associations: list[Associations]

    @property
    def findings(self) -> pd.DataFrame:
        """Flagged (group, word) pairs beyond a group's own name, every --group-by column and kind of word
        (`column` and `kind` say which)."""
        import pandas as pd

        frames = [a.findings.assign(column=a.column, kind=a.kind) for a in self.associations]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def write(self, path: str | os.PathLike) -> Path:
        from audit.outputs.files import write_text

        return write_text(path, self.html, "report.html")


def report(scan_dir: str | os.PathLike, group_by: str | list[str], *, min_count: int = MIN_COUNT, fdr: float = FDR,
           top: int = TOP, title: str | None = None, stop_words: str | os.PathLike = STOP_WORDS,
           min_relative_cosine: float = MIN_RELATIVE_COSINE, procedure: str = PROCEDURE,
           copies: str = COPIES) -> Report:
    """The bias report of a scan, grouped by one or more image columns. `stop_words` ("default", "none" or a
    file) and `min_relative_cosine` choose which words count; `procedure` ("tarone-bh" or "bh") corrects the
    tests for multiplicity; `copies` ("collapse" or "keep") whether a cluster of copies counts once."""
    from audit.outputs.report import render_report

    columns = [group_by] if isinstance(group_by, str) else list(group_by)
    rendered = render_report(scan_dir, columns, min_count=min_count, fdr=fdr, top=top, title=title,
                             stop_words=str(stop_words), min_relative_cosine=min_relative_cosine, procedure=procedure,
                             copies=copies)
    return Report(rendered.html, rendered.associations)


@dataclass
class CheckOutcome:
    """A policy check: `passed`, the exit code `audit check` would give, each rule's result, and its outputs."""
    result: CheckResult

    @property
    def passed(self) -> bool:
        return self.result.exit_code == 0

    @property
    def exit_code(self) -> int:
        return self.result.exit_code

    @property
    def rules(self):
        return self.result.results

    def text(self) -> str:
        from audit.outputs.check_output import text

        return text(self.result)

    def to_json(self) -> str:
        from audit.outputs.check_output import to_json

        return to_json(self.result)

    def junit(self) -> str:
        from audit.outputs.check_output import junit

        return junit(self.result)

    def markdown(self) -> str:
        from audit.outputs.check_output import markdown

        return markdown(self.result)

    def write(self, *, junit: str | os.PathLike | None = None, json: str | os.PathLike | None = None,
              markdown: str | os.PathLike | None = None) -> None:
        """Write the outputs asked for (JUnit XML, JSON, Markdown), each whole or not at all."""
        from audit.outputs.check_output import write_outputs

        write_outputs(self.result, junit_path=junit, json_path=json, markdown_path=markdown)


def check(scan_dir: str | os.PathLike, policy: str | os.PathLike, *,
          baseline: str | os.PathLike | None = None, copies: str | None = None) -> CheckOutcome:
    """Evaluate a policy file's rules on a scan (and, for drift rules, against a baseline scan). `copies`
    ("collapse" or "keep") overrides the policy's `copies` key."""
    from audit.policy.parse import load_policy
    from audit.policy.rules import run_check

    return CheckOutcome(run_check(scan_dir, load_policy(policy), baseline, copies))


@dataclass
class DiffOutcome:
    """What changed between two scans, with its three renderings."""
    diff: Diff

    def text(self) -> str:
        from audit.outputs.diff import text

        return text(self.diff)

    def markdown(self) -> str:
        from audit.outputs.diff import markdown

        return markdown(self.diff)

    def html(self) -> str:
        from audit.outputs.diff import html

        return html(self.diff)

    def write(self, path: str | os.PathLike) -> Path:
        """Write to a .html or .md file (chosen by the suffix)."""
        from audit.outputs.diff import write_diff

        return write_diff(self.diff, path)


def diff(old: str | os.PathLike, new: str | os.PathLike, *, group_by: str | list[str] | None = None,
         min_count: int = MIN_COUNT, fdr: float = FDR, kind: str | None = None,
         stop_words: str | os.PathLike = STOP_WORDS,
         min_relative_cosine: float = MIN_RELATIVE_COSINE, copies: str = COPIES) -> DiffOutcome:
    """Compare two scans: images added and removed, word shift, associations gained and lost, and whether what
    the images show moved (a two-sample test on their stored embeddings); `kind` chooses the words compared
    ("ascent" or "concept"; None: those the new scan holds, the ascent's else the concepts); `copies` ("collapse" or "keep") whether a cluster of copies counts once."""
    from audit.outputs.diff import build_diff

    columns = [group_by] if isinstance(group_by, str) else list(group_by or [])
    return DiffOutcome(build_diff(old, new, columns, min_count=min_count, fdr=fdr, kind=kind,
                                  stop_words=str(stop_words), min_relative_cosine=min_relative_cosine,
                                  copies=copies))


_V = VerifyOptions()


def duplicates(scan_dir: str | os.PathLike, *, split_by: str | None = None,
               against: list[str | os.PathLike] | None = None, same_hash_distance: int | None = None,
               max_hash_distance: int | None = None, min_cosine: float | None = None,
               tight_cosine: float | None = None, neighbours: int | None = None) -> Copies:
    """The copies in a scan: exact (equal decoded pixels) and near (stored embeddings confirmed by perceptual
    hashes), in clusters that cannot chain; and leaks of copies across the values of `split_by` or into the scans
    `against`. Stored in scan-dir/duplicates/, which report, check, diff and verify then read. A threshold left
    None is the default for the scan's model (analysis.duplicates.CopySettings)."""
    from audit.analysis.duplicates import CopySettings
    from audit.analysis.duplicates import duplicates as find

    scan = Scan(scan_dir)
    _fingerprint_older_scan(scan)
    settings = CopySettings.for_model(scan.settings.get("model"), same_hash_distance=same_hash_distance,
                                      max_hash_distance=max_hash_distance, min_cosine=min_cosine,
                                      tight_cosine=tight_cosine, neighbours=neighbours)
    return find(scan_dir, split_by=split_by, against=[str(a) for a in against or []], settings=settings)


def slices(scan_dir: str | os.PathLike, *, by: list[str] | None = None, labels: str | None = None,
           k: int | None = None, max_k: int | None = None, fdr: float = FDR, min_count: int = MIN_COUNT,
           copies: str = COPIES, kind: str | None = None, stop_words: str | os.PathLike = STOP_WORDS,
           min_relative_cosine: float = MIN_RELATIVE_COSINE, vocabulary: str | os.PathLike | None = None,
           pretrained: str | None = None, device: str = "auto", seed: int = 0):
    """The slices of a scan (analysis.slices): k-means clusters of the stored embeddings (k None: chosen by
    silhouette), each described by the stored words over-represented in it and, with `vocabulary` ("words",
    "tokens" or a file; loads the scan's model for its text tower), by the vocabulary entries its mean embedding
    points to; and tested for skew across each column of `by` (default: label) under the report's FDR procedure.
    `labels`: a column to list label-issue candidates for (a cross-fitted probe and cleanlab). Stored in
    scan-dir/slices/, which report and check read."""
    from audit.analysis.associations import word_filter
    from audit.analysis.slices import find_slices, settings_with

    settings = settings_with(k=k, max_k=max_k, fdr=fdr, min_size=min_count, seed=seed)
    words = word_filter(stop_words, min_relative_cosine)
    text = None
    if vocabulary is not None:
        from audit.analysis.embedding_drift import embedded_scan
        from audit.scanner.describe import for_scan

        text = for_scan(embedded_scan(Scan(scan_dir)), None if vocabulary == "default" else str(vocabulary),
                        pretrained, device)
    return find_slices(scan_dir, by=by, labels=labels, settings=settings, copies=copies, kind=kind, words=words,
                       vocabulary=text)


def _fingerprint_older_scan(scan: Scan) -> None:
    """A scan made before schema 6 holds no fingerprints: take them from its images, read again where their
    paths can be opened, into scan-dir/fingerprints/ (a table of its own: the scan's files are never edited)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from audit.sources.refingerprint import fingerprint_files
    from audit.store.schema import FINGERPRINTS_FOLDER

    images = scan.table("images")
    lacking = images.filter(pc.is_null(images["pixel_sha256"]))
    target = scan.root / FINGERPRINTS_FOLDER / "fingerprints.parquet"
    if not lacking.num_rows or target.exists():
        return
    log.info(f"audit duplicates: {lacking.num_rows} images were scanned before audit took fingerprints; reading "
             "them again to take them")
    table, missed = fingerprint_files(lacking["image_id"].to_pylist(), lacking["path"].to_pylist(),
                                      _D.max_pixels, scan.config.get("source"))
    if missed:
        log.info(f"audit duplicates: {missed} of them could not be read again (moved or changed since the scan)")
    try:
        target.parent.mkdir(exist_ok=True)
        tmp = target.with_name(".tmp-fingerprints.parquet")
        pq.write_table(table, tmp)
        tmp.replace(target)
    except OSError as e:
        log.info(f"audit duplicates: fingerprints not stored ({scan.root} cannot be written: {e.strerror or e})")


def ask(scan_dir: str | os.PathLike, out: str | os.PathLike, *, words: tuple[str, ...] | str = (),
        words_file: str | os.PathLike | None = None, templates: str | os.PathLike | None = None,
        heatmaps: bool = False, opinion: str = "probes", vocabulary: str | os.PathLike | None = _D.vocabulary,
        concept_l1: float | None = _D.concept_l1, concepts_per_image: int = _D.concepts_per_image,
        concept_mean: str | os.PathLike | None = _D.concept_mean, pretrained: str | None = None,
        device: str = "auto", overwrite: bool = False, quiet: bool = False) -> Scan:
    """Answer a new question of every image of a finished scan from its stored embeddings (no image is read),
    into a scan directory of its own that report, check, diff and Scan read like any scan; returns it.
    `opinion="probes"` scores `words` in `templates` (openai | simple | none | a file; default: the model's), and
    with `heatmaps` draws their relevancy maps too (costly: the images are read again);
    `opinion="concepts"` makes the concept decomposition again with `vocabulary`, `concept_l1`,
    `concepts_per_image` (centred by the source scan's own image mean when it has one, else `concept_mean`).
    `pretrained`: the weights, when the scan recorded a file elsewhere. A re-run resumes; a source scan that
    changed since is refused (overwrite to ask again)."""
    from audit.scanner.ask import run_ask

    def text(value):
        return None if value is None else str(value)

    return run_ask(scan_dir, out, words=words, words_file=words_file, templates=text(templates), heatmaps=heatmaps,
                   opinion=opinion,
                   vocabulary=text(vocabulary), concept_l1=concept_l1, concepts_per_image=concepts_per_image,
                   concept_mean=text(concept_mean), pretrained=pretrained, device=device, overwrite=overwrite,
                   quiet=quiet)


def verify(scan_dir: str | os.PathLike, *, group_by: str | list[str] | None = None,
           faithfulness_images: int = _V.faithfulness_images, words_per_kind: int = _V.words_per_kind,
           steps: int = _V.steps, random_orders: int = _V.random_orders, grounding_images: int = _V.grounding_images,
           random_draws: int = _V.random_draws, seed: int = _V.seed, pretrained: str | None = None,
           device: str = "auto", min_count: int = MIN_COUNT, fdr: float = FDR,
           stop_words: str | os.PathLike = STOP_WORDS, min_relative_cosine: float = MIN_RELATIVE_COSINE,
           policy: str | os.PathLike | None = None, overwrite: bool = False, quiet: bool = False,
           copies: str | None = None) -> VerificationSummary:
    """How far to trust a scan's maps and findings: loads the scan's model, reads a sample of its images again,
    writes scan-dir/verification/ (resumable; the scan's own tables are never touched) and returns the summary.

    Faithfulness: deletion and insertion areas per relevancy method and kind of word, against random orders, on
    a fixed seeded sample of `faithfulness_images` images (0 skips it). Grounding: for each finding of the
    `group_by` columns (the report's associations, with its word filters), whether blanking the cells that hold
    the top half of the word's relevance lowers its cosine more than blanking as many cells at random.
    `pretrained`: the weights, when the scan's record (a file name) does not say where they are. `policy`: a
    policy file whose group_by, min_count, fdr and word filters replace those arguments, so that `audit check`
    with it reads verdicts made with its own settings. `copies` ("collapse", the default, or "keep"; else the
    policy's): whether a cluster of copies counts once in the findings and their images."""
    from audit.analysis.associations import word_filter
    from audit.analysis.duplicates import check_mode, members_table, open_query
    from audit.analysis.duplicates import header as copies_header
    from audit.analysis.verification import faithfulness_summary, grounding_summary
    from audit.outputs.verification import VerificationSummary
    from audit.scanner.verify import BLANK, run_verify

    columns = [group_by] if isinstance(group_by, str) else list(group_by or [])
    if policy is not None:
        from audit.policy.parse import load_policy

        rules = load_policy(policy)
        columns, min_count, fdr = list(rules.group_by), rules.min_count, rules.fdr
        stop_words, min_relative_cosine = rules.stop_words, rules.min_relative_cosine
        copies = copies or rules.copies
    copies = check_mode(copies or COPIES)
    opts = VerifyOptions(faithfulness_images=faithfulness_images, words_per_kind=words_per_kind, steps=steps,
                         random_orders=random_orders, group_by=tuple(columns), grounding_images=grounding_images,
                         random_draws=random_draws, seed=seed)
    for name in ("faithfulness_images", "grounding_images"):
        if getattr(opts, name) < 0:
            raise AuditError(f"--{name.replace('_', '-')} cannot be negative")
    if min(words_per_kind, steps, random_orders, random_draws) < 1:
        raise AuditError("words_per_kind, steps, random_orders and random_draws must be at least 1")
    words = word_filter(str(stop_words), min_relative_cosine)
    findings = []
    # Copies matter to the findings alone: a faithfulness-only run does not look for them (minutes at a million).
    q = open_query(scan_dir, copies if columns else "keep", columns)
    if columns:
        from audit.analysis.associations import associations
        from audit.store.schema import ASCENT, CONCEPT

        for column in columns:
            for kind in (k for k in q.kinds() if k in (ASCENT, CONCEPT)):  # the association findings
                found = associations(q, column, min_count, fdr, kind=kind, words=words).findings
                findings += [(column, kind, grp, word) for grp, word in zip(found.grp, found.word, strict=True)]
    run_verify(scan_dir, opts, words, findings, {"min_count": min_count, "fdr": fdr, "copies": copies},
               pretrained=pretrained, device=device, overwrite=overwrite, quiet=quiet,
               copy_members=None if q.copies is None else members_table(q.copies))
    rows = Scan(scan_dir).verification()
    return VerificationSummary(faithfulness_summary(rows), grounding_summary(rows, fdr), BLANK,
                               copies_header(q.copies, copies) if columns else None)


TILE = 256  # width of an explain tile in pixels


def explain(inputs: list[str | os.PathLike], out: str | os.PathLike, *, tile: int = TILE,
            stop_words: str | os.PathLike = STOP_WORDS, min_relative_cosine: float = MIN_RELATIVE_COSINE,
            options: ScanOptions | None = None, images: list[str] | None = None, **overrides) -> list[Explained]:
    """Scan the given images (files or folders) into out/scan and draw, per image, its tiles, its mosaic and
    its opinion.txt into out/<image>/. Words the statistics would leave out (stop_words, min_relative_cosine:
    as `audit report` takes them) come after the counted ones, marked, with the reason.

    `inputs` may instead be one scan directory, of any source kind: its images are drawn from what it stored (no
    scan; the images are read again by their keys), all of them or the image ids in `images`.

    The scan options are `options` (default: ScanOptions() with no DataLoader workers, which a few images do
    not pay for) with ScanOptions fields given as keywords on top: explain(paths, out, model="audit-demo")."""
    from audit.analysis.associations import word_filter
    from audit.outputs.explain import render
    from audit.scanner.pipeline import run_scan

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AuditError(f"--out {out} is a file; pass a folder")
    if tile < 64:
        raise AuditError(f"--tile must be at least 64 pixels, not {tile}")
    words = word_filter(str(stop_words), min_relative_cosine)
    scans = [Path(i) for i in inputs if (Path(i) / "scan.json").is_file()]
    if scans:
        if len(inputs) != 1:
            raise AuditError("audit explain takes image files and folders, or one scan directory alone")
        return render(scans[0], out, tile, only=_known_ids(scans[0], images), words=words)
    if images:
        raise AuditError("--image names images of a scan directory; pass one as the input")
    paths = collect_images(inputs)
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ScanOptions)}
    if unknown:
        raise TypeError(f"unknown scan options: {', '.join(sorted(unknown))}")
    opts = dataclasses.replace(options if options is not None else dataclasses.replace(_D, workers=0), **overrides)
    # One scan per output folder: its manifest is rewritten for this call, and images scanned before under
    # the same folder stay (resume); --overwrite starts the folder's scan over.
    run_scan(str(_manifest(paths, out)), str(out / "scan"), **dataclasses.asdict(opts))
    return render(out / "scan", out, tile, only={str(p) for p in paths}, words=words)


def _known_ids(scan_dir: Path, images: list[str] | None) -> set[str] | None:
    """The image ids asked for, each one scanned (None: all)."""
    if not images:
        return None
    known = set(Scan(scan_dir).images().image_id)
    missing = [i for i in images if i not in known]
    if missing:
        raise AuditError(f"{scan_dir} has no image {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if
                                                                      len(missing) > 1 else "")
                         + "; image ids are as the scan stored them (audit.Scan(...).images().image_id)")
    return set(images)


def collect_images(inputs: list[str | os.PathLike]) -> list[Path]:
    """Image files named or found (recursively, by extension) in the folders named, each once."""
    from audit.sources import IMAGE_EXTENSIONS

    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            found.append(p)
        else:
            raise AuditError(f"{p} does not exist; pass image files or folders")
    unique = list(dict.fromkeys(f.resolve() for f in found))
    if not unique:
        raise AuditError("no images found in " + ", ".join(map(str, inputs)))
    return unique


def _manifest(paths: list[Path], out: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "images.parquet"
    table = pa.table({"path": [str(p) for p in paths]})
    tmp = out / ".tmp-images.parquet"
    pq.write_table(table, tmp)
    tmp.replace(manifest)
    return manifest
