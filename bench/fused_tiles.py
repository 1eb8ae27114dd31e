"""The fused Triton step (AUDIT_KERNEL=triton) by tiling, against the compiled step it would replace, on one GPU.

The ascent step without the text tower, on a ViT-B/32- or ViT-L/14-shaped problem (images x 16 candidates x 4
tokens rows over the 49,408-token vocabulary, text width 512 or 768), with random logits, embeddings and
upstream gradients:
 - reference: the compiled Gumbel-softmax (ascent.relax under torch.compile), soft @ E in bf16 autocast, the
   autograd backward and the fused CUDA Adam, as the default CUDA path runs them;
 - triton: FusedStep's forward and backward-with-Adam for each tiling in the sweep.
For each: milliseconds per step (CUDA events, after a warm-up step that compiles), the effective bandwidth at
the fused step's minimum traffic (28 bytes a logit: logits, moments and their writes, the noise drawn in the
kernel), the ratio to the reference measured in the same run, and the share of hard tokens equal to the
reference's on the same logits and noise, with the largest error of the soft embeddings (relative to their
largest entry; bf16's rounding, about 1e-2, on a GPU). The sweep stops when its time budget is spent. The last line names
the fastest tiling as AUDIT_TRITON_TILES=..., which bench/gpu.sh passes on to bench/scan_throughput.py.

    python bench/fused_tiles.py [--images 128] [--widths 512,768] [--steps 10] [--budget 80]

`--device cpu` runs the same script under Triton's interpreter on a toy problem (tests/test_bench.py does, so
that the script works the first time a GPU is at hand); its times mean nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

CANDIDATES, TOKENS = 16, 4
TAU, LR = 1000.0, 5.0
MIN_BYTES = 28  # per logit per step: read logits + m + v in the backward, write them, read logits in the forward


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, steps: int, device: torch.device) -> float:
    """Milliseconds per call, after one warm-up call."""
    fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - start) * 1000 / steps


def problem(images: int, width: int, vocab: int, device: torch.device):
    from audit.scanner import rng

    seeds = torch.arange(images, device=device) + 17
    logits = rng.normal(seeds, 1, (CANDIDATES, TOKENS, vocab), device=device).contiguous()
    gen = torch.Generator(device=device).manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(vocab, width, device=device, generator=gen), dim=-1)
    u = torch.randn(logits.numel() // vocab, width, device=device, generator=gen) * 1e-3
    return seeds, logits, emb, u


def reference_step(logits0, emb, u, keys, offs):
    """The default CUDA path's step without the text tower (on a CPU: uncompiled, fp32)."""
    from audit.scanner.ascent import make_optimizer, relax

    logits = logits0.clone().requires_grad_(True)
    opt = make_optimizer(logits, LR)
    cuda = logits.device.type == "cuda"
    step_relax = torch.compile(relax) if cuda else relax

    def step():
        soft, idx = step_relax(logits, keys, offs, TAU)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            s = soft.reshape(-1, emb.shape[0]) @ emb
        opt.zero_grad(set_to_none=True)
        s.float().backward(u)
        opt.step()
        return idx

    return step


def sweep(images: int, width: int, vocab: int, steps: int, deadline: float, tiles_list: list,
          device: torch.device):
    from audit.scanner import rng
    from audit.scanner.fused_step import FusedStep

    seeds, logits0, emb, u = problem(images, width, vocab, device)
    keys = rng.keys(seeds, 1_000, device)
    offs = rng.offsets((CANDIDATES, TOKENS, vocab), device)
    n_logits = logits0.numel()
    with torch.no_grad():
        z = (logits0 + rng.gumbel_from_keys(keys, offs, (CANDIDATES, TOKENS, vocab))) / TAU
        want, want_s = z.argmax(-1), z.softmax(-1).reshape(-1, vocab) @ emb
        del z
    ref_ms = timed(reference_step(logits0, emb, u, keys, offs), steps, device)
    print(f"\n## width {width}: {images} images x {CANDIDATES} x {TOKENS} rows x {vocab} = {n_logits / 1e9:.4f}G "
          f"logits a step")
    print(f"{'path':34s} {'ms/step':>8s} {'fwd ms':>7s} {'bwd ms':>7s} {'GB/s@28B':>9s} {'x ref':>6s} "
          f"{'tokens=':>7s} {'s err':>7s}")
    print(f"{'compiled relax + bf16 matmul + Adam':34s} {ref_ms:8.2f} {'':>7s} {'':>7s} "
          f"{MIN_BYTES * n_logits / ref_ms / 1e6:9.0f} {1.0:6.2f} {'':>7s}")
    best, best_ms = None, float("inf")
    for tiles in tiles_list:
        if time.monotonic() > deadline:
            print(f"(time budget spent: {tiles} and the rest not measured)")
            break
        try:
            fused = FusedStep(logits0.clone(), emb, TAU, LR, tiles=tiles)
            s, idx = fused.forward(keys)
            same = float((idx.reshape(want.shape) == want).float().mean())
            s_err = float((s - want_s).abs().max() / want_s.abs().max())
            fwd_ms = timed(lambda fused=fused: fused.forward(keys), steps, device)
            bwd_ms = timed(lambda fused=fused, s=s: fused.backward(u, s, keys), steps, device)
        except Exception as e:  # a tiling this GPU cannot hold (shared memory, registers) is a row, not an end
            print(f"triton {str(tiles):27s} failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}")
            continue
        ms = fwd_ms + bwd_ms
        print(f"triton {str(tiles):27s} {ms:8.2f} {fwd_ms:7.2f} {bwd_ms:7.2f} "
              f"{MIN_BYTES * n_logits / ms / 1e6:9.0f} {ref_ms / ms:6.2f} {same:7.4f} {s_err:7.1e}")
        if ms < best_ms:
            best, best_ms = tiles, ms
        del fused
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return best


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--widths", default="512,768", help="text widths: 512 for ViT-B, 768 for ViT-L")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--budget", type=float, default=80.0, help="seconds for the whole sweep")
    ap.add_argument("--vocab", type=int, default=49_408)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--sweep", type=int, default=None, help="measure only the first N tilings")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench/fused_tiles.py needs a CUDA GPU (or --device cpu, under Triton's interpreter)", file=sys.stderr)
        return 2
    if device.type == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are defined
    from audit.scanner.fused_step import Tiles

    tilings = [Tiles(), Tiles(64, 128, 64, 4, 2), Tiles(32, 128, 256, 8, 2), Tiles(128, 64, 128, 8, 2),
               Tiles(64, 64, 256, 8, 3), Tiles(128, 128, 64, 8, 2), Tiles(32, 64, 512, 8, 2),
               Tiles(16, 128, 64, 4, 2)][: args.sweep]
    name = torch.cuda.get_device_name() if device.type == "cuda" else "the CPU, under Triton's interpreter"
    print(f"# fused step tilings on {name}")
    deadline = time.monotonic() + args.budget
    widths = [int(w) for w in args.widths.split(",")]
    best = sweep(args.images, widths[0], args.vocab, args.steps, deadline, tilings, device)
    for width in widths[1:]:  # the wider models: the default and the first width's winner only
        sweep(args.images, width, args.vocab, args.steps, deadline, list(dict.fromkeys([Tiles(), best or Tiles()])),
              device)
    if best is not None:
        print(f"AUDIT_TRITON_TILES={best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
