#!/usr/bin/env bash
# The GPU checks of issue 7 as one command for a machine with a GPU and PyTorch but no network
# (run from the repository root; three models took 542 s on an H200, before the ascent step was compiled).
#
# Packages that such a machine usually lacks travel as wheels in .whl/ (git-ignored). Fetch them here,
# for the machine's Python (3.12 on this project's device machines):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 kornia==0.9.0 kornia_rs==0.2.0 duckdb==2.0.1
# (typer, jinja2, pandas, pyarrow and pytest are already in the device image)
set -euo pipefail
out=${OUT:-bench-out}
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
# The CPU test suite runs in CI; the compiled and fused CUDA paths are checked against the eager ones inside
# the benchmark ("paths:" lines), on the GPU where they run.
timeout 540 python3 bench/scan_throughput.py "$@" 2>&1 | tee "$out/bench.txt"
