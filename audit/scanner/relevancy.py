"""Chefer et al. (ICCV 2021) gradient-weighted attention relevancy, batched over (image, word) pairs.

For each pair, logit = logit_scale * cos(image, word). Per layer from `start_layer` on, the attention
probabilities A (explicit, see encoders.explicit_block) and dlogit/dA give cam = mean_heads(max(dA * A, 0)),
accumulated as R <- R + cam @ R from R = I. The image map is R[CLS, patches]; the text map is R[EOT, tokens].

Batching: layers before the start layer need no gradient and run once per image; their output is repeated
for every word of the image and the remaining layers run for all pairs at once. Each pair's logit depends
only on its own rows, so one backward of the summed logits gives every pair's gradients.

`method="occlusion"` measures instead of differentiates (Zeiler & Fergus, 2014): the image is re-encoded with
each window of `window` x `window` patches set to the preprocessing mean, and a patch's relevance is the mean
fall of logit(image, word) over the windows that cover it (clamped at 0). Gradients are local: on the demo
CLIP, a shape word's gradient-weighted attention credits both objects of a scene about equally (peak on the
right object in 59% of maps), yet blanking the named object lowers the word's score more than blanking the
other in 98.5% of them, and occlusion maps (4 x 4 windows) peak on it in 97%. It costs
(grid + window - 1)^2 image forwards per image and no backward; every word of an image shares them. Text relevance is then the logit's fall when
each of the word's tokens is left out (not clamped: a token can hurt).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from audit.scanner.encoders import Towers

METHODS = ("chefer", "occlusion")


@dataclass
class Relevancy:
    image: torch.Tensor  # [P, grid_h, grid_w] float32, cpu
    text: list[torch.Tensor]  # per pair: relevance of the tokens between SOT and EOT, float32, cpu
    cosine: torch.Tensor  # [P] cosine(image, word), float32, cpu


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


def relevancy(towers: Towers, images: torch.Tensor, pair_image: torch.Tensor, words: list[str],
              start_layer: int = -1, start_layer_text: int = -1, chunk: int = 256, method: str = "chefer",
              window: int = 3) -> Relevancy:
    """Relevancy maps for pairs (images[pair_image[p]], words[p]); images are preprocessed [B, 3, H, W].
    The start layers apply to method "chefer", `window` (in patches) to method "occlusion"."""
    n_pairs = len(words)
    gh, gw = towers.grid_size
    if method not in METHODS:
        raise ValueError(f"unknown relevancy method {method!r}; choose one of {', '.join(METHODS)}")
    if n_pairs == 0:
        return Relevancy(torch.zeros(0, gh, gw), [], torch.zeros(0))
    if method == "occlusion":
        return _occlusion(towers, images, pair_image, words, window, chunk)
    sv = _layer(start_layer, len(towers.vision_blocks))
    st = _layer(start_layer_text, len(towers.text_blocks))
    with torch.no_grad():
        prefix = towers.vision_prefix(images, sv)
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


def _windows(gh: int, gw: int, window: int) -> list[tuple[int, int, int, int]]:
    """Every window x window block of patches that overlaps the grid, clipped to it: each patch lies in
    exactly window^2 of them, border patches included."""
    if window < 1:
        raise ValueError(f"occlusion window must be at least 1 patch, not {window}")
    return [(max(y, 0), min(y + window, gh), max(x, 0), min(x + window, gw))
            for y in range(1 - window, gh) for x in range(1 - window, gw)]


def _occlusion(towers: Towers, images: torch.Tensor, pair_image: torch.Tensor, words: list[str], window: int,
               chunk: int) -> Relevancy:
    gh, gw = towers.grid_size
    b, _, h, w = images.shape
    ph, pw = h // gh, w // gw
    wins = _windows(gh, gw, window)
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
            occluded[mine] = torch.einsum("pkd,pd->pk", feats[pair_image[mine] - lo], txt[mine])
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
