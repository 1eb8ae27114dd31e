"""Statistics of relevancy grids, vectorised over many (image, word) pairs."""

from __future__ import annotations

import math

import numpy as np


def cell_box_overlap(grid_h: int, grid_w: int, boxes: np.ndarray) -> np.ndarray:
    """Fraction of each cell covered by each box; boxes [P, 4] as (x0, y0, x1, y1) in [0, 1] of the input.

    Returns [P, grid_h, grid_w]; rows whose box has NaN are NaN.
    """
    ys = np.arange(grid_h + 1) / grid_h
    xs = np.arange(grid_w + 1) / grid_w
    x0, y0, x1, y1 = (boxes[:, i][:, None] for i in range(4))
    ox = np.clip(np.minimum(xs[None, 1:], x1) - np.maximum(xs[None, :-1], x0), 0, None) * grid_w
    oy = np.clip(np.minimum(ys[None, 1:], y1) - np.maximum(ys[None, :-1], y0), 0, None) * grid_h
    return oy[:, :, None] * ox[:, None, :]


def grid_stats(grids: np.ndarray, boxes: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-grid statistics; grids [P, H, W] of non-negative relevance, boxes [P, 4] normalized or NaN.

    A grid with no relevance at all gets NaN statistics (there is no distribution to describe).
    """
    grids = np.asarray(grids, dtype=np.float64)
    p, h, w = grids.shape
    flat = np.clip(grids.reshape(p, h * w), 0, None)  # h * w, not -1: no pairs is a valid batch
    total = flat.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        prob = flat / total
    empty = total[:, 0] <= 0
    n = h * w
    peak = flat.argmax(1)
    peak_y = (peak // w + 0.5) / h
    peak_x = (peak % w + 0.5) / w
    with np.errstate(invalid="ignore", divide="ignore"):
        plogp = np.where(prob > 0, prob * np.log(prob), 0.0)
    entropy = -plogp.sum(1) / math.log(n) if n > 1 else np.zeros(p)
    top = max(1, math.ceil(0.1 * n))
    top10 = np.sort(prob, axis=1)[:, ::-1][:, :top].sum(1)
    cy = (np.arange(h) + 0.5) / h
    cx = (np.arange(w) + 0.5) / w
    centre = ((cy[:, None] >= 0.25) & (cy[:, None] <= 0.75)) & ((cx[None, :] >= 0.25) & (cx[None, :] <= 0.75))
    border = np.zeros((h, w), dtype=bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    centre_mass = prob[:, centre.ravel()].sum(1)
    border_mass = prob[:, border.ravel()].sum(1)
    out = {
        "peak_x": peak_x, "peak_y": peak_y, "entropy": entropy, "top10_mass": top10,
        "centre_mass": centre_mass, "border_mass": border_mass,
    }
    for key in out:
        out[key] = np.where(empty, np.nan, out[key])
    box_mass = np.full(p, np.nan)
    peak_in_box = np.full(p, None, dtype=object)
    if boxes is not None:
        boxes = np.asarray(boxes, dtype=np.float64)
        has = ~np.isnan(boxes).any(1) & ~empty
        if has.any():
            overlap = cell_box_overlap(h, w, boxes[has]).reshape(has.sum(), -1)
            box_mass[has] = (prob[has] * overlap).sum(1)
            bx = boxes[has]
            inside = ((peak_x[has] >= bx[:, 0]) & (peak_x[has] <= bx[:, 2]) &
                      (peak_y[has] >= bx[:, 1]) & (peak_y[has] <= bx[:, 3]))
            peak_in_box[has] = inside
    out["box_mass"] = box_mass
    out["peak_in_box"] = peak_in_box
    return out


def heatmap_columns(image_ids: list[str], kinds: list[str], words: list[str], rel, boxes: np.ndarray,
                    grid: tuple[int, int]) -> dict:
    """The heatmaps table's columns for relevancy pairs (a relevancy.Relevancy; boxes [P, 4] normalised or NaN):
    what the scan and `audit ask --heatmaps` store alike."""
    import pyarrow as pa

    gh, gw = grid
    n = len(image_ids)
    image = rel.image.numpy()
    stats = grid_stats(image, boxes if n else np.zeros((0, 4)))
    return {
        "image_id": image_ids, "kind": kinds, "word": words, "grid_h": [gh] * n, "grid_w": [gw] * n,
        "grid": pa.array(list(image.reshape(n, gh * gw)), type=pa.list_(pa.float32())),
        **{k: pa.array(list(v), type=pa.bool_()) if k == "peak_in_box" else pa.array(v, from_pandas=True)
           for k, v in stats.items()},
        "text_relevance": pa.array([x.numpy() for x in rel.text], type=pa.list_(pa.float32())),
    }
