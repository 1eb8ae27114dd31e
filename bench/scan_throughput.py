"""Issue 7's yardstick: images/s of the ascent, the relevancy pass and the full scan, over models and batch
sizes, next to a faithful naive baseline measured in the same run, plus the objective of both.

    python bench/scan_throughput.py                  # GPU: ViT-B-32, ViT-B-16, ViT-L-14, random weights
    python bench/scan_throughput.py --device cpu --models audit-tiny --batch-sizes 2 --steps 2 \\
        --scan-images 4 --naive-images 1 --loader-images 8   # smoke run (tests/test_bench.py)

Speed does not depend on the weights, so every model is random-weight (`--pretrained none`); no download.
The naive baseline is the origin script's loop: one image at a time, the full 77-position text context, 64
freshly augmented views encoded at every step, a vocabulary-sized one-hot straight-through Gumbel-softmax,
fp32. The objective check scores the best sequence of each method with one shared scorer (mean cosine over
64 fixed views, fp32), so neither method is judged by its own shortcut.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import kornia.augmentation as KA
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import audit
from audit.scanner.ascent import AscentConfig, make_optimizer, run_ascent, sequences_to_words
from audit.scanner.device import autocast
from audit.scanner.encoders import Towers
from audit.scanner.loader import ImageDataset, make_loader
from audit.scanner.memory import relevancy_chunk
from audit.scanner.models import load_model
from audit.scanner.relevancy import relevancy
from audit.sources import open_source

GPU_MODELS = ("ViT-B-32", "ViT-B-16", "ViT-L-14")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else float("nan")


def input_size(loaded) -> int:
    size = loaded.preprocess["size"]
    return size[0] if isinstance(size, (tuple, list)) else size


def random_images(n: int, size: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g).to(device)


def write_jpegs(folder: Path, n: int, size=(640, 480)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rs = np.random.RandomState(0)
    base = rs.randint(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    for i in range(n):
        arr = np.roll(base, i, axis=1)
        Image.fromarray(arr).resize(size, Image.Resampling.BILINEAR).save(folder / f"{i:05d}.jpg", quality=90)
    return folder


def loader_rate(folder: Path, preprocess: dict, workers: int, batch: int) -> float:
    records = list(open_source(folder, "path").records())
    loader = make_loader(ImageDataset(records, preprocess), batch, workers)
    t0 = time.perf_counter()
    n = sum(len(b.indices) for b in loader)
    return n / (time.perf_counter() - t0)


def fast_ascent(towers: Towers, images: torch.Tensor, cfg: AscentConfig, device: torch.device,
                optimizer=make_optimizer, kernel: str = "eager"):
    seeds = torch.arange(images.shape[0], device=device) + 1000
    with autocast(device):
        # The tiles of bench/fused_tiles.py's sweep, which bench/gpu.sh exports (audit.scan reads them too).
        return run_ascent(towers, images, seeds, cfg, optimizer=optimizer, kernel=kernel,
                          tiles=os.environ.get("AUDIT_TRITON_TILES") or None)


def ms_per_step(towers: Towers, images: torch.Tensor, cfg: AscentConfig, device: torch.device,
                steps: tuple[int, int] = (10, 30), kernel: str = "eager") -> float:
    """Milliseconds of one ascent step, setup and token swaps left out: two runs that differ only in their step
    count, their time difference over the steps between them."""
    times = []
    for n in steps:
        c = dataclasses.replace(cfg, steps=n, refine_rounds=0)
        sync(device)
        t0 = time.perf_counter()
        fast_ascent(towers, images, c, device, kernel=kernel)
        sync(device)
        times.append(time.perf_counter() - t0)
    return max(times[1] - times[0], 0.0) / (steps[1] - steps[0]) * 1e3


def host_overhead(name: str, towers: Towers, images: torch.Tensor, cfg: AscentConfig, device: torch.device,
                  label: str, kernel: str) -> tuple[float, float]:
    """What CUDA graphs could save at most: a step at batch 2, where the GPU idles and the time is the host's
    launches, against a step at the measured batch, where those launches overlap the GPU's work."""
    small = ms_per_step(towers, images[:2], cfg, device, kernel=kernel)
    full = ms_per_step(towers, images, cfg, device, kernel=kernel)
    print(f"paths: {name} {label}: a step takes {small:.2f} ms at batch 2 (the host's launches, the GPU nearly "
          f"idle) and {full:.2f} ms at batch {images.shape[0]}; CUDA graphs could save at most "
          f"{min(small / full, 1.0) if full > 0 else float('nan'):.0%} of the step", flush=True)
    return small, full


