#!/usr/bin/env bash
# The GPU checks of the throughput issues as one command for a machine with a GPU and PyTorch but no network
# (run from the repository root; planned to finish inside 9 minutes on one H100/H200).
#
# Packages that such a machine usually lacks travel as wheels in .whl/ (git-ignored). Fetch them here,
# for the machine's Python (3.12 on this project's device machines):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 kornia==0.9.0 kornia_rs==0.2.0 duckdb==2.0.1
# (typer, jinja2, pandas, pyarrow, scipy, filelock, triton and pytest are usually in the device image; check its
# package list first)
#
# What it prints, in order:
#  1. the GPU;
#  2. the fused Triton step against the eager one, compiled on this GPU (tests/fused_check.py cuda: the noise
#     bits, four steps of logits and Adam moments, a whole ascent), as one JSON line;
#  3. bench/fused_tiles.py: the fused step alone by tiling against the compiled step, ms per step and bandwidth,
#     within 80 s; its fastest tiling is exported as AUDIT_TRITON_TILES for the rest;
#  4. bench/scan_throughput.py on ViT-B-32 and ViT-L-14: ascent and relevancy per batch size, the table of
#     ascent paths (eager, compiled, triton) with images/s, peak memory and mean best cosine, each kernel's
#     step time at batch 2 against batch 256 (the most CUDA graphs could save), the full scan at auto batch, the
#     naive baseline on 8 images with the objective's paired difference, the ratio, and ViT-B-32's full scan
#     again with AUDIT_KERNEL=triton against the default one; each full scan splits its time into waiting for
#     images (the loader not keeping up), the model and writing.
set -euo pipefail
out=${OUT:-bench-out}
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
timeout 60 python3 tests/fused_check.py cuda 2>&1 | tail -1 | tee "$out/fused_check.txt" || echo "fused_check: FAILED"
timeout 110 python3 bench/fused_tiles.py 2>&1 | tee "$out/fused_tiles.txt" || echo "fused_tiles: FAILED"
tiles=$(sed -n 's/^AUDIT_TRITON_TILES=//p' "$out/fused_tiles.txt" | tail -1)
[ -n "$tiles" ] && export AUDIT_TRITON_TILES=$tiles && echo "AUDIT_TRITON_TILES=$tiles for the scans"
timeout 340 python3 bench/scan_throughput.py --models ViT-B-32,ViT-L-14 --batch-sizes 128,256 --naive-images 8 \
  --scan-images 256 "$@" 2>&1 | tee "$out/bench.txt"
