"""Relevancy methods behind one interface: a heatmap over the image patches (and a relevance per text token)
for each (image, word) pair.

A method is a module here with `compute(towers, images, pair_image, words, params, chunk) -> Relevancy`, listed
in METHODS. The scanner only ever calls `relevancy(...)`, so a new method needs a module and a line below.
This module stays free of torch: option parsing reads METHODS.

- chefer: Chefer et al. (ICCV 2021), gradient-weighted attention (chefer.py);
- occlusion: blank windows of patches and measure the fall of the score (occlusion.py).
"""

from __future__ import annotations

import importlib

from audit.scanner.relevancy.base import Params, Relevancy

METHODS: dict[str, str] = {
    "chefer": "audit.scanner.relevancy.chefer",
    "occlusion": "audit.scanner.relevancy.occlusion",
}


def relevancy(towers, images, pair_image, words: list[str], start_layer: int = -1, start_layer_text: int = -1,
              chunk: int = 256, method: str = "chefer", window: int = 3) -> Relevancy:
    """Relevancy maps for pairs (images[pair_image[p]], words[p]); images are preprocessed [B, 3, H, W].
    The start layers apply to method "chefer", `window` (in patches) to method "occlusion"."""
    if method not in METHODS:
        raise ValueError(f"unknown relevancy method {method!r}; choose one of {', '.join(METHODS)}")
    if not words:
        import torch

        gh, gw = towers.grid_size
        return Relevancy(torch.zeros(0, gh, gw), [], torch.zeros(0))
    params = Params(start_layer=start_layer, start_layer_text=start_layer_text, window=window)
    return importlib.import_module(METHODS[method]).compute(towers, images, pair_image, words, params, chunk)


__all__ = ["METHODS", "Params", "Relevancy", "relevancy"]