# ---- the naive baseline: the origin script's loop, one image at a time ----------------------------------

def naive_ascent(towers: Towers, image: torch.Tensor, cfg: AscentConfig, seed: int) -> tuple[list[int], float]:
    """Returns the best sequence seen (by its own view cosine) and that cosine."""
    model = towers.model
    emb = towers.token_embedding.weight
    vocab, ctx, k = towers.vocab_size, towers.context_length, cfg.tokens_per_seq
    gen = torch.Generator(device=image.device).manual_seed(seed)
    torch.manual_seed(seed)
    aug = KA.RandomAffine(degrees=cfg.degrees, translate=(cfg.translate, cfg.translate), p=cfg.p_affine)
    logits = torch.randn(cfg.candidates, k, vocab, device=image.device, generator=gen).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=cfg.lr)
    pad = torch.zeros(ctx - k - 2, dtype=torch.long, device=image.device)
    sot = emb[torch.tensor([towers.sot_id], device=image.device)]
    eot_e = emb[torch.tensor([towers.eot_id], device=image.device)]
    pad_e = emb[pad]
    eot = torch.full((cfg.candidates,), k + 1, device=image.device, dtype=torch.long)
    best, best_cos = None, -2.0
    for _ in range(cfg.steps):
        with torch.no_grad():
            views = aug(image[None].expand(cfg.views, -1, -1, -1))
            img = F.normalize(model.encode_image(views), dim=-1)  # [V, D], re-encoded every step
        one_hot = F.gumbel_softmax(logits, tau=cfg.tau, hard=True)  # [C, K, V]
        learned = one_hot @ emb
        x = torch.cat([sot.expand(cfg.candidates, 1, -1), learned, eot_e.expand(cfg.candidates, 1, -1),
                       pad_e.expand(cfg.candidates, -1, -1)], 1)  # the full 77-position context
        txt = F.normalize(towers.text_from_embeddings(x, eot)[0], dim=-1)
        cos = (txt @ img.T).mean(1)  # [C]
        loss = -100.0 * cos.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        cos = cos.detach()
        top = int(cos.argmax())
        if float(cos[top]) > best_cos:
            best_cos, best = float(cos[top]), one_hot[top].detach().argmax(-1).tolist()
    return best, best_cos


@torch.no_grad()
def shared_score(towers: Towers, image: torch.Tensor, seq: list[int], cfg: AscentConfig) -> float:
    """Mean fp32 cosine of one token sequence with 64 fixed views of the image: the common yardstick."""
    from audit.scanner.ascent import augment

    seeds = torch.tensor([987654321], device=image.device)
    views = augment(image[None], seeds, 7, AscentConfig(views=64, degrees=cfg.degrees, translate=cfg.translate))
    img = F.normalize(towers.model.encode_image(views).float(), dim=-1)
    ids = torch.tensor([[towers.sot_id, *seq, towers.eot_id]], device=image.device)
    eot = torch.tensor([len(seq) + 1], device=image.device)
    txt = F.normalize(towers.encode_ids(ids, eot)[0].float(), dim=-1)
    return float((txt @ img.T).mean())


# ---- the measurements ---------------------------------------------------------------------------------

