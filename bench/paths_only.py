"""The ascent before and after the CUDA kernel work on one model and batch, without the rest of the benchmark.

    python bench/paths_only.py [MODEL [BATCH]]      # default ViT-B-32 256; needs a GPU
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from scan_throughput import compare_paths  # noqa: E402

from audit.scanner.ascent import AscentConfig  # noqa: E402

if __name__ == "__main__":
    model = sys.argv[1] if len(sys.argv) > 1 else "ViT-B-32"
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    compare_paths(model, torch.device("cuda"), batch, AscentConfig())
