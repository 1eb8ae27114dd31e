"""LeGrad (Bousselham et al., 2024): the gradient of a word's score with respect to the attention maps of the
last layers, where each layer gets its own score.

As the authors' code computes it by default, for each of the last `layers` blocks l (2):
- the layer's image vector is the mean of all its output tokens (the class token included), through the image
  tower's final norm and projection, unit-normalised; the score s_l is its cosine with the word's unit-normalised
  text embedding;
- the map is ds_l/dA_l, A_l the block's attention probabilities (after the softmax), rectified (the gradient
  alone, not multiplied by A), averaged over heads and over every query row (the class token's included), with
  the class token's key column dropped;
and the maps of the layers are summed, then each pair's grid is scaled to 0-1 (min-max). The authors upsample
each layer's map to pixels before summing; sums and bilinear upsampling commute, so the stored grid is theirs
before upsampling, scaled on the grid.

Batching as in chefer.py: the blocks before the first explained one run once per image without gradient; the
explained blocks run for every pair at once, and each layer's backward covers every pair (a pair's score depends
only on its own rows). One backward per explained layer, because each layer's map is the gradient of its own
score only.

LeGrad explains the image; a word's text_relevance is left empty. Supported: every model audit can explain
(open_clip VisionTransformers pooled at the class token, encoders.check_supported), since the recipe needs only
the blocks' attention probabilities, the final norm and the projection.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from audit.errors import AuditError
from audit.scanner.encoders import Towers, explicit_block
from audit.scanner.relevancy.base import Relevancy


@dataclass(frozen=True)
class Params:
    layers: int = 2  # the last `layers` image blocks (the authors' default, 2)


def check(towers: Towers, params: Params) -> None:
    n_blocks = len(towers.vision_blocks)
    if not 1 <= params.layers <= n_blocks:
        raise AuditError(f"--legrad-layers {params.layers}: this model's image tower has {n_blocks} layers; "
                         f"give 1 to {n_blocks} (its authors' default: 2)")


def layer_vector(towers: Towers, x: torch.Tensor) -> torch.Tensor:
    """A block's output [N, L, D] as one image vector per row: the mean of every token, through the final norm
    and the projection, unit-normalised."""
    v = towers.visual.ln_post(x.mean(dim=1))
    if towers.visual.proj is not None:
        v = v @ towers.visual.proj
    return F.normalize(v.float(), dim=-1)


def scale(grids: torch.Tensor) -> torch.Tensor:
    """Each grid [P, h, w] scaled to 0-1 by its own minimum and maximum; a flat grid becomes zeros."""
    flat = grids.flatten(1)
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    span = high - low
    return ((flat - low) / torch.where(span > 0, span, torch.ones_like(span))).reshape(grids.shape)


def prefix_layer(towers: Towers, params: Params) -> int:
    n_blocks = len(towers.vision_blocks)
    if not 1 <= params.layers <= n_blocks:
        raise ValueError(f"LeGrad explains 1 to {n_blocks} layers of this model, not {params.layers}")
    return n_blocks - params.layers


def compute(towers: Towers, images: torch.Tensor, pair_image: torch.Tensor, words: list[str], params: Params,
            chunk: int, hidden: torch.Tensor | None = None) -> Relevancy:
    gh, gw = towers.grid_size
    first = prefix_layer(towers, params)
    with torch.no_grad():
        prefix = hidden if hidden is not None else towers.hidden_states(images, first)
        ids, eot = towers.tokenize(words)
        text = F.normalize(towers.encode_ids(ids, eot)[0].float(), dim=-1)
    maps, cosines = [], []
    for lo in range(0, len(words), chunk):
        hi = min(lo + chunk, len(words))
        words_text = text[lo:hi]
        with torch.enable_grad():
            # The weights need no gradient; the hidden states do, so that the attention has one.
            x = prefix[pair_image[lo:hi].to(prefix.device)].detach().requires_grad_(True)
            probs, scores = [], []
            for blk in towers.vision_blocks[first:]:
                x, p = explicit_block(blk, x)
                probs.append(p)
                scores.append((layer_vector(towers, x) * words_text).sum(-1))
            grid = torch.zeros(hi - lo, gh * gw, device=x.device)
            for k, (p, s) in enumerate(zip(probs, scores, strict=True)):
                (g,) = torch.autograd.grad(s.sum(), p, retain_graph=k < len(probs) - 1)
                grid += g.float().clamp(min=0).mean(dim=(1, 2))[:, 1:]
        with torch.no_grad():
            cosines.append((F.normalize(towers.pool(x).float(), dim=-1) * words_text).sum(-1).cpu())
        maps.append(scale(grid.reshape(-1, gh, gw)).cpu())
    return Relevancy(torch.cat(maps), [torch.zeros(0) for _ in words], torch.cat(cosines))