def measure_model(name: str, device: torch.device, batch_sizes: list[int], cfg: AscentConfig,
                  rows: list[dict]) -> None:
    """One batch of each size: the ascent (after a one-step warm-up), then relevancy of every found word."""
    loaded = load_model(name, "none", device=str(device))
    towers = Towers(loaded)
    for b in batch_sizes:
        x = random_images(b, input_size(loaded), device)
        reset_peak(device)
        fast_ascent(towers, x, dataclasses.replace(cfg, steps=1), device)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        found = fast_ascent(towers, x, cfg, device)
        sync(device)
        ascent_rate = b / (time.perf_counter() - t0)
        words = [[w["word"] for w in sequences_to_words(towers.tokenizer, found.seqs[i], found.scores[i])]
                 for i in range(b)]
        pair_image = torch.tensor([i for i, ws in enumerate(words) for _ in ws], dtype=torch.long)
        flat = [w for ws in words for w in ws]
        sync(device)
        t0 = time.perf_counter()
        with autocast(device):
            if flat:
                relevancy(towers, x, pair_image, flat, chunk=relevancy_chunk(towers, device))
        sync(device)
        rel_rate = b / (time.perf_counter() - t0)
        rows.append({"model": name, "batch": b, "ascent": ascent_rate, "relevancy": rel_rate,
                     "words/image": len(flat) / b, "peak_gb": peak_gb(device)})
        print(f"{name:10s} batch {b:4d}  ascent {ascent_rate:8.2f} img/s  relevancy {rel_rate:8.2f} img/s  "
              f"{len(flat) / b:5.1f} words/image  peak {peak_gb(device):6.2f} GB", flush=True)
    del towers, loaded
    if device.type == "cuda":
        torch.cuda.empty_cache()


def compare_paths(name: str, device: torch.device, b: int, cfg: AscentConfig) -> None:
    """The ascent before the kernel work (eager Gumbel-softmax, plain Adam), with the fused Adam, with the
    compiled Gumbel-softmax too (the default), and with the two fused Triton kernels (--kernel triton), on
    the same batch: images/s, peak memory, mean best cosine, and whether they find the same words."""
    if device.type != "cuda":
        print("paths: compiled and fused kernels are CUDA-only; not compared on cpu", flush=True)
        return
    loaded = load_model(name, "none", device=str(device))
    towers = Towers(loaded)
    x = random_images(b, input_size(loaded), device, seed=2)
    default_optimizer = make_optimizer

    def plain(logits, lr):
        return torch.optim.Adam([logits], lr=lr)

    results = {}
    no_swaps = dataclasses.replace(cfg, refine_rounds=0)
    for label, path_kernel, optimizer, path_cfg in (
            ("eager + plain Adam (before)", "eager", plain, cfg),
            ("eager + fused Adam", "eager", default_optimizer, cfg),
            ("compiled + fused Adam (default)", "compile", default_optimizer, cfg),
            ("compiled, no token swaps", "compile", default_optimizer, no_swaps),
            ("triton: 2 fused kernels, Adam inside", "triton", default_optimizer, cfg)):
        try:
            reset_peak(device)
            # warm-up (and compile)
            fast_ascent(towers, x, dataclasses.replace(path_cfg, steps=2), device, optimizer, path_kernel)
            sync(device)
            t0 = time.perf_counter()
            found = fast_ascent(towers, x, path_cfg, device, optimizer, path_kernel)
            sync(device)
        except Exception as e:  # noqa: BLE001 - a path that fails to build is reported, the others still run
            print(f"paths: {name} batch {b}  {label:32s} FAILED: {type(e).__name__}: {str(e)[:300]}", flush=True)
            continue
        results[label] = (b / (time.perf_counter() - t0), found)
        print(f"paths: {name} batch {b}  {label:32s} ascent {results[label][0]:8.2f} img/s  "
              f"peak {peak_gb(device):6.2f} GB  mean best cosine {float(found.scores[:, 0].mean()):.4f}",
              flush=True)
    for label, path_kernel in (("compiled", "compile"), ("triton", "triton")):
        try:
            host_overhead(name, towers, x, cfg, device, label, path_kernel)
        except Exception as e:  # noqa: BLE001 - reported; the rest of the table stands
            print(f"paths: {name} {label}: step time FAILED: {type(e).__name__}: {str(e)[:300]}", flush=True)
    if "compiled + fused Adam (default)" in results and "compiled, no token swaps" in results:
        with_swaps, without = results["compiled + fused Adam (default)"][0], results["compiled, no token swaps"][0]
        print(f"paths: the token swaps after the ascent ({cfg.refine_rounds} rounds) take "
              f"{1 - with_swaps / without:.1%} of the default ascent's time", flush=True)
    before = results["eager + plain Adam (before)"]
    for label in ("compiled + fused Adam (default)", "triton: 2 fused kernels, Adam inside"):
        if label not in results:
            continue
        after = results[label]
        same = float((before[1].seqs[:, 0] == after[1].seqs[:, 0]).all(-1).float().mean())
        diff = (after[1].scores[:, 0] - before[1].scores[:, 0]).float()
        print(f"paths: {label} vs before: {after[0] / before[0]:.2f}x faster; same best sequence for {same:.0%} "
              f"of images (bf16 rounding can move a near-tie); best cosine {float(diff.mean()):+.4f} "
              f"(sd {float(diff.std()):.4f}) against before", flush=True)
    del towers, loaded
    torch.cuda.empty_cache()


