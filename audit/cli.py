"""The `audit` command: parses arguments, configures logging and calls the library. No logic lives here.

Every default is read from where the library defines it (ScanOptions, TrainOptions, audit.analysis,
audit.outputs), so `--help` shows what the library does.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from audit.analysis import (
    COPIES,
    COPIES_MODES,
    FDR,
    MIN_COUNT,
    MIN_RELATIVE_COSINE,
    PROCEDURE,
    PROCEDURES,
    STOP_WORDS,
)
from audit.demo.recipe import TrainOptions
from audit.errors import AuditError
from audit.outputs import TOP
from audit.scanner.options import (
    DEVICES,
    ENGINES,
    KERNELS,
    OPINIONS,
    PRECISIONS,
    SOURCE_KINDS,
    ScanOptions,
    VerifyOptions,
    check_tiles,
    parse_opinions,
)
from audit.scanner.relevancy import METHODS
from audit.version import __version__

_D = ScanOptions()
_T = TrainOptions()
MODEL, ASCENT, CONCEPTS, RELEVANCY, INPUT, RUN = "Model", "Ascent", "Concepts", "Relevancy", "Input", "Run"


def _device(value: str) -> str:
    """auto, cpu, cuda, or a numbered GPU (cuda:1)."""
    if value in DEVICES or re.fullmatch(r"cuda:\d+", value):
        return value
    raise typer.BadParameter(f"{value!r} is not one of {', '.join(DEVICES)} or cuda:N")


def _between(low: float, high: float | None):
    """A float strictly between low and high (high None: no upper bound)."""
    def parse(value: str) -> float:
        try:
            v = float(value)
        except ValueError:
            raise typer.BadParameter(f"{value!r} is not a number") from None
        if not (v > low and (high is None or v < high)):
            raise typer.BadParameter(f"{value} must be above {low}" + (f" and below {high}" if high else ""))
        return v
    return parse


def _checked(check, prefix: str):
    """A parser that keeps the value the library's `check` accepts, and otherwise says why as the CLI does."""
    def parse(value: str) -> str:
        try:
            check(value)
        except AuditError as e:
            raise typer.BadParameter(str(e).removeprefix(prefix)) from None
        return value
    return parse


def _diff_file(value: str) -> Path:
    """A diff's output file, refused before the diff is computed when its name asks for no known format."""
    from audit.outputs.diff import renderer

    renderer(value)
    return Path(value)


_opinions = _checked(parse_opinions, "--opinion: ")  # one method or several, comma-separated
_tiles = _checked(check_tiles, "--triton-tiles ")


HeatmapMethod = Literal[tuple(METHODS)]  # the choices --help shows are the registries' entries
SourceKind = Literal[SOURCE_KINDS]
Engine = Literal[ENGINES]
Kernel = Literal[KERNELS]
PrecisionChoice = Literal[PRECISIONS]
OPINION_METAVAR = ",".join(OPINIONS)


# Options shared by `scan` and `explain`, declared once.
Model = Annotated[str, typer.Option(envvar="AUDIT_MODEL", rich_help_panel=MODEL,
                                    help="open_clip model name, audit-demo (trained here, offline) or audit-tiny (tests).")]
Pretrained = Annotated[str, typer.Option(envvar="AUDIT_PRETRAINED", rich_help_panel=MODEL,
                                         help="auto (openai for open_clip models, the bundled weights for audit-demo), an open_clip tag, a local checkpoint file, or 'none' (random weights from --seed).")]
Device = Annotated[str, typer.Option(envvar="AUDIT_DEVICE", parser=_device, metavar="[auto|cpu|cuda|cuda:N]",
                                     rich_help_panel=RUN,
                                     help="Where to run.")]
Precision = Annotated[PrecisionChoice, typer.Option(envvar="AUDIT_PRECISION", rich_help_panel=RUN, help="Arithmetic of the model's work on each image: auto (bfloat16 where the device computes it natively: CUDA GPUs from Ampere on, CPUs with AVX512-BF16 or AMX; float32 elsewhere), float32 or bfloat16 (about 3.5x faster on such a CPU; embeddings within a cosine of 0.9995). Printed and recorded in scan.json: a resume with another one is refused; auto keeps the one the scan began with.")]
Seed = Annotated[int, typer.Option(rich_help_panel=RUN, help="Run seed; each image's randomness comes from (seed, image_id).")]
Steps = Annotated[int, typer.Option(min=0, rich_help_panel=ASCENT, help="Ascent steps.")]
TokensPerSeq = Annotated[int, typer.Option(min=1, rich_help_panel=ASCENT, help="Free tokens per candidate sequence.")]
Candidates = Annotated[int, typer.Option(min=1, rich_help_panel=ASCENT, help="Candidate sequences per image.")]
Lr = Annotated[float, typer.Option(parser=_between(0, None), metavar="FLOAT>0", rich_help_panel=ASCENT,
                                   help="Adam learning rate of the ascent.")]
