"""The `audit` command: parses arguments and calls the library. No logic lives here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from audit.errors import AuditError
from audit.scanner.options import DEFAULT_MAX_PIXELS, DEFAULT_MODEL, DEFAULT_PRETRAINED

# Options shared by `scan` and `explain`, declared once.
Model = Annotated[str, typer.Option(help="open_clip model name, audit-demo (trained here, offline) or audit-tiny (tests).")]
Pretrained = Annotated[str, typer.Option(help="auto (openai for open_clip models, the bundled weights for audit-demo), an open_clip tag, a local checkpoint file, or 'none' (random weights from --seed).")]
Device = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
Seed = Annotated[int, typer.Option(help="Run seed; each image's randomness comes from (seed, image_id).")]
Steps = Annotated[int, typer.Option(help="Ascent steps.")]
TokensPerSeq = Annotated[int, typer.Option(help="Free tokens per candidate sequence.")]
Candidates = Annotated[int, typer.Option(help="Candidate sequences per image.")]
Lr = Annotated[float, typer.Option(help="Adam learning rate of the ascent.")]
Views = Annotated[int, typer.Option(help="Random affine views of each image in the objective.")]
RefineRounds = Annotated[int, typer.Option(help="Rounds of token swaps on the kept sequences after the ascent "
                                                "(each swap kept only where it raises the cosine); 0: none.")]
Prompt = Annotated[str, typer.Option(help="Text placed before the learned tokens.")]
StartLayer = Annotated[Optional[int], typer.Option(help="First image layer in the relevancy (-1 = last; default: last, or 0 for audit-demo).")]  # noqa: UP045
StartLayerText = Annotated[int, typer.Option(help="First text layer in the relevancy (-1 = last).")]
Heatmap = Annotated[Optional[str], typer.Option(help="Relevancy method: chefer (gradient-weighted attention) or occlusion (blank windows, measure the fall); default: chefer.")]  # noqa: UP045
OcclusionWindow = Annotated[Optional[int], typer.Option(help="Side of the blanked window in patches, for --heatmap occlusion (default: 3, or 4 for audit-demo).")]  # noqa: UP045
Words = Annotated[Optional[list[str]], typer.Option("--words", "-w", help="Probe words or phrases scored on every image, comma-separated (repeatable).")]  # noqa: UP045 - typer reads it
WordsFile = Annotated[Optional[Path], typer.Option("--words-file", help="Probe words, one per line (phrases may contain commas; # starts a comment).")]  # noqa: UP045
NoAscent = Annotated[bool, typer.Option("--no-ascent", help="Skip the ascent: score only the probe words (fast).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Delete an earlier scan in --out and start over.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output; errors still print.")]


app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="What a CLIP vision transformer thinks of every image in a dataset, and where it looks.")


@app.command()
def scan(
    source: Path = typer.Argument(..., help="Image folder (label = first sub-folder) or manifest (.csv, .parquet, .jsonl)."),
    out: Path = typer.Option(Path("audit-scan"), "--out", "-o", help="Scan directory to write (or resume)."),
    model: Model = DEFAULT_MODEL,
    pretrained: Pretrained = DEFAULT_PRETRAINED,
    device: Device = "auto",
    batch_size: str = typer.Option("auto", help="Images per batch, or auto (64 on CUDA; on CPU what keeps the ascent's tensors under 32 MB, 16 with --no-ascent)."),
    workers: int = typer.Option(2, help="DataLoader worker processes for decoding."),
    seed: Seed = 0,
    steps: Steps = 200,
    tokens_per_seq: TokensPerSeq = 4,
    candidates: Candidates = 16,
    lr: Lr = 5.0,
    views: Views = 64,
    resample_views: bool = typer.Option(False, "--resample-views", help="Redraw the views every step (the origin script's way; slower)."),
    refine_rounds: RefineRounds = 3,
    prompt: Prompt = "",
    start_layer: StartLayer = None,
    start_layer_text: StartLayerText = -1,
    heatmap: Heatmap = None,
    occlusion_window: OcclusionWindow = None,
    path_column: str = typer.Option("path", help="Manifest column holding image paths."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, help="Refuse images with more pixels (decompression-bomb guard)."),
    words: Words = None,
    words_file: WordsFile = None,
    no_ascent: NoAscent = False,
    overwrite: Overwrite = False,
    retry_errors: bool = typer.Option(False, "--retry-errors", help="Re-attempt the images whose last attempt failed (stored in errors); by default a resume skips them."),
    quiet: Quiet = False,
) -> None:
    """Scan a dataset: words CLIP attaches to each image, and a relevancy heatmap per word, into Parquet."""
    from audit.scanner.pipeline import run_scan

    run_scan(str(source), str(out), model=model, pretrained=pretrained, device=device, batch_size=batch_size,
             workers=workers, seed=seed, steps=steps, tokens_per_seq=tokens_per_seq, candidates=candidates, lr=lr,
             views=views, resample_views=resample_views, refine_rounds=refine_rounds, prompt=prompt,
             start_layer=start_layer, start_layer_text=start_layer_text, heatmap=heatmap,
             occlusion_window=occlusion_window,
             path_column=path_column, max_pixels=max_pixels,
             words=tuple(words or ()), words_file=words_file, no_ascent=no_ascent, overwrite=overwrite,
             retry_errors=retry_errors, quiet=quiet)


@app.command()
def report(
    scan_dir: Path = typer.Argument(..., help="A scan directory written by `audit scan`."),
    group_by: list[str] = typer.Option(..., "--group-by", "-g", help="Image column to compare groups by (repeatable)."),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="HTML file to write."),
    min_count: int = typer.Option(5, help="Words seen in fewer images are not tested."),
    fdr: float = typer.Option(0.05, help="Benjamini-Hochberg false discovery rate for flagging."),
    top: int = typer.Option(10, help="Words shown per group."),
    title: str = typer.Option(None, help="Report title."),
) -> None:
    """Write a self-contained HTML bias report: distinctive words per group, how sure, where CLIP looks."""
    from audit.outputs.report import build_report

    path = build_report(scan_dir, group_by, out, min_count=min_count, fdr=fdr, top=top, title=title)
    print(f"audit report: wrote {path}", file=sys.stderr)


@app.command()
def check(
    scan_dir: Path = typer.Argument(..., help="The scan of the snapshot under review."),
    policy: Path = typer.Option(..., "--policy", "-p", help="Policy file (TOML); see examples/audit-policy.toml."),
    baseline: Path = typer.Option(None, "--baseline", "-b", help="Scan of the last accepted snapshot, for the drift rules."),
    junit: Path = typer.Option(None, "--junit", help="Write JUnit XML here (one test case per rule)."),
    json_out: Path = typer.Option(None, "--json", help="Write the findings as JSON here."),
    markdown: Path = typer.Option(None, "--markdown", help="Write a Markdown summary here (for a CI step summary)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing; the exit code and files say it all."),
) -> None:
    """Gate a dataset snapshot on a policy: exit 0 when every rule passes, 1 when one fails, 2 on usage errors."""
    from audit.outputs.check_output import text
    from audit.policy.parse import load_policy
    from audit.policy.rules import run_check, write_outputs

    result = run_check(scan_dir, load_policy(policy), baseline)
    write_outputs(result, junit=junit, json_path=json_out, markdown=markdown)
    if not quiet:
        sys.stdout.write(text(result))
    raise typer.Exit(result.exit_code)


@app.command()
def diff(
    old: Path = typer.Argument(..., help="Scan of the earlier snapshot."),
    new: Path = typer.Argument(..., help="Scan of the later snapshot."),
    group_by: list[str] = typer.Option(None, "--group-by", "-g", help="Image column to compare groups by (repeatable)."),
    out: Path = typer.Option(None, "--out", "-o", help="Also write the diff to this .html or .md file."),
    min_count: int = typer.Option(5, help="Words seen in fewer images are not tested for associations."),
    fdr: float = typer.Option(0.05, help="Benjamini-Hochberg false discovery rate for associations."),
) -> None:
    """What changed between two scans: images added and removed, word shift, associations gained and lost."""
    from audit.outputs.diff import build_diff, text, write_diff

    d = build_diff(old, new, group_by or [], min_count=min_count, fdr=fdr)
    sys.stdout.write(text(d))
    if out is not None:
        print(f"audit diff: wrote {write_diff(d, out)}", file=sys.stderr)


@app.command()
def explain(
    inputs: list[Path] = typer.Argument(..., help="Image files and/or folders."),
    out: Path = typer.Option(Path("explain-out"), "--out", "-o", help="Folder for the tiles, mosaics and the scan behind them."),
    words: Words = None,
    words_file: WordsFile = None,
    no_ascent: NoAscent = False,
    model: Model = DEFAULT_MODEL,
    pretrained: Pretrained = DEFAULT_PRETRAINED,
    device: Device = "auto",
    seed: Seed = 0,
    steps: Steps = 200,
    tokens_per_seq: TokensPerSeq = 4,
    candidates: Candidates = 16,
    lr: Lr = 5.0,
    views: Views = 64,
    refine_rounds: RefineRounds = 3,
    prompt: Prompt = "",
    start_layer: StartLayer = None,
    start_layer_text: StartLayerText = -1,
    heatmap: Heatmap = None,
    occlusion_window: OcclusionWindow = None,
    tile: int = typer.Option(256, help="Width of a tile in pixels."),
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """The single-image view: each word's heatmap as a labelled overlay, and one mosaic per image."""
    from audit.outputs.explain import explain as run_explain

    done = run_explain([str(p) for p in inputs], out, tile=tile, words=tuple(words or ()), words_file=words_file,
                       no_ascent=no_ascent, model=model, pretrained=pretrained, device=device, seed=seed,
                       steps=steps, tokens_per_seq=tokens_per_seq, candidates=candidates, lr=lr, views=views,
                       refine_rounds=refine_rounds, prompt=prompt, start_layer=start_layer,
                       start_layer_text=start_layer_text, heatmap=heatmap, occlusion_window=occlusion_window,
                       overwrite=overwrite, quiet=quiet)
    for e in done:
        words_text = ", ".join(f"{w} ({c:.2f})" for _, w, c in e.words) or "no words"
        print(f"{e.image_id}\n  {words_text}\n  mosaic: {e.mosaic} ({len(e.tiles)} tiles)")