def full_scan(name: str, device: torch.device, folder: Path, out: Path, cfg: AscentConfig, batch: str,
              workers: int, kernel: str = "auto") -> tuple[float, int]:
    reset_peak(device)
    t0 = time.perf_counter()
    scan = audit.scan(folder, out, model=name, pretrained="none", device=str(device), batch_size=batch,
                      steps=cfg.steps, candidates=cfg.candidates, views=cfg.views, workers=workers, quiet=True,
                      overwrite=True, kernel=kernel)
    seconds = time.perf_counter() - t0
    run = scan.config["runs"][-1]
    phases = run.get("phases") or {}
    total = sum(phases.values())
    if total > 0:  # the loader's overlap with the GPU: a fed GPU leaves the scan waiting for images ~0% of it
        print(f"{name:10s} full scan's time: " + ", ".join(f"{k.replace('_', ' ')} {v / total:.0%}"
                                                          for k, v in phases.items()), flush=True)
    return run["images"] / seconds, run["batch_size_used"]


def baseline(name: str, device: torch.device, n: int, cfg: AscentConfig, rows: list[dict], full: float) -> float:
    """The naive loop and the objective of both methods on shared random weights; prints the ratio and returns
    the naive loop's images/s."""
    loaded = load_model(name, "none", device=str(device))
    towers = Towers(loaded)  # load_model already froze the weights
    x = random_images(n, input_size(loaded), device, seed=1)
    sync(device)
    t0 = time.perf_counter()
    naive = [naive_ascent(towers, x[i], cfg, seed=i) for i in range(n)]
    sync(device)
    naive_rate = n / (time.perf_counter() - t0)
    print(f"naive baseline ({name}, one image at a time, fp32, 77 positions, views re-encoded): "
          f"{naive_rate:8.4f} img/s ({1 / naive_rate:.1f} s/image; ascent only)", flush=True)
    naive_scores = [shared_score(towers, x[i], seq, cfg) for i, (seq, _) in enumerate(naive)]
    naive_score = float(np.mean(naive_scores))
    scores, per_image = {}, {}
    # The default folds one draw of 64 views into a fixed target; the naive loop draws new views every
    # step, which can generalize better to unseen views. Both fast variants are scored.
    for label, c in (("fast", cfg), ("fast --resample-views", dataclasses.replace(cfg, resample_views=True))):
        found = fast_ascent(towers, x, c, device)
        per_image[label] = [shared_score(towers, x[i], [int(t) for t in found.seqs[i, 0]], cfg) for i in range(n)]
        scores[label] = float(np.mean(per_image[label]))
    for label, score in scores.items():
        # Paired over the images: the fast path's score minus the naive loop's, its mean and spread.
        diff = np.array(per_image[label]) - np.array(naive_scores)
        half = 1.96 * diff.std(ddof=1) / np.sqrt(n) if n > 1 else float("nan")
        verdict = "fast >= naive" if score >= naive_score - 1e-6 else \
            ("below naive, within the paired spread" if diff.mean() + half >= 0 else "FAST BELOW NAIVE")
        print(f"objective (mean best-sequence cosine over {n} images, shared scorer): "
              f"{label} {score:.4f}  naive {naive_score:.4f}  paired difference {diff.mean():+.4f} "
              f"(95% half-width {half:.4f}, sd {diff.std(ddof=1) if n > 1 else float('nan'):.4f})  {verdict}",
              flush=True)
    best = max(r["ascent"] for r in rows if r["model"] == name)
    print(f"ratio: {name} full scan {full:.2f} img/s vs naive ascent-only {naive_rate:.4f} img/s = "
          f"{full / naive_rate:.0f}x (ascent alone, best batch: {best / naive_rate:.0f}x)", flush=True)
    del towers, loaded
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return naive_rate


