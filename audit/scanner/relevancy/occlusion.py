"""Occlusion relevancy (Zeiler & Fergus, 2014): measure instead of differentiate.

The image is re-encoded with each window of `window` x `window` patches set to the preprocessing mean, and a
patch's relevance is the mean fall of logit(image, word) over the windows that cover it (clamped at 0).
Gradients are local: on the demo CLIP, a shape word's gradient-weighted attention credits both objects of a
scene about equally (peak on the right object in 59% of maps), yet blanking the named object lowers the word's
score more than blanking the other in 98.5% of them, and occlusion maps (4 x 4 windows) peak on it in 97%.
It costs (grid + window - 1)^2 image forwards per image and no backward; every word of an image shares them.
Text relevance is then the logit's fall when each of the word's tokens is left out (not clamped: a token can
hurt).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from audit.scanner.encoders import Towers
from audit.scanner.relevancy.base import Relevancy


@dataclass(frozen=True)
class Params:
    window: int = 3  # side of the blanked window, in patches


def windows(gh: int, gw: int, window: int) -> list[tuple[int, int, int, int]]:
    """Every window x window block of patches that overlaps the grid, clipped to it: each patch lies in
    exactly window^2 of them, border patches included."""
    if window < 1:
        raise ValueError(f"occlusion window must be at least 1 patch, not {window}")
    return [(max(y, 0), min(y + window, gh), max(x, 0), min(x + window, gw))
            for y in range(1 - window, gh) for x in range(1 - window, gw)]


def compute(towers: Towers, images: torch.Tensor, pair_image: torch.Tensor, words: list[str], params: Params,
            chunk: int, hidden: None = None) -> Relevancy:
    window = params.window
    gh, gw = towers.grid_size
    b, _, h, w = images.shape
    ph, pw = h // gh, w // gw
    wins = windows(gh, gw, window)
    cover = torch.zeros(len(wins), gh, gw, device=images.device)
    keep = torch.ones(len(wins), 1, h, w, device=images.device, dtype=images.dtype)
    for k, (y0, y1, x0, x1) in enumerate(wins):
        cover[k, y0:y1, x0:x1] = 1.0 / window**2
        keep[k, :, y0 * ph:y1 * ph, x0 * pw:x1 * pw] = 0  # 0 after normalization: the preprocessing mean
    pair_image = pair_image.to(images.device)
    ids, eot = towers.tokenize(words)
    with torch.no_grad():
        txt = F.normalize(towers.encode_ids(ids, eot)[0].float(), dim=-1)
        full = F.normalize(towers.encode_images(images).float(), dim=-1)
        cos = (full[pair_image] * txt).sum(-1)
        occluded = torch.empty(len(words), len(wins), device=images.device)  # cos with each occluded view
        per_group = max(1, chunk // len(wins))  # images whose views make one forward of about `chunk`
        for lo in range(0, b, per_group):
            group = images[lo:lo + per_group]
            views = (group[:, None] * keep[None]).flatten(0, 1)
            feats = F.normalize(towers.encode_images(views).float(), dim=-1).view(len(group), len(wins), -1)
            mine = ((pair_image >= lo) & (pair_image < lo + len(group))).nonzero().squeeze(1)
            occluded[mine] = torch.einsum("pkd,pd->pk", feats[pair_image[mine] - lo], txt[mine]).float()
        fall = towers.logit_scale * (cos[:, None] - occluded)
        maps = (fall @ cover.flatten(1)).clamp(min=0).view(-1, gh, gw)
        texts = _token_deletion(towers, ids, eot, full[pair_image], cos)
    return Relevancy(maps.float().cpu(), texts, cos.float().cpu())


def _token_deletion(towers: Towers, ids: torch.Tensor, eot: torch.Tensor, image: torch.Tensor,
                    cos: torch.Tensor) -> list[torch.Tensor]:
    """Per pair, the fall of logit(image, word) with each of the word's tokens (ids [P, L], eot [P]) left out;
    image [P, D] is each pair's normalized image feature."""
    lengths = (eot - 1).tolist()
    rows, owner = [], []
    for p, row in enumerate(ids.tolist()):
        content = row[1:lengths[p] + 1]
        rows += [content[:k] + content[k + 1:] for k in range(len(content))]
        owner += [p] * len(content)
    if not rows:
        return [torch.zeros(0) for _ in lengths]
    dropped = F.normalize(towers.encode_ids(*towers.pack(rows))[0].float(), dim=-1)
    owner_t = torch.tensor(owner, device=image.device)
    fall = (towers.logit_scale * (cos[owner_t] - (dropped * image[owner_t]).sum(-1))).float().cpu()
    return list(fall.split(lengths))