Views = Annotated[int, typer.Option(min=1, rich_help_panel=ASCENT, help="Random affine views of each image in the objective.")]
RefineRounds = Annotated[int, typer.Option(min=0, rich_help_panel=ASCENT,
                                           help="Rounds of token swaps on the kept sequences after the ascent (each swap kept only where it raises the cosine); 0: none.")]
RefineWords = Annotated[bool, typer.Option("--refine-words/--refine-any-token", rich_help_panel=ASCENT,
                                           help="Token swaps only to real whole words (the default), or to any token, word pieces included (as audit 0.1 did).")]
Prompt = Annotated[str, typer.Option(rich_help_panel=ASCENT, help="Text placed before the learned tokens.")]
StartLayer = Annotated[Optional[int], typer.Option(rich_help_panel=RELEVANCY, help="First image layer in the relevancy (-1 = last; default: the model's, last or 0 for audit-demo).")]  # noqa: UP045 - typer reads it
StartLayerText = Annotated[int, typer.Option(rich_help_panel=RELEVANCY, help="First text layer in the relevancy (-1 = last).")]
Heatmap = Annotated[Optional[HeatmapMethod], typer.Option(rich_help_panel=RELEVANCY,  # noqa: UP045
                                                help="Relevancy method: chefer (gradient-weighted attention), occlusion (blank windows, measure the fall) or legrad (the rectified gradient of each last layer's own score with respect to its attention maps); default: the model's, chefer.")]
LegradLayers = Annotated[Optional[int], typer.Option(min=1, rich_help_panel=RELEVANCY, help="The last image layers LeGrad explains, for --heatmap legrad (default: the model's, its authors' 2; 4 for audit-demo).")]  # noqa: UP045
OcclusionWindow = Annotated[Optional[int], typer.Option(min=1, rich_help_panel=RELEVANCY, help="Side of the blanked window in patches, for --heatmap occlusion (default: the model's, 3 or 4 for audit-demo).")]  # noqa: UP045
Words = Annotated[Optional[list[str]], typer.Option("--words", "-w", rich_help_panel=INPUT, help="Probe words or phrases scored on every image, comma-separated (repeatable).")]  # noqa: UP045
WordsFile = Annotated[Optional[Path], typer.Option("--words-file", rich_help_panel=INPUT, help="Probe words, one per line (phrases may contain commas; # starts a comment).")]  # noqa: UP045
Templates = Annotated[Optional[str], typer.Option(rich_help_panel=INPUT, help="Prompt templates probe words are scored in, as CLIP is used zero-shot: simple (the 7 of CLIP's 80 ImageNet templates its authors picked, which did as well), openai (all 80), none (the bare word), or a file with one template per line holding {} where the word goes. Default: the model's, simple (none for audit-demo).")]  # noqa: UP045
EmbeddingsOption = Annotated[str, typer.Option(rich_help_panel=RUN, help="Keep each image's embedding in the scan, for `audit ask` to answer later questions without the images: float16 (about 1 KB an image for ViT-B-32), float32, or none.")]
NoAscent = Annotated[bool, typer.Option("--no-ascent", rich_help_panel=ASCENT, help="Deprecated: leaves the ascent out; write --opinion probes (with --words) or --opinion concepts instead.")]
OpinionOption = Annotated[str, typer.Option(parser=_opinions, metavar=OPINION_METAVAR, rich_help_panel=CONCEPTS, help="What CLIP thinks of each image, one method or several separated by commas: ascent (search for the token sequences closest to it: open vocabulary, seconds per image), concepts (a sparse, non-negative decomposition of its embedding over a vocabulary: milliseconds per image), probes (only the probe words of --words, which are scored with any method); both means ascent,concepts.")]
Vocabulary = Annotated[Optional[str], typer.Option(rich_help_panel=CONCEPTS, help="Concept vocabulary: words (10,000 common English nouns and adjectives and 3,000 two-word nouns shipped with audit, from wordfreq, WordNet and web bigram counts; the default), tokens (the tokenizer's whole-word tokens of 3+ letters, stop words left out), or a file with one word or phrase per line.")]  # noqa: UP045
ConceptL1 = Annotated[Optional[float], typer.Option(parser=_between(0, None), metavar="FLOAT>0", rich_help_panel=CONCEPTS, help="L1 penalty l1 of the decomposition, min 0.5·|Cw − x|² + l1·Σw: larger gives fewer concepts per image. SpLiCE's λ is 2·l1. Default: the model's, 0.125 (SpLiCE's λ 0.25; 0.2 for audit-demo).")]  # noqa: UP045
ConceptsPerImage = Annotated[int, typer.Option(min=1, rich_help_panel=CONCEPTS, help="Concepts stored per image, largest weights first.")]
ConceptHeatmaps = Annotated[int, typer.Option(min=0, rich_help_panel=CONCEPTS, help="Relevancy heatmaps for this many of each image's top concepts.")]
ConceptMean = Annotated[Optional[str], typer.Option(rich_help_panel=CONCEPTS, help="Image mean the decomposition centres by: dataset (the first 1,000 images, stored in the scan), none, a .npy file, or another scan directory (to compare snapshots on one mean); default: the model's (dataset; none for audit-demo).")]  # noqa: UP045
Overwrite = Annotated[bool, typer.Option("--overwrite", rich_help_panel=RUN, help="Delete an earlier scan in --out and start over.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", rich_help_panel=RUN, help="No progress output; errors still print.")]
MinCount = Annotated[int, typer.Option(min=1, help="Words seen in fewer images are not tested.")]
Fdr = Annotated[float, typer.Option(parser=_between(0, 1), metavar="(0,1)",
                                    help="False discovery rate for flagging.")]
