"""Batched token ascent: the words CLIP associates with each image (the "CLIP opinion").

For every image, `candidates` sequences of `tokens_per_seq` free tokens are optimised by Adam through a hard
straight-through Gumbel-softmax over the whole vocabulary, to maximise the mean cosine between the text and
randomly affine-augmented views of the image. All images of a batch are optimised at once; each image's
randomness comes from its own seed (audit.scanner.rng), and its loss term touches only its own parameters, so its
words do not depend on the rest of the batch. After the last step, a few rounds of exact token swaps (`refine`)
lift the kept sequences out of the spots where the relaxed search stalls.
"""

from __future__ import annotations

import os
import unicodedata
import warnings
from dataclasses import dataclass

import kornia.geometry.transform as KT
import torch
import torch.nn.functional as F

from audit.errors import AuditError
from audit.scanner import rng
from audit.scanner.encoders import Towers
from audit.words import clean_words

# Disjoint ranges of rng stream numbers, so no two uses of an image's seed share numbers.
_INIT_STREAM = 1  # normal() takes uniform streams 2 and 3
_NOISE_STREAM = 1_000  # + step
_VIEW_STREAM = 2_000_000  # + view draw (0 = the folded target; step + 1 when redrawn each step)


@dataclass(frozen=True)
class AscentConfig:
    tokens_per_seq: int = 4
    candidates: int = 16
    steps: int = 200
    lr: float = 5.0
    tau: float = 1000.0
    views: int = 64
    resample_views: bool = False
    prompt: str = ""
    keep: int = 5
    refine_rounds: int = 3
    refine_top: int = 64
    refine_words: bool = True  # swaps only to real whole-word tokens (vocabulary.word_tokens), not word pieces
    degrees: float = 10.0
    translate: float = 0.1
    p_affine: float = 0.8


@dataclass
class AscentResult:
    seqs: torch.Tensor  # [B, keep, K] token ids, -1 where fewer than `keep` distinct sequences were seen
    scores: torch.Tensor  # [B, keep] mean view cosine, -inf where empty
    trace: torch.Tensor  # [steps, B, candidates] each step's hard-token cosines: the search's progress


def augment(images: torch.Tensor, seeds: torch.Tensor, stream: int, cfg: AscentConfig) -> torch.Tensor:
    """`cfg.views` random affine views of each image (rotation, translation, applied with p), [B*V, C, H, W].

    The same parameters as kornia's RandomAffine(degrees, translate, p), drawn from each image's own stream.
    """
    b, c, h, w = images.shape
    v = cfg.views
    u = rng.uniform(seeds, stream, (v, 4), device=images.device).reshape(b * v, 4)
    apply = (u[:, 3] < cfg.p_affine).to(images.dtype)
    angle = (u[:, 0] * 2 - 1) * cfg.degrees * apply
    shift = torch.stack([(u[:, 1] * 2 - 1) * cfg.translate * w, (u[:, 2] * 2 - 1) * cfg.translate * h], 1)
    shift = shift * apply[:, None]
    center = images.new_tensor([(w - 1) / 2, (h - 1) / 2]).expand(b * v, 2)
    scale = images.new_ones(b * v, 2)
    matrix = KT.get_affine_matrix2d(shift.float(), center.float(), scale.float(), angle.float())
    flat = images[:, None].expand(b, v, c, h, w).reshape(b * v, c, h, w)
    return KT.warp_affine(flat, matrix[:, :2].to(flat.dtype), (h, w), mode="bilinear", padding_mode="zeros",
                          align_corners=True)


