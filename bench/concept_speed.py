"""The concept opinion against the ascent, per image on this machine's CPU, measured side by side in one run.

For each model (audit-demo with its weights; ViT-B-32 with random weights, whose shapes are a real CLIP's):
 - the opinion alone on the same batch of images: the default ascent (200 steps, 16 candidates, 64 views,
   3 rounds of token swaps) against the concept decomposition (one image forward and the solve), after one
   warm-up call each; the vocabulary's embeddings are computed (and cached) once beforehand, which is reported
   on its own line;
 - whole scans (`audit scan`, relevancy heatmaps included) with --opinion ascent and --opinion concepts, for
   audit-demo only (ViT-B-32's ascent scan would take most of an hour here).

    .venv/bin/python bench/concept_speed.py [--images 8] [--ascent-images 2] [--models audit-demo,ViT-B-32]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

import audit
from audit.scanner import rng
from audit.scanner.ascent import AscentConfig, run_ascent
from audit.scanner.concepts import Decomposition, ImageMean
from audit.scanner.encoders import Towers
from audit.scanner.models import load_model
from audit.scanner.options import ScanOptions
from audit.scanner.vocabulary import default_vocabulary, embeddings, text_mean


def images_for(size: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, size, size, generator=g)


def timed(fn, repeat: int = 1) -> float:
    fn()  # warm-up: allocator, first-call costs
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def opinion_times(model: str, n_images: int, n_ascent: int) -> dict:
    pretrained = "auto" if model == "audit-demo" else "none"
    loaded = load_model(model, pretrained, device="cpu")
    towers = Towers(loaded)
    size = loaded.preprocess["size"]
    size = size[0] if isinstance(size, (tuple, list)) else size
    x = images_for(size, max(n_images, n_ascent))
    seeds = torch.tensor([rng.image_seed(0, f"img{i}") for i in range(len(x))])
    vocab = default_vocabulary(towers.tokenizer)
    identity = f"bench|{model}|{pretrained}"
    t0 = time.perf_counter()
    emb = embeddings(towers, vocab, identity)
    mean_t = text_mean(towers, identity)
    vocab_s = time.perf_counter() - t0
    defaults = ScanOptions().with_model_defaults() if model != "audit-demo" else \
        ScanOptions(model="audit-demo").with_model_defaults()
    with torch.no_grad():
        feats = towers.encode_images(x[:n_images]).float()
    centre = ImageMean(None, "none") if defaults.concept_mean == "none" else \
        ImageMean(feats.mean(0).numpy(), "bench", n_images)
    opinion = Decomposition(vocab.words, emb, mean_t, centre, defaults.concepts())

    def concepts():
        with torch.no_grad():
            opinion(towers.encode_images(x[:n_images]))

    cfg = AscentConfig()  # the scan's defaults

    def ascent():
        run_ascent(towers, x[:n_ascent], seeds[:n_ascent], cfg)

    concept_s = timed(concepts, repeat=3) / n_images
    start = time.perf_counter()
    ascent()  # no warm-up: one call is minutes on a CPU
    ascent_s = (time.perf_counter() - start) / n_ascent
    return {"vocab": len(vocab.words), "vocab_s": vocab_s, "concept_s": concept_s, "ascent_s": ascent_s}


def scan_times(n_images: int) -> dict:
    from audit.demo import make_dataset

    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_dataset(Path(tmp) / "d", images=n_images, size=128)
        out = {}
        for opinion in ("concepts", "ascent"):
            start = time.perf_counter()
            audit.scan(manifest, Path(tmp) / opinion, model="audit-demo", opinion=opinion, workers=0, device="cpu",
                       quiet=True)
            out[opinion] = (time.perf_counter() - start) / n_images
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=8, help="images per concept batch")
    ap.add_argument("--ascent-images", type=int, default=2, help="images in the (slow) ascent batch")
    ap.add_argument("--scan-images", type=int, default=12, help="images in each whole audit-demo scan")
    ap.add_argument("--models", default="audit-demo,ViT-B-32")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"# concept opinion vs ascent on this CPU ({os.cpu_count()} cores, torch {torch.__version__})")
    print("| model | vocabulary | embeddings once | ascent s/image | concepts s/image | concepts images/s | ratio |")
    print("|---|---|---|---|---|---|---|")
    ratios = []
    for model in args.models.split(","):
        r = opinion_times(model, args.images, args.ascent_images)
        ratio = r["ascent_s"] / r["concept_s"]
        ratios.append((model, ratio))
        print(f"| {model} | {r['vocab']} words | {r['vocab_s']:.1f} s | {r['ascent_s']:.2f} | {r['concept_s']:.4f} | "
              f"{1 / r['concept_s']:.1f} | x{ratio:.0f} |")
    if "audit-demo" in args.models.split(","):
        s = scan_times(args.scan_images)
        print(f"\nwhole audit-demo scans of {args.scan_images} images (model load, heatmaps and writing included): "
              f"ascent {s['ascent']:.2f} s/image, concepts {s['concepts']:.3f} s/image, x{s['ascent'] / s['concepts']:.0f}")
    for model, ratio in ratios:
        print(f"ratio: {model} concepts x{ratio:.0f} faster per image than the default ascent "
              f"({'meets' if ratio >= 200 else 'BELOW'} the x200 target)")


if __name__ == "__main__":
    main()