StopWords = Annotated[str, typer.Option(help="Words left out of the tests: default (audit's English list), none, or a file with one word per line.")]
MinRelativeCosine = Annotated[float, typer.Option(min=0, max=1, help="An ascent word counts for an image only when its own cosine is at least this share of the image's best sequence cosine (0 keeps every word).")]
Procedure = Literal[PROCEDURES]
CopiesMode = Literal[COPIES_MODES]
CopiesOption = Annotated[CopiesMode, typer.Option(help="collapse: each cluster of exact or near copies counts once in every statistic (once in each group it spans; see `audit duplicates`); keep: every image counts.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"audit {__version__}")
        raise typer.Exit()


app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="What a CLIP vision transformer thinks of every image in a dataset, and where it looks.")


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """What a CLIP vision transformer thinks of every image in a dataset, and where it looks."""


@app.command()
def scan(
    source: str = typer.Argument(..., help="Image folder (label = first sub-folder), manifest (.csv, .parquet, .jsonl), WebDataset shards (.tar, a brace pattern or a folder), Parquet of image bytes, or a Hugging Face dataset; a local path or an fsspec URL (s3://, gs://, https://)."),
    out: Path = typer.Option(Path("audit-scan"), "--out", "-o", help="Scan directory to write (or resume)."),
    model: Model = _D.model,
    pretrained: Pretrained = _D.pretrained,
    device: Device = _D.device,
    batch_size: str = typer.Option(str(_D.batch_size), rich_help_panel=RUN, help="Images per batch, or auto (on CUDA what the free memory holds; on CPU what keeps the ascent's tensors under 32 MB, 16 with --no-ascent)."),
    workers: int = typer.Option(_D.workers, min=0, rich_help_panel=RUN, help="Decoding worker processes (local engine), or scan actors on a CPU cluster (--engine ray)."),
    seed: Seed = _D.seed,
    steps: Steps = _D.steps,
    tokens_per_seq: TokensPerSeq = _D.tokens_per_seq,
    candidates: Candidates = _D.candidates,
    lr: Lr = _D.lr,
    views: Views = _D.views,
    resample_views: bool = typer.Option(_D.resample_views, "--resample-views", rich_help_panel=ASCENT, help="Redraw the views every step (the origin script's way; slower)."),
    refine_rounds: RefineRounds = _D.refine_rounds,
    refine_words: RefineWords = _D.refine_words,
    prompt: Prompt = _D.prompt,
    start_layer: StartLayer = _D.start_layer,
    start_layer_text: StartLayerText = _D.start_layer_text,
    heatmap: Heatmap = _D.heatmap,
    occlusion_window: OcclusionWindow = _D.occlusion_window,
    legrad_layers: LegradLayers = _D.legrad_layers,
    source_kind: SourceKind = typer.Option(_D.source_kind, "--source", rich_help_panel=INPUT, help="What SOURCE is; auto decides from the location."),
    path_column: str = typer.Option(_D.path_column, rich_help_panel=INPUT, help="Manifest column holding image paths."),
    image_column: Optional[str] = typer.Option(_D.image_column, rich_help_panel=INPUT, help="Parquet / Hugging Face: the column of encoded images (default: the Image feature, or the first bytes column)."),  # noqa: UP045
    id_column: Optional[str] = typer.Option(_D.id_column, rich_help_panel=INPUT, help="Parquet / Hugging Face: the column of image ids (default: key, else file or split + row index, stable only while the rows keep their order)."),  # noqa: UP045
    split: Optional[str] = typer.Option(_D.split, rich_help_panel=INPUT, help="Hugging Face: the split (default: train, or the only one)."),  # noqa: UP045
    max_pixels: int = typer.Option(_D.max_pixels, min=1, rich_help_panel=INPUT, help="Refuse images with more pixels (decompression-bomb guard)."),
    words: Words = None,
    words_file: WordsFile = None,
    templates: Templates = _D.templates,
    embeddings: EmbeddingsOption = _D.embeddings,
    no_ascent: NoAscent = _D.no_ascent,
    opinion: OpinionOption = _D.opinion,
    vocabulary: Vocabulary = _D.vocabulary,
    concept_l1: ConceptL1 = _D.concept_l1,
    concepts_per_image: ConceptsPerImage = _D.concepts_per_image,
    concept_heatmaps: ConceptHeatmaps = _D.concept_heatmaps,
    concept_mean: ConceptMean = _D.concept_mean,
    overwrite: Overwrite = _D.overwrite,
    engine: Engine = typer.Option(_D.engine, rich_help_panel=RUN, help="local: one process; ray: Ray Data actors (one per GPU, or --workers on CPU), the same rows."),
    ray_address: Optional[str] = typer.Option(_D.ray_address, envvar="AUDIT_RAY_ADDRESS", rich_help_panel=RUN, help="--engine ray: a running cluster to join (auto, or ray://host:10001); default: a local cluster."),  # noqa: UP045
    commit_every: float = typer.Option(_D.commit_every, "--commit-every", min=0, metavar="SECONDS", rich_help_panel=RUN, help="Commit the batches scanned once this long has passed since the last commit (and every 8,192 images): a kill loses about this much work and the batch in progress, and fewer, larger files read back faster. 0 commits every batch."),
    retry_errors: bool = typer.Option(_D.retry_errors, "--retry-errors", rich_help_panel=RUN, help="Re-attempt the images whose last attempt failed (stored in errors); by default a resume skips them."),
    precision: Precision = _D.precision,
    kernel: Kernel = typer.Option(_D.kernel, envvar="AUDIT_KERNEL", rich_help_panel=ASCENT, help="The ascent step's implementation: auto (compile on CUDA, eager elsewhere; AUDIT_COMPILE=0 makes it eager), eager, compile (torch.compile; on a CPU it needs a C++ compiler and is about 1.4x faster), or triton (two fused kernels; CUDA). Recorded in scan.json: a resume with another one is refused."),
    triton_tiles: Optional[str] = typer.Option(None, envvar="AUDIT_TRITON_TILES", parser=_tiles, metavar="R,V,D[,W[,S]]", rich_help_panel=ASCENT, help="--kernel triton: the kernels' tiles, rows,vocab,dim[,warps[,stages]] (bench/fused_tiles.py finds the fastest)."),  # noqa: UP045
    quiet: Quiet = _D.quiet,
) -> None:
    """Scan a dataset: words CLIP attaches to each image, and a relevancy heatmap per word, into Parquet."""
    import audit

    audit.scan(source, out, model=model, pretrained=pretrained, device=device, batch_size=batch_size,
               workers=workers, seed=seed, steps=steps, tokens_per_seq=tokens_per_seq, candidates=candidates,
               lr=lr, views=views, resample_views=resample_views, refine_rounds=refine_rounds,
               refine_words=refine_words, prompt=prompt,
               start_layer=start_layer, start_layer_text=start_layer_text, heatmap=heatmap,
               occlusion_window=occlusion_window, legrad_layers=legrad_layers, source_kind=source_kind,
               path_column=path_column,
               image_column=image_column, id_column=id_column, split=split, max_pixels=max_pixels,
               engine=engine, ray_address=ray_address,
               words=tuple(words or ()), words_file=words_file, templates=templates, embeddings=embeddings,
               no_ascent=no_ascent, opinion=opinion, vocabulary=vocabulary, concept_l1=concept_l1, concepts_per_image=concepts_per_image,
               concept_heatmaps=concept_heatmaps, concept_mean=concept_mean, overwrite=overwrite,
               retry_errors=retry_errors, commit_every=commit_every, kernel=kernel, triton_tiles=triton_tiles,
               precision=precision, quiet=quiet)


@app.command()
def report(
    scan_dir: Path = typer.Argument(..., help="A scan directory written by `audit scan`."),
    group_by: list[str] = typer.Option(..., "--group-by", "-g", help="Image column to compare groups by (repeatable)."),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="HTML file to write."),
    min_count: MinCount = MIN_COUNT,
    fdr: Fdr = FDR,
    top: int = typer.Option(TOP, min=1, help="Words shown per group."),
    title: str = typer.Option(None, help="Report title (default: the scan directory's name)."),
    stop_words: StopWords = STOP_WORDS,
    min_relative_cosine: MinRelativeCosine = MIN_RELATIVE_COSINE,
    procedure: Procedure = typer.Option(PROCEDURE, help="Multiplicity correction: tarone-bh (Benjamini-Hochberg over the pairs that can reach significance) or bh (over every pair)."),
    copies: CopiesOption = COPIES,
) -> None:
    """Write a self-contained HTML bias report: distinctive words per group, how sure, where CLIP looks."""
    import audit

    path = audit.report(scan_dir, group_by, min_count=min_count, fdr=fdr, top=top, title=title,
                        stop_words=stop_words, min_relative_cosine=min_relative_cosine,
                        procedure=procedure, copies=copies).write(out)
    logging.getLogger("audit").info(f"audit report: wrote {path}")