@torch.no_grad()
def view_target(towers: Towers, images: torch.Tensor, seeds: torch.Tensor, stream: int, cfg: AscentConfig,
                chunk: int = 256) -> torch.Tensor:
    """Mean of the normalized embeddings of the augmented views, [B, D] (deliberately not re-normalized).

    mean_v <e_v/|e_v|, t> = <mean_v e_v/|e_v|, t>: one target vector per image replaces all views in the
    objective, exactly.
    """
    b = images.shape[0]
    per_chunk = max(1, chunk // max(cfg.views, 1))
    out = []
    for i in range(0, b, per_chunk):
        views = augment(images[i:i + per_chunk], seeds[i:i + per_chunk], stream, cfg)
        feats = F.normalize(towers.encode_images(views).float(), dim=-1)
        out.append(feats.reshape(-1, cfg.views, feats.shape[-1]).mean(1))
    return torch.cat(out)


def merge_best(best_scores, best_seqs, new_scores, new_seqs, keep: int):
    """Keep the `keep` highest-scoring distinct sequences per image; ties keep the earlier one."""
    scores = torch.cat([best_scores, new_scores.float()], 1)
    seqs = torch.cat([best_seqs, new_seqs], 1)
    scores, order = scores.sort(dim=1, descending=True, stable=True)
    seqs = seqs.gather(1, order[:, :, None].expand_as(seqs))
    n = scores.shape[1]
    same = (seqs[:, :, None, :] == seqs[:, None, :, :]).all(-1)
    earlier = torch.ones(n, n, dtype=torch.bool, device=scores.device).tril(-1)
    dup = (same & earlier).any(-1)
    scores = scores.masked_fill(dup, float("-inf"))
    scores, order = scores.sort(dim=1, descending=True, stable=True)
    seqs = seqs.gather(1, order[:, :, None].expand_as(seqs))
    return scores[:, :keep].contiguous(), seqs[:, :keep].contiguous()


class _Sequences:
    """Embeds [SOT, prompt, k learned tokens, EOT] and scores them against per-image targets."""

    def __init__(self, towers: Towers, cfg: AscentConfig):
        self.towers = towers
        emb = towers.token_embedding.weight
        prompt_ids = towers.tokenizer.encode(cfg.prompt) if cfg.prompt else []
        if len(prompt_ids) + cfg.tokens_per_seq + 2 > towers.context_length:
            raise ValueError("prompt plus learned tokens exceed the text context length")
        ids = torch.tensor([towers.sot_id, *prompt_ids], device=emb.device)
        self.head = emb[ids]  # [P+1, D]
        self.tail = emb[torch.tensor([towers.eot_id], device=emb.device)]
        self.length = len(prompt_ids) + 1 + cfg.tokens_per_seq + 1

    def cosine(self, learned: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """learned [B, C, K, D] -> cosine [B, C] with target [B, D]."""
        b, c, k, d = learned.shape
        x = torch.cat([self.head.expand(b * c, -1, -1).to(learned.dtype), learned.reshape(b * c, k, d),
                       self.tail.expand(b * c, -1, -1).to(learned.dtype)], 1)
        eot = torch.full((b * c,), self.length - 1, device=x.device, dtype=torch.long)
        feats, _ = self.towers.text_from_embeddings(x, eot)
        feats = F.normalize(feats.float(), dim=-1).reshape(b, c, -1)
        return (feats * target[:, None, :]).sum(-1)


def relax(logits: torch.Tensor, keys: torch.Tensor, offs: torch.Tensor, tau: float
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """One Gumbel-softmax draw: soft token weights [B, C, K, V] and the hard tokens [B, C, K].

    The step's only passes over vocabulary-sized tensors besides Adam: on CUDA they are compiled into one
    fused kernel (`_Relax`), which reads the logits once instead of some twenty times.
    """
    # In place on the fresh noise: the same bits as (logits + g) / tau, two vocabulary-sized temporaries fewer.
    z = rng.gumbel_from_keys(keys, offs, tuple(logits.shape[1:])).add_(logits).div_(tau)
    return z.softmax(-1), z.detach().argmax(-1)


KERNELS = ("triton", "compile", "eager")


def resolve_kernel(kernel: str, device: torch.device) -> str:
    """The implementation of the ascent step a scan runs (ScanOptions.kernel): "auto" is "compile" on CUDA and
    "eager" elsewhere ("compile" named on a CPU compiles there too: it needs a C++ compiler). "triton"
    (fused_step.py) runs on CUDA, or on a CPU under Triton's interpreter (TRITON_INTERPRET=1: tests, slowly). It becomes the CUDA default once a GPU run shows it faster with the
    same objective (bench/gpu.sh)."""
    asked = kernel.strip().lower()
    if asked == "auto":
        return "compile" if device.type == "cuda" else "eager"
    if asked not in KERNELS:
        raise AuditError(f"--kernel must be auto or one of {', '.join(KERNELS)}, not {kernel!r}")
    if asked == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise AuditError("--kernel triton runs on a CUDA device (or on the CPU under TRITON_INTERPRET=1, for "
                         "tests); use --kernel eager here")
    return asked


class _Relax:
    """`relax`, compiled when the kernel is "compile"; eager where compiling is off or fails. One per
    ascent call: a failed compile falls back for that call only, and nothing is kept between scans."""

    def __init__(self, device: torch.device, kernel: str):
        # Asked for by name, "compile" compiles on a CPU too (inductor's C++ backend; a compiler must be at hand,
        # else the step falls back): 3.3x faster there (58 -> 18 ms a step, bench in the session note of issue 43).
        self.fn = torch.compile(relax, dynamic=None) if kernel == "compile" else relax

    def __call__(self, logits, keys, offs, tau):
        try:
            return self.fn(logits, keys, offs, tau)
        except Exception as exc:  # no Triton, unsupported GPU, compiler bug: the eager path is exact
            if self.fn is relax:
                raise
            warnings.warn(f"torch.compile of the ascent step failed ({type(exc).__name__}: {exc}); "
                          "running uncompiled (pass --kernel eager to skip the attempt)", stacklevel=2)
            self.fn = relax
            return relax(logits, keys, offs, tau)


def make_optimizer(logits: torch.Tensor, lr: float) -> torch.optim.Optimizer:
    # The fused Adam updates parameter and both moments in one pass over the vocabulary-sized tensors, on CUDA
    # and on a CPU (5.6x faster than the per-op update there: 48 against 272 ms a step for the recall test's
    # 63M logits; its rounding differs from the plain update by an ulp, test_ascent.py).
    return torch.optim.Adam([logits], lr=lr, fused=logits.device.type in ("cuda", "cpu"))


def refine(seqs: _Sequences, emb: torch.Tensor, target: torch.Tensor, scores: torch.Tensor,
           tokens: torch.Tensor, cfg: AscentConfig, max_sequences: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Token swaps on the kept sequences [B, S, K], each kept where it raises that sequence's cosine.

    The relaxed ascent settles in places where one token swap would score higher: on the demo model its best
    sequences hold "thing" where the colour would add 0.02-0.05 cosine. Each round ranks every token for every
    position by the first-order gain (e_v - e_current) . d cos / d e_current, scores the `refine_top` best
    swaps of every position exactly, and moves each sequence to its best swap if that is better. Sequences
    stay in their slots, so the kept ones stay as diverse as the ascent left them. Deterministic and per
    image, like the rest of the ascent.
    """
    b, n, k = tokens.shape
    top = cfg.refine_top
    barred = None
    if cfg.refine_words:
        from audit.scanner.vocabulary import word_tokens

        barred = torch.ones(emb.shape[0], dtype=torch.bool, device=emb.device)
        barred[torch.tensor([i for i, _ in word_tokens(seqs.towers.tokenizer)], device=emb.device)] = False
        top = min(top, int((~barred).sum()))  # a short list longer than the allowed tokens would take barred ones
    pos = torch.arange(k, device=tokens.device).repeat_interleave(top)  # [K*T]: the position each swap changes
    per_chunk = max(1, max_sequences // (n * k * top))
    for _ in range(cfg.refine_rounds):
        live = torch.isfinite(scores)
        ids = tokens.clamp(min=0)
        x = emb[ids].detach().requires_grad_(True)
        grad, = torch.autograd.grad(seqs.cosine(x, target).sum(), x)  # [B, S, K, D]
        with torch.no_grad():
            # The gain's other term, -e_current . grad, is the same for every token of a position: ranking
            # by e_v . grad alone picks the same swaps.
            gain = (grad @ emb.T.to(grad.dtype)).float()
            if barred is not None:
                gain = gain.masked_fill(barred, float("-inf"))
            swaps = gain.topk(top, dim=-1).indices.reshape(b, n, k * top)
            cand = ids[:, :, None, :].repeat(1, 1, k * top, 1)  # [B, S, K*T, K]
            cand.scatter_(3, pos[None, None, :, None].expand(b, n, -1, 1), swaps[..., None])
            cos = torch.cat([seqs.cosine(emb[cand[i:i + per_chunk].reshape(-1, n * k * top, k)],
                                         target[i:i + per_chunk]).reshape(-1, n, k * top)
                             for i in range(0, b, per_chunk)])
            best, which = cos.max(-1)  # [B, S]
            better = live & (best > scores)
            if not bool(better.any()):
                break
            scores = torch.where(better, best, scores)
            picked = cand.gather(2, which[:, :, None, None].expand(b, n, 1, k))[:, :, 0]
            tokens = torch.where(better[..., None], picked, tokens)
    return scores, tokens


def run_ascent(towers: Towers, images: torch.Tensor, seeds: torch.Tensor, cfg: AscentConfig,
               optimizer=make_optimizer, kernel: str = "eager", tiles: str | None = None) -> AscentResult:
    """Optimise token sequences for a batch of preprocessed images [B, 3, H, W]; seeds [B] per image.
    `optimizer(logits, lr)` builds the optimiser (benchmarks compare others against the default); `kernel`
    (resolve_kernel) runs the step, with the Triton `tiles` ("rows,vocab,dim[,warps[,stages]]"; None: the
    default) when it is "triton"."""
    b = images.shape[0]
    dev = images.device
    k, c, vocab = cfg.tokens_per_seq, cfg.candidates, towers.vocab_size
    emb = towers.token_embedding.weight
    seqs = _Sequences(towers, cfg)
    target = view_target(towers, images, seeds, _VIEW_STREAM, cfg)
    logits = rng.normal(seeds, _INIT_STREAM, (c, k, vocab), device=dev).requires_grad_(True)
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, not {kernel!r}")
    if kernel == "triton":
        if optimizer is not make_optimizer:
            raise ValueError("the triton kernel steps its own Adam inside the backward kernel")
        from audit.scanner.fused_step import FusedStep, Tiles

        fused = FusedStep(logits.detach(), emb, cfg.tau, cfg.lr,  # steps `logits` in place
                          tiles=Tiles.parse(tiles) if tiles else None)
    else:
        opt = optimizer(logits, cfg.lr)
        step_relax = _Relax(dev, kernel)
        offs = rng.offsets((c, k, vocab), dev)
    best_scores = torch.full((b, 0), float("-inf"), device=dev)
    best_seqs = torch.zeros((b, 0, k), dtype=torch.long, device=dev)
    trace = []
    for step in range(cfg.steps):
        if cfg.resample_views and step > 0:
            target = view_target(towers, images, seeds, _VIEW_STREAM + step, cfg)
        keys = rng.keys(seeds, _NOISE_STREAM + step, dev)
        if kernel == "triton":
            soft_emb, idx = fused.forward(keys)
            soft_emb.requires_grad_(True)
        else:
            soft, idx = step_relax(logits, keys, offs, cfg.tau)
            soft_emb = soft.reshape(-1, vocab) @ emb
        # Straight-through estimator: the forward value is exactly the hard token's embedding, the gradient
        # is the soft one's. Written on the embeddings to avoid a vocabulary-sized one-hot tensor.
        learned = emb[idx].reshape(-1, emb.shape[1]) + (soft_emb - soft_emb.detach())
        idx = idx.reshape(b, c, k)
        cos = seqs.cosine(learned.reshape(b, c, k, -1), target)
        # A sum over images (not a mean) keeps each image's gradient independent of the batch size.
        loss = -100.0 * cos.mean(1).sum()
        if kernel == "triton":
            grad, = torch.autograd.grad(loss, soft_emb)
            fused.backward(grad, soft_emb.detach(), keys)
        else:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        best_scores, best_seqs = merge_best(best_scores, best_seqs, cos.detach(), idx, cfg.keep)
        trace.append(cos.detach().float())
    with torch.no_grad():
        idx = logits.argmax(-1)
        cos = seqs.cosine(emb[idx], target)
        best_scores, best_seqs = merge_best(best_scores, best_seqs, cos, idx, cfg.keep)
    if cfg.refine_rounds > 0 and best_scores.shape[1] > 0:
        best_scores, best_seqs = refine(seqs, emb, target, best_scores, best_seqs, cfg)
        # Two slots may have moved to the same sequence: merging with nothing sorts and drops the repeat.
        best_scores, best_seqs = merge_best(best_scores[:, :0], best_seqs[:, :0], best_scores, best_seqs, cfg.keep)
    if best_scores.shape[1] < cfg.keep:  # fewer candidates than keep and no steps: pad
        pad = cfg.keep - best_scores.shape[1]
        best_scores = F.pad(best_scores, (0, pad), value=float("-inf"))
        best_seqs = F.pad(best_seqs, (0, 0, 0, pad), value=-1)
    best_seqs = best_seqs.masked_fill(torch.isinf(best_scores)[:, :, None], -1)
    trace = torch.stack(trace).cpu() if trace else torch.zeros((0, b, c))
    return AscentResult(best_seqs.cpu(), best_scores.cpu(), trace)


# ---- from token ids to words -------------------------------------------------------------------------

def _printable(text: str) -> str:
    return "".join(ch if unicodedata.category(ch)[0] not in "C" else " " for ch in text)


def decode_sequence(tokenizer, ids: list[int]) -> str:
    """The sequence as text with special tokens and unprintable characters removed."""
    special = {tokenizer.sot_token_id, tokenizer.eot_token_id, *getattr(tokenizer, "all_special_ids", [])}
    text = tokenizer.decode([i for i in ids if i not in special and i >= 0])
    text = text.replace("\ufffd", " ")
    return " ".join(_printable(text).split())


def sequences_to_words(tokenizer, seqs: torch.Tensor, scores: torch.Tensor) -> list[dict]:
    """Unique words of one image's kept sequences (best first), each with the sequence it first came from."""
    rows: list[dict] = []
    seen: set[str] = set()
    for rank in range(seqs.shape[0]):
        score = float(scores[rank])
        if score == float("-inf"):
            continue
        text = decode_sequence(tokenizer, seqs[rank].tolist())
        for word in clean_words(text):
            if word not in seen:
                seen.add(word)
                rows.append({"word": word, "word_rank": len(rows), "seq_rank": rank, "seq_text": text,
                             "seq_cosine": score})
    return rows