demo_app = typer.Typer(help="The offline demo: a planted-bias dataset scanned with the project's own CLIP.")
app.add_typer(demo_app, name="demo")


@demo_app.callback(invoke_without_command=True)
def demo(
    ctx: typer.Context,
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Folder for the generated dataset and its scan."),
    images: int = typer.Option(60, help="Images to generate (a third per site)."),
    device: Device = "auto",
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Generate a dataset with a planted bias and scan it offline with audit-demo."""
    if ctx.invoked_subcommand is None:
        from audit.demo import run_demo

        run_demo(out, images=images, quiet=quiet, device=device)


@demo_app.command("evaluate")
def demo_evaluate(
    scenes: int = typer.Option(200, help="Held-out scenes per measurement."),
    recall_scenes: int = typer.Option(None, help="Scenes for the (slow: about 14 s a scene on 2 CPU cores) "
                                                 "word-recall part; default --scenes."),
    steps: int = typer.Option(200, help="Ascent steps for word recall (the scan's default)."),
    candidates: int = typer.Option(16, help="Ascent candidates for word recall (the scan's default)."),
    pretrained: str = typer.Option("auto", help="Weights of audit-demo to evaluate."),
    device: str = typer.Option("cpu", help="auto, cpu or cuda."),
) -> None:
    """Zero-shot accuracy, ascent word recall and pointing game of audit-demo on unseen scenes."""
    from audit.demo.evaluate import evaluate

    result = evaluate(scenes=scenes, recall_scenes=recall_scenes, pretrained=pretrained, steps=steps,
                      candidates=candidates, device=device, quiet=False)
    for line in result.lines():
        print(line)


@demo_app.command("train")
def demo_train(
    out: Path = typer.Option(..., "--out", help="Where to write the fp16 safetensors weights."),
    steps: int = typer.Option(3000),
    batch: int = typer.Option(128),
    lr: float = typer.Option(2e-3),
    seed: int = typer.Option(0),
    scenes: int = typer.Option(60_000, help="Training scenes generated up front."),
    twins: bool = typer.Option(False, help="Pair each scene with a copy whose one object has another shape "
                                           "(experiment, see the model card)."),
    junk: int = typer.Option(32, help="Random-token captions per step that are negatives for every image."),
    word_templates: bool = typer.Option(True, help="Single-attribute captions also as 'a circle', 'a photo of "
                                                   "a circle'."),
    shape_negatives: int = typer.Option(128, help="Captions per step right about colour and background but "
                                                  "wrong about one shape, one for each of the first N images."),
    shape_pairs: bool = typer.Option(True, help="Beside each shape-swapped caption, the same caption with the "
                                                "true shape."),
    conv_stem: bool = typer.Option(True, help="Convolutional stem before the ViT instead of patchify."),
    specific: float = typer.Option(1.0, help="Weigh each fitting caption's image-to-text target by "
                                             "exp(SPECIFIC x attributes it states), so full descriptions "
                                             "outscore partial ones (0 = equal weights)."),
    filler: int = typer.Option(0, help="Captions of filler words only ('a thing on') per step, negatives for "
                                       "every image."),
) -> None:
    """Retrain the demo CLIP (under an hour on a 2-core CPU with the defaults)."""
    from audit.demo.train import train

    info = train(out, steps=steps, batch=batch, lr=lr, seed=seed, scenes=scenes, twins=twins, junk=junk,
                 word_templates=word_templates, shape_negatives=shape_negatives, conv_stem=conv_stem,
                 shape_pairs=shape_pairs, specific=specific, filler=filler)
    print(f"wrote {out} ({info['steps']} steps, {info['minutes']} min; settings in {out.with_suffix('.json')})")


def main(argv: list[str] | None = None) -> int:
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
        # Usage errors of the command-line parser (click, or the copy typer vendors) carry their exit code.
        if callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            return e.exit_code
        raise
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