@app.command()
def check(
    scan_dir: Path = typer.Argument(..., help="The scan of the snapshot under review."),
    policy: Path = typer.Option(..., "--policy", "-p", help="Policy file (TOML); see examples/audit-policy.toml."),
    baseline: Path = typer.Option(None, "--baseline", "-b", help="Scan of the last accepted snapshot, for the drift rules."),
    junit: Path = typer.Option(None, "--junit", dir_okay=False, help="Write JUnit XML here (one test case per rule)."),
    json_out: Path = typer.Option(None, "--json", dir_okay=False, help="Write the findings as JSON here."),
    markdown: Path = typer.Option(None, "--markdown", dir_okay=False, help="Write a Markdown summary here (for a CI step summary)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing; the exit code and files say it all."),
    copies: Optional[CopiesMode] = typer.Option(None, help="collapse: each cluster of copies counts once; keep: every image counts. Default: the policy's `copies` key (collapse).")  # noqa: UP045
) -> None:
    """Gate a dataset snapshot on a policy: exit 0 when every rule passes, 1 when one fails, 2 on usage errors."""
    import audit

    outcome = audit.check(scan_dir, policy, baseline=baseline, copies=copies)
    outcome.write(junit=junit, json=json_out, markdown=markdown)
    if not quiet:
        sys.stdout.write(outcome.text())
    raise typer.Exit(outcome.exit_code)


