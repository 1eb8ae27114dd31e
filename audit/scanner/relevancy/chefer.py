"""Chefer et al. (ICCV 2021) gradient-weighted attention relevancy, batched over (image, word) pairs.

For each pair, logit = logit_scale * cos(image, word). Per layer from `start_layer` on, the attention
probabilities A (explicit, see encoders.explicit_block) and dlogit/dA give cam = mean_heads(max(dA * A, 0)),
accumulated as R <- R + cam @ R from R = I. The image map is R[CLS, patches]; the text map is R[EOT, tokens].

Batching: layers before the start layer need no gradient and run once per image (or not at all here: the scan
keeps their output from the pass that computed the embeddings, Towers.image_pass); their output is repeated
for every word of the image and the remaining layers run for all pairs at once. Each pair's logit depends
only on its own rows, so one backward of the summed logits gives every pair's gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from audit.scanner.encoders import Towers
from audit.scanner.relevancy.base import Relevancy


@dataclass(frozen=True)
class Params:
    start_layer: int = -1  # first image layer (-1 = last)
    start_layer_text: int = -1  # first text layer


def _layer(start: int, n: int) -> int:
    if not -n <= start < n:
        raise ValueError(f"start layer {start} out of range for {n} layers")
    return start % n


def _accumulate(probs: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
    p0 = probs[0]
    n, _, length, _ = p0.shape
    r = torch.eye(length, device=p0.device, dtype=torch.float32).expand(n, length, length)
    for a, g in zip(probs, grads, strict=True):
        cam = (g.float() * a.detach().float()).clamp(min=0).mean(dim=1)
        r = r + torch.bmm(cam, r)
    return r


def prefix_layer(towers: Towers, params: Params) -> int:
    return _layer(params.start_layer, len(towers.vision_blocks))


def compute(towers: Towers, images: torch.Tensor, pair_image: torch.Tensor, words: list[str], params: Params,
            chunk: int, hidden: torch.Tensor | None = None) -> Relevancy:
    gh, gw = towers.grid_size
    n_pairs = len(words)
    sv = prefix_layer(towers, params)
    st = _layer(params.start_layer_text, len(towers.text_blocks))
    if hidden is not None:
        prefix = hidden
    else:
        with torch.no_grad():
            prefix = towers.hidden_states(images, sv)
    maps, texts, cosines = [], [], []
    for lo in range(0, n_pairs, chunk):
        hi = min(lo + chunk, n_pairs)
        ids, eot = towers.tokenize(words[lo:hi])
        with torch.enable_grad():
            x = prefix[pair_image[lo:hi].to(prefix.device)].detach().requires_grad_(True)
            img, vprobs = towers.vision_suffix(x, sv)
            txt, tprobs = towers.encode_ids(ids, eot, explicit_from=st)
            cos = (F.normalize(img.float(), dim=-1) * F.normalize(txt.float(), dim=-1)).sum(-1)
            logits = towers.logit_scale * cos
            grads = torch.autograd.grad(logits.sum(), vprobs + tprobs)
        rv = _accumulate(vprobs, grads[: len(vprobs)])
        maps.append(rv[:, 0, 1:].reshape(-1, gh, gw).float().cpu())
        rt = _accumulate(tprobs, grads[len(vprobs):])
        rows = rt[torch.arange(hi - lo, device=rt.device), eot].float().cpu()
        texts.extend(rows[i, 1:int(e)] for i, e in enumerate(eot.tolist()))
        cosines.append(cos.detach().float().cpu())
    return Relevancy(torch.cat(maps), texts, torch.cat(cosines))