def triton_scan(name: str, device: torch.device, folder: Path, out: Path, cfg: AscentConfig, workers: int,
                default: tuple[float, int], naive_rate: float) -> None:
    """The same full scan with the fused kernels (--kernel triton), which also change the auto batch size
    (12 bytes per logit instead of 40): the figure that decides whether triton becomes the CUDA default."""
    if device.type != "cuda":
        print("full scan with --kernel triton: CUDA-only; not run on cpu", flush=True)
        return
    try:
        rate, used = full_scan(name, device, folder, out, cfg, "auto", workers, kernel="triton")
    except Exception as e:  # noqa: BLE001 - reported; the other figures of the run still come
        print(f"{name:10s} full scan, triton: FAILED: {type(e).__name__}: {str(e)[:300]}", flush=True)
        return
    print(f"{name:10s} full scan, triton (auto batch, used {used}): {rate:8.2f} img/s peak {peak_gb(device):6.2f} GB; "
          f"{rate / default[0]:.2f}x the default scan ({default[0]:.2f} img/s at batch {default[1]}); "
          f"{rate / naive_rate:.0f}x the naive baseline", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default=",".join(GPU_MODELS))
    ap.add_argument("--batch-sizes", default="32,64,128,256")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--views", type=int, default=64)
    ap.add_argument("--scan-images", type=int, default=512, help="images in each full-scan measurement")
    ap.add_argument("--naive-images", type=int, default=2)
    ap.add_argument("--loader-images", type=int, default=512)
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    models = [m for m in args.models.split(",") if m]
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    cfg = AscentConfig(steps=args.steps, candidates=args.candidates, views=args.views)
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; torch "
          f"{torch.__version__}; steps {cfg.steps}, candidates {cfg.candidates}, tokens {cfg.tokens_per_seq}, "
          f"views {cfg.views}; random weights", flush=True)
    first = load_model(models[0], "none", device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_jpegs(Path(tmp) / "jpegs", args.loader_images)
        rate = loader_rate(folder, first.preprocess, args.workers, max(sizes))
        print(f"loader: decode + resize of 640x480 JPEGs, {args.workers} workers: {rate:8.1f} img/s", flush=True)
        rows: list[dict] = []
        scans: dict[str, tuple[float, int]] = {}
        scan_folder = write_jpegs(Path(tmp) / "scan-images", args.scan_images)
        for i, name in enumerate(models):
            measure_model(name, device, sizes, cfg, rows)
            if i == 0:
                compare_paths(name, device, max(sizes), cfg)
            scans[name] = full_scan(name, device, scan_folder, Path(tmp) / f"scan-{name}", cfg, "auto",
                                    args.workers if device.type == "cuda" else 0)
            print(f"{name:10s} full scan (auto batch, used {scans[name][1]}): {scans[name][0]:8.2f} img/s "
                  f"peak {peak_gb(device):6.2f} GB", flush=True)
            if i == 0:  # the baseline right after the first model, so a run cut short still has its ratio
                naive_rate = baseline(name, device, args.naive_images, cfg, rows, scans[name][0])
                triton_scan(name, device, scan_folder, Path(tmp) / f"scan-{name}-triton", cfg, args.workers,
                            scans[name], naive_rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
