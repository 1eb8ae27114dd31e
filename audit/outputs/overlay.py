"""Drawing a relevancy grid over an image: a perceptual colour map, blended, upsampled smoothly."""

from __future__ import annotations

import numpy as np

_ANCHORS = np.array([(68, 1, 84), (72, 40, 120), (62, 74, 137), (49, 104, 142), (38, 130, 142), (31, 158, 137),
                     (53, 183, 121), (109, 205, 89), (180, 222, 44), (253, 231, 37)], dtype=np.float64)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB."""
    v = np.clip(np.nan_to_num(values), 0, 1) * (len(_ANCHORS) - 1)
    lo = np.floor(v).astype(int)
    hi = np.minimum(lo + 1, len(_ANCHORS) - 1)
    t = (v - lo)[..., None]
    return np.round(_ANCHORS[lo] * (1 - t) + _ANCHORS[hi] * t).astype(np.uint8)


def overlay(image, grid: np.ndarray, alpha: float = 0.55):
    """The relevancy grid upsampled smoothly to the image's size, colour-mapped and blended over it.

    `image` must already show the model's input frame (see decode.fit)."""
    from PIL import Image

    g = np.asarray(grid, dtype=np.float32)
    g = g - g.min()
    if g.max() > 0:
        g = g / g.max()
    up = np.asarray(Image.fromarray(g, mode="F").resize(image.size, Image.Resampling.BICUBIC))
    heat = colormap(up)
    base = np.asarray(image.convert("RGB"), dtype=np.float64)
    return Image.fromarray(np.round(base * (1 - alpha) + heat * alpha).astype(np.uint8))