@app.command()
def diff(
    old: Path = typer.Argument(..., help="Scan of the earlier snapshot."),
    new: Path = typer.Argument(..., help="Scan of the later snapshot."),
    group_by: list[str] = typer.Option(None, "--group-by", "-g", help="Image column to compare groups by (repeatable)."),
    out: Path = typer.Option(None, "--out", "-o", parser=_diff_file, help="Also write the diff to this .html or .md file."),
    min_count: MinCount = MIN_COUNT,
    fdr: Fdr = FDR,
    kind: Optional[Literal["ascent", "concept"]] = typer.Option(None, help="Which words to compare: the ascent's or the concept decomposition's; default: those the new scan holds (the ascent's, else the concepts)."),  # noqa: UP045
    stop_words: StopWords = STOP_WORDS,
    min_relative_cosine: MinRelativeCosine = MIN_RELATIVE_COSINE,
    copies: CopiesOption = COPIES,
) -> None:
    """What changed between two scans: images added and removed, word shift, associations gained and lost."""
    import audit

    outcome = audit.diff(old, new, group_by=group_by or [], min_count=min_count, fdr=fdr, kind=kind,
                         stop_words=stop_words, min_relative_cosine=min_relative_cosine, copies=copies)
    sys.stdout.write(outcome.text())
    if out is not None:
        logging.getLogger("audit").info(f"audit diff: wrote {outcome.write(out)}")


@app.command()
def explain(
    inputs: list[Path] = typer.Argument(..., help="Image files and/or folders, or one scan directory (of any source kind: its stored words are drawn, nothing is scanned)."),
    out: Path = typer.Option(Path("explain-out"), "--out", "-o", help="Folder for the tiles, mosaics and the scan behind them."),
    words: Words = None,
    words_file: WordsFile = None,
    no_ascent: NoAscent = _D.no_ascent,
    model: Model = _D.model,
    pretrained: Pretrained = _D.pretrained,
    device: Device = _D.device,
    seed: Seed = _D.seed,
    steps: Steps = _D.steps,
    tokens_per_seq: TokensPerSeq = _D.tokens_per_seq,
    candidates: Candidates = _D.candidates,
    lr: Lr = _D.lr,
    views: Views = _D.views,
    refine_rounds: RefineRounds = _D.refine_rounds,
    refine_words: RefineWords = _D.refine_words,
    prompt: Prompt = _D.prompt,
    start_layer: StartLayer = _D.start_layer,
    start_layer_text: StartLayerText = _D.start_layer_text,
    heatmap: Heatmap = _D.heatmap,
    occlusion_window: OcclusionWindow = _D.occlusion_window,
    legrad_layers: LegradLayers = _D.legrad_layers,
    opinion: OpinionOption = _D.opinion,
    vocabulary: Vocabulary = _D.vocabulary,
    concept_mean: ConceptMean = _D.concept_mean,
    tile: int = typer.Option(256, min=64, help="Width of a tile in pixels."),
    image: Optional[list[str]] = typer.Option(None, "--image", help="With a scan directory: draw only this image id (repeat for more); default: every image."),  # noqa: UP045
    stop_words: StopWords = STOP_WORDS,
    min_relative_cosine: MinRelativeCosine = MIN_RELATIVE_COSINE,
    json_out: Path = typer.Option(None, "--json", help="Write what is printed (sequences, words, files) as JSON here; - for standard output, instead of the text."),
    overwrite: Overwrite = _D.overwrite,
    quiet: Quiet = _D.quiet,
) -> None:
    """The single-image view: CLIP's best token sequences and words for each image (printed and written to
    opinion.txt), each word's heatmap as a labelled overlay, and one mosaic per image. Words the statistics
    leave out come last, marked, with the reason."""
    import audit
    from audit.outputs.explain import explained_json, explained_text, write_json

    done = audit.explain(inputs, out, tile=tile, images=image, words=tuple(words or ()), words_file=words_file,
                         no_ascent=no_ascent, model=model, pretrained=pretrained, device=device, seed=seed,
                         steps=steps, tokens_per_seq=tokens_per_seq, candidates=candidates, lr=lr, views=views,
                         refine_rounds=refine_rounds, refine_words=refine_words, prompt=prompt,
                         start_layer=start_layer,
                         start_layer_text=start_layer_text, heatmap=heatmap, occlusion_window=occlusion_window,
                         legrad_layers=legrad_layers, opinion=opinion, vocabulary=None if vocabulary is None else str(vocabulary),
                         concept_mean=concept_mean, stop_words=stop_words,
                         min_relative_cosine=min_relative_cosine, overwrite=overwrite, quiet=quiet)
    if json_out is not None and str(json_out) == "-":
        sys.stdout.write(explained_json(done))
        return
    if json_out is not None:
        write_json(done, json_out)
    sys.stdout.write(explained_text(done))


