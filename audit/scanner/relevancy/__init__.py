"""Relevancy methods behind one interface: a heatmap over the image patches (and a relevance per text token)
for each (image, word) pair.

A method is a module here with a frozen dataclass `Params` (its own settings, each with a default) and
`compute(towers, images, pair_image, words, params, chunk, hidden) -> Relevancy`, listed in METHODS with the scan
options that fill its parameters. A method that runs the image tower's first blocks without gradient names where
they end in `prefix_layer(towers, params)`; the scanner then hands it those hidden states (`hidden`), kept from the
pass that computed the embeddings, instead of a second forward through them. The scanner only ever calls `relevancy(...)`, so a new method needs a module and a
line below. This module stays free of torch: option parsing reads METHODS.

- chefer: Chefer et al. (ICCV 2021), gradient-weighted attention (chefer.py);
- occlusion: blank windows of patches and measure the fall of the score (occlusion.py);
- legrad: Bousselham et al. (2024), the rectified gradient of each last layer's own score with respect to its
  attention maps (legrad.py).
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass

from audit.scanner.relevancy.base import Relevancy


@dataclass(frozen=True)
class Method:
    module: str
    options: dict[str, str]  # the method's parameter -> the ScanOptions field that sets it


METHODS: dict[str, Method] = {
    "chefer": Method("audit.scanner.relevancy.chefer",
                     {"start_layer": "start_layer", "start_layer_text": "start_layer_text"}),
    "occlusion": Method("audit.scanner.relevancy.occlusion", {"window": "occlusion_window"}),
    "legrad": Method("audit.scanner.relevancy.legrad", {"layers": "legrad_layers"}),
}


def method_options(method: str, opts) -> dict:
    """The method's parameters as a scan's options (a ScanOptions, model defaults filled in) set them."""
    return {param: getattr(opts, field) for param, field in METHODS[method].options.items()}


def check_method(towers, method: str, params: dict) -> None:
    """Refuse, in one line and before any image is read, parameters the loaded model cannot take (a method's
    optional `check(towers, params)`)."""
    module = importlib.import_module(METHODS[method].module)
    check = getattr(module, "check", None)
    if check is not None:
        check(towers, module.Params(**params))


def _module(method: str, params: dict):
    if method not in METHODS:
        raise ValueError(f"unknown relevancy method {method!r}; choose one of {', '.join(METHODS)}")
    module = importlib.import_module(METHODS[method].module)
    known = {f.name for f in dataclasses.fields(module.Params)}
    if set(params) - known:
        raise TypeError(f"relevancy method {method} takes {', '.join(sorted(known))}, not "
                        f"{', '.join(sorted(set(params) - known))}")
    return module


def prefix_layer(towers, method: str, params: dict) -> int | None:
    """The image block whose input hidden states `relevancy(..., hidden=)` takes for this method, or None (the
    method reads the images themselves)."""
    module = _module(method, params)
    layer = getattr(module, "prefix_layer", None)
    return None if layer is None else layer(towers, module.Params(**params))


def relevancy(towers, images, pair_image, words: list[str], method: str = "chefer", chunk: int = 256,
              hidden=None, **params) -> Relevancy:
    """Relevancy maps for pairs (images[pair_image[p]], words[p]); images are preprocessed [B, 3, H, W].
    `params` are the method's own (chefer: start_layer, start_layer_text; occlusion: window; legrad: layers); the rest keep
    their defaults. `hidden`: the images' hidden states entering block prefix_layer(...) as Towers.image_pass keeps
    them (computed here when not given; the same bits either way)."""
    module = _module(method, params)
    if not words:
        import torch

        gh, gw = towers.grid_size
        return Relevancy(torch.zeros(0, gh, gw), [], torch.zeros(0))
    return module.compute(towers, images, pair_image, words, module.Params(**params), chunk, hidden)


__all__ = ["METHODS", "Method", "Relevancy", "check_method", "method_options", "prefix_layer", "relevancy"]
