"""The `audit` command: parses arguments and calls the library. No logic lives here."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from .errors import AuditError
from .loader import DEFAULT_MAX_PIXELS
from .models import DEFAULT_MODEL, DEFAULT_PRETRAINED

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="What a CLIP vision transformer thinks of every image in a dataset, and where it looks.")


@app.command()
def scan(
    source: Path = typer.Argument(..., help="Image folder (label = first sub-folder) or manifest (.csv, .parquet, .jsonl)."),
    out: Path = typer.Option(Path("audit-scan"), "--out", "-o", help="Scan directory to write (or resume)."),
    model: str = typer.Option(DEFAULT_MODEL, help="open_clip model name, or audit-tiny."),
    pretrained: str = typer.Option(DEFAULT_PRETRAINED, help="open_clip weight tag, a local checkpoint file, or 'none' (random weights from --seed)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    batch_size: str = typer.Option("auto", help="Images per batch, or auto (4 on CPU, 64 on CUDA)."),
    workers: int = typer.Option(2, help="DataLoader worker processes for decoding."),
    seed: int = typer.Option(0, help="Run seed; each image's randomness comes from (seed, image_id)."),
    steps: int = typer.Option(200, help="Ascent steps."),
    tokens_per_seq: int = typer.Option(4, help="Free tokens per candidate sequence."),
    candidates: int = typer.Option(16, help="Candidate sequences per image."),
    lr: float = typer.Option(5.0, help="Adam learning rate of the ascent."),
    views: int = typer.Option(64, help="Random affine views of each image in the objective."),
    resample_views: bool = typer.Option(False, "--resample-views", help="Redraw the views every step (the origin script's way; slower)."),
    prompt: str = typer.Option("", help="Text placed before the learned tokens."),
    start_layer: int = typer.Option(-1, help="First image layer in the relevancy (-1 = last)."),
    start_layer_text: int = typer.Option(-1, help="First text layer in the relevancy (-1 = last)."),
    path_column: str = typer.Option("path", help="Manifest column holding image paths."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, help="Refuse images with more pixels (decompression-bomb guard)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete an earlier scan in --out and start over."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output; errors still print."),
) -> None:
    """Scan a dataset: words CLIP attaches to each image, and a relevancy heatmap per word, into Parquet."""
    from .scanner import run_scan

    run_scan(str(source), str(out), model=model, pretrained=pretrained, device=device, batch_size=batch_size,
             workers=workers, seed=seed, steps=steps, tokens_per_seq=tokens_per_seq, candidates=candidates, lr=lr,
             views=views, resample_views=resample_views, prompt=prompt, start_layer=start_layer,
             start_layer_text=start_layer_text, path_column=path_column, max_pixels=max_pixels,
             overwrite=overwrite, quiet=quiet)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Folder for the generated dataset and its scan."),
    images: int = typer.Option(48, help="Images to generate."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Generate a small labelled dataset and scan it offline with the tiny model."""
    from .demo import run_demo

    run_demo(out, images=images, quiet=quiet)


def main(argv: list[str] | None = None) -> int:
    try:
        app(args=argv, prog_name="audit", standalone_mode=False)
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
    except Exception as e:  # click usage errors carry their own exit code
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            return e.exit_code
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