@app.command()
def ask(
    scan_dir: Path = typer.Argument(..., help="A scan directory written by `audit scan` (it keeps each image's embedding by default)."),
    out: Path = typer.Option(..., "--out", "-o", help="Scan directory to write the answers into (or resume)."),
    words: Words = None,
    words_file: WordsFile = None,
    templates: Templates = None,
    heatmaps: bool = typer.Option(False, "--heatmaps", help="Also draw each asked word's relevancy heatmap on every image, as the scan would: costly, since it reads the images again (a relevancy pass per image and word)."),
    opinion: str = typer.Option("probes", rich_help_panel=CONCEPTS, help="What to ask: probes (the words of --words, in --templates) or concepts (the concept decomposition again, with --vocabulary, --concept-l1, --concepts-per-image)."),
    vocabulary: Vocabulary = _D.vocabulary,
    concept_l1: ConceptL1 = _D.concept_l1,
    concepts_per_image: ConceptsPerImage = _D.concepts_per_image,
    concept_mean: Optional[str] = typer.Option(None, rich_help_panel=CONCEPTS, help="The image mean the decomposition centres by: dataset (every stored embedding), none, FILE.npy or SCAN_DIR; default: the source scan's own when it has one, else the model's."),  # noqa: UP045
    pretrained: Optional[str] = typer.Option(None, help="The scan's weights, when its record (a file name) does not say where they are; default: what the scan recorded."),  # noqa: UP045
    device: Device = "auto",
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Answer new questions from a finished scan's stored embeddings, without reading an image: probe words
    scored on every image, or the concept decomposition with other settings, written as a scan of their own for
    report, check and diff."""
    import audit

    audit.ask(scan_dir, out, words=tuple(words or ()), words_file=words_file, templates=templates,
              heatmaps=heatmaps, opinion=opinion,
              vocabulary=vocabulary, concept_l1=concept_l1, concepts_per_image=concepts_per_image,
              concept_mean=concept_mean, pretrained=pretrained, device=device, overwrite=overwrite, quiet=quiet)


_V = VerifyOptions()


@app.command()
def verify(
    scan_dir: Path = typer.Argument(..., help="A scan directory written by `audit scan`."),
    group_by: list[str] = typer.Option(None, "--group-by", "-g", help="Verify the findings of this image column (repeatable): is each flagged word grounded in the region its map shows?"),
    faithfulness_images: int = typer.Option(_V.faithfulness_images, min=0, help="Images (a fixed, seeded sample) for the deletion and insertion curves of every relevancy method; 0 skips them."),
    grounding_images: int = typer.Option(_V.grounding_images, min=1, help="Per finding, the group's images with the word (highest cosine first) that are blanked."),
    pretrained: Optional[str] = typer.Option(None, help="The scan's weights, when its record (a file name) does not say where they are; default: what the scan recorded."),  # noqa: UP045
    device: Device = "auto",
    json_out: Path = typer.Option(None, "--json", help="Write the summary (faithfulness per method and kind; each finding's verdict and numbers) as JSON here."),
    min_count: MinCount = MIN_COUNT,
    fdr: Fdr = FDR,
    stop_words: StopWords = STOP_WORDS,
    min_relative_cosine: MinRelativeCosine = MIN_RELATIVE_COSINE,
    policy: Path = typer.Option(None, "--policy", "-p", help="A policy file: its group_by, min_count, fdr and word filters replace the options above, so `audit check` with it reads verdicts made with its settings."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete an earlier verification of this scan and verify again."),
    quiet: Quiet = False,
    copies: Optional[CopiesMode] = typer.Option(None, help="collapse: each cluster of copies counts once in the findings and their images; keep: every image counts. Default: the policy's, else collapse."),  # noqa: UP045
) -> None:
    """How far to trust the maps and the findings: deletion and insertion curves per relevancy method, and
    whether each finding's word is grounded in its region. Writes scan-dir/verification/; resumable."""
    import audit

    summary = audit.verify(scan_dir, group_by=group_by or [], faithfulness_images=faithfulness_images,
                           grounding_images=grounding_images, pretrained=pretrained, device=device,
                           min_count=min_count, fdr=fdr, stop_words=stop_words,
                           min_relative_cosine=min_relative_cosine, policy=policy, overwrite=overwrite, quiet=quiet,
                           copies=copies)
    if json_out is not None:
        summary.write_json(json_out)
    sys.stdout.write(summary.text())


@app.command()
def duplicates(
    scan_dir: Path = typer.Argument(..., help="A scan directory written by `audit scan`."),
    against: list[Path] = typer.Option(None, "--against", help="Another scan (a test set, the last release): list this scan's images with a copy there (repeatable)."),
    split_by: str = typer.Option(None, "--split-by", help="An image column (split): list the images with a copy under another value."),
    json_out: Path = typer.Option(None, "--json", help="Write the summary (clusters, leaks, settings) as JSON here."),
    same_hash_distance: int = typer.Option(None, min=0, max=64, help="pHash bits (of 64) within which two images are copies on the hash alone. Default: 4."),
    max_hash_distance: int = typer.Option(None, min=0, max=64, help="pHash bits within which two images are copies when their embeddings agree too (--min-cosine). Default: 10, imagededup's."),
    min_cosine: float = typer.Option(None, min=-1, max=1, help="Embedding cosine the looser pHash match needs. Default: 0.9, imagededup's for CNN embeddings."),
    tight_cosine: float = typer.Option(None, min=-1, max=1, help="Embedding cosine at which two images are copies whatever their hashes (1 turns it off). Default: 0.97; off for audit-demo and audit-tiny, whose embeddings cannot tell images apart that closely."),
    neighbours: int = typer.Option(None, min=2, help="Candidates searched per image in each space (embedding, pHash). Default: 16."),
) -> None:
    """Exact and near copies in a scan, in clusters that cannot chain, and leaks across splits or scans. Writes
    scan-dir/duplicates/, which report, check, diff and verify read to count each cluster once."""
    import json

    import audit
    from audit.outputs.duplicates import text

    found = audit.duplicates(scan_dir, split_by=split_by, against=against or [],
                             same_hash_distance=same_hash_distance, max_hash_distance=max_hash_distance,
                             min_cosine=min_cosine, tight_cosine=tight_cosine, neighbours=neighbours)
    if json_out is not None:
        from audit.outputs.files import write_text

        write_text(json_out, json.dumps(found.summary(), indent=2, default=str) + "\n", "copies.json")
    sys.stdout.write(text(found, str(scan_dir)))


def _k(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise typer.BadParameter(f"'auto' or a number of slices, not {value!r}") from None


@app.command()
def slices(
    scan_dir: Path = typer.Argument(..., help="A scan directory written by `audit scan` (with its embeddings)."),
    by: list[str] = typer.Option(None, "--by", "-b", help="An image column (label, split, site, camera...) to test each slice's skew across (repeatable). Default: label, where the scan has labels."),
    k: str = typer.Option("auto", "--k", parser=_k, metavar="auto|N", help="Slices to find: auto (the best silhouette among 2..--max-k) or a number."),
    max_k: int = typer.Option(None, min=2, help="The most slices auto considers. Default: 20."),
    labels: str = typer.Option(None, "--labels", help="An image column whose values to check: list the images a cross-fitted probe on the embeddings finds mislabelled (cleanlab)."),
    vocabulary: str = typer.Option(None, "--vocabulary", help="Describe each slice by vocabulary entries too (loads the scan's model for its text tower): default (the model's), words, tokens or a file."),
    pretrained: Optional[str] = typer.Option(None, help="The scan's weights, for --vocabulary, when its record does not say where they are."),  # noqa: UP045
    device: Device = "auto",
    json_out: Path = typer.Option(None, "--json", help="Write the summary (slices, words, skews, label issues) as JSON here."),
    min_count: MinCount = MIN_COUNT,
    fdr: Fdr = FDR,
    stop_words: StopWords = STOP_WORDS,
    min_relative_cosine: MinRelativeCosine = MIN_RELATIVE_COSINE,
    copies: CopiesMode = typer.Option(COPIES, help="collapse: each cluster of copies counts once; keep: every image counts."),
) -> None:
    """Sub-populations nobody labelled: clusters of the stored embeddings, each described by the words that set it
    apart and tested for skew across the columns given, under the report's FDR control; with --labels, label-issue
    candidates. Writes scan-dir/slices/, which report and check read."""
    import json

    import audit
    from audit.outputs.slices import text

    found = audit.slices(scan_dir, by=by or None, labels=labels, k=k, max_k=max_k, fdr=fdr, min_count=min_count,
                         copies=copies, stop_words=stop_words, min_relative_cosine=min_relative_cosine,
                         vocabulary=vocabulary, pretrained=pretrained, device=device)
    if json_out is not None:
        from audit.outputs.files import write_text

        write_text(json_out, json.dumps(found.summary(), indent=2, default=str) + "\n", "slices.json")
    sys.stdout.write(text(found, str(scan_dir)))


demo_app = typer.Typer(help="The offline demo: a planted-bias dataset scanned with the project's own CLIP.")
app.add_typer(demo_app, name="demo")


@demo_app.callback(invoke_without_command=True)
def demo(
    ctx: typer.Context,
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Folder for the generated dataset and its scan."),
    images: int = typer.Option(60, min=3, help="Images to generate (a third per site)."),
    device: Device = "auto",
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output for the scan; the summary still prints."),
    opinion: str = typer.Option(_D.opinion, parser=_opinions, metavar=OPINION_METAVAR, help="What the scan asks of CLIP: ascent, concepts (seconds for the whole demo) or both (ascent,concepts)."),
) -> None:
    """Generate a dataset with a planted bias and scan it offline with audit-demo."""
    if ctx.invoked_subcommand is None:
        from audit.demo import run_demo

        run_demo(out, images=images, quiet=quiet, device=device, opinion=opinion)


@demo_app.command("evaluate")
def demo_evaluate(
    scenes: int = typer.Option(200, min=1, help="Held-out scenes per measurement."),
    recall_scenes: int = typer.Option(None, min=1, help="Scenes for the (slow: about 14 s a scene on 2 CPU cores) "
                                                        "word-recall part; default --scenes."),
    steps: int = typer.Option(_D.steps, min=0, help="Ascent steps for word recall (the scan's default)."),
    candidates: int = typer.Option(_D.candidates, min=1, help="Ascent candidates for word recall (the scan's default)."),
    pretrained: str = typer.Option("auto", help="Weights of audit-demo to evaluate."),
    device: Device = "cpu",
) -> None:
    """Zero-shot accuracy, ascent word recall and pointing game of audit-demo on unseen scenes."""
    from audit.demo.evaluate import evaluate

    result = evaluate(scenes=scenes, recall_scenes=recall_scenes, pretrained=pretrained, steps=steps,
                      candidates=candidates, device=device, quiet=False)
    for line in result.lines():
        typer.echo(line)


@demo_app.command("train")
def demo_train(
    out: Path = typer.Option(..., "--out", help="Where to write the fp16 safetensors weights."),
    steps: int = typer.Option(_T.steps, min=1, help="Optimiser steps."),
    batch: int = typer.Option(_T.batch, min=2, help="Scenes per step."),
    lr: float = typer.Option(_T.lr, parser=_between(0, None), metavar="FLOAT>0", help="AdamW learning rate."),
    seed: int = typer.Option(_T.seed, help="Seed of the scenes, the captions and the initial weights."),
    scenes: int = typer.Option(_T.scenes, min=1, help="Training scenes generated up front."),
    twins: bool = typer.Option(_T.twins, help="Pair each scene with a copy whose one object has another shape "
                                              "(experiment, see the model card)."),
    junk: int = typer.Option(_T.junk, min=0, help="Random-token captions per step that are negatives for every image."),
    word_templates: bool = typer.Option(_T.word_templates, help="Single-attribute captions also as 'a circle', "
                                                                "'a photo of a circle'."),
    shape_negatives: int = typer.Option(_T.shape_negatives, min=0, help="Captions per step right about colour and "
                                        "background but wrong about one shape, one for each of the first N images."),
    shape_pairs: bool = typer.Option(_T.shape_pairs, help="Beside each shape-swapped caption, the same caption with "
                                                          "the true shape."),
    conv_stem: bool = typer.Option(_T.conv_stem, help="Convolutional stem before the ViT instead of patchify."),
    specific: float = typer.Option(_T.specific, min=0, help="Weigh each fitting caption's image-to-text target by "
                                   "exp(SPECIFIC x attributes it states), so full descriptions outscore partial ones "
                                   "(0 = equal weights)."),
    filler: int = typer.Option(_T.filler, min=0, help="Captions of filler words only ('a thing on') per step, "
                                                      "negatives for every image."),
) -> None:
    """Retrain the demo CLIP (under an hour on a 2-core CPU with the defaults)."""
    from audit.demo.train import train

    options = TrainOptions(steps=steps, batch=batch, lr=lr, seed=seed, scenes=scenes, twins=twins, junk=junk,
                           word_templates=word_templates, shape_negatives=shape_negatives, shape_pairs=shape_pairs,
                           conv_stem=conv_stem, specific=specific, filler=filler)
    info = train(out, options)
    typer.echo(f"wrote {out} ({info['steps']} steps, {info['minutes']} min; settings in {out.with_suffix('.json')})")


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each record (so that redirected streams see it)."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def configure_logging() -> None:
    """The command's messages: the "audit" logger's records at INFO and above, as bare lines on stderr."""
    logger = logging.getLogger("audit")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        # open_clip's module-level logging calls give the root logger a handler; without this every line
        # would print twice.
        logger.propagate = False
    logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    try:
        code = app(args=argv, prog_name="audit", standalone_mode=False)
    except AuditError as e:
        print(f"audit: error: {e}", file=sys.stderr)
        return 2
    except typer.Abort:
        print("audit: aborted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("audit: interrupted; committed batches are kept, run the same command again to resume",
              file=sys.stderr)
        return 130
    except Exception as e:
        # Usage errors of the command-line parser (click, or the copy typer vendors) carry their exit code;
        # they read as one line, like every other error a user can fix.
        if callable(getattr(e, "format_message", None)) and isinstance(getattr(e, "exit_code", None), int):
            if not e.format_message().strip():  # `audit` alone: the help is the answer
                e.show()
                return e.exit_code
            ctx = getattr(e, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            print(f"audit: error: {' '.join(e.format_message().split())}{hint}", file=sys.stderr)
            return e.exit_code
        raise
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
