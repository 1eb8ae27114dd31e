"""The two towers of an open_clip CLIP, re-expressed for batch auditing.

- text from token *embeddings* (so ascent can feed soft one-hots), cut right after EOT and pooled there;
- vision split into a gradient-free prefix and a suffix whose attention probabilities are explicit tensors
  (fused attention never materialises them, and relevancy needs them only in its layers).
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

from audit.errors import AuditError

# Images per image-tower pass of embed_images: a fixed shape (see there). 16 is the CPU scan's batch without an
# ascent; a smaller batch pads up to it, which costs one pass of the image tower per batch, not per image.
EMBED_CHUNK = 16


def fixed_chunks(rows: torch.Tensor, size: int):
    """(chunk of exactly `size` rows, the last one padded with zero rows; how many are real), over `rows`' first
    dimension. A product over a chunk gives each row the same bits whatever batch the row came in: the product's
    blocking follows its shape, and every chunk has the one shape."""
    n = rows.shape[0]
    for lo in range(0, n, size):
        part = rows[lo:lo + size]
        if part.shape[0] < size:
            part = torch.cat([part, part.new_zeros((size - part.shape[0], *part.shape[1:]))])
        yield part, min(size, n - lo)


def _text_parts(model):
    """The text tower's modules, whether they sit on the CLIP itself or on model.text."""
    owner = model if hasattr(model, "token_embedding") else getattr(model, "text", None)
    return owner


def check_supported(loaded) -> None:
    """Refuse, in one line, models whose towers this code cannot explain exactly."""
    model, name = loaded.model, loaded.name
    why = None
    visual = getattr(model, "visual", None)
    text = _text_parts(model)
    if not isinstance(visual, VisionTransformer):
        why = "its image tower is not an open_clip VisionTransformer"
    elif getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
        why = "its image tower does not pool at the class token"
    elif not all(isinstance(b, ResidualAttentionBlock) for b in visual.transformer.resblocks):
        why = "its image tower uses custom attention blocks"
    elif text is None or not hasattr(text, "token_embedding") or not hasattr(text, "transformer"):
        why = "its text tower is not an open_clip TextTransformer"
    elif getattr(text, "attn_mask", None) is None:
        why = "its text tower is not causal, so sequences cannot be cut at EOT"
    elif getattr(text, "text_pool_type", getattr(text, "pool_type", "argmax")) not in ("argmax", "eos", "last"):
        why = "its text tower does not pool at the end-of-text token"
    elif getattr(text, "cls_emb", None) is not None:
        why = "its text tower appends a class token"
    elif not all(isinstance(b, ResidualAttentionBlock) for b in text.transformer.resblocks):
        why = "its text tower uses custom attention blocks"
    elif not hasattr(loaded.tokenizer, "encoder") or not hasattr(loaded.tokenizer, "eot_token_id"):
        why = "it does not use CLIP's BPE tokenizer"
    if why:
        raise AuditError(f"model {name} is not supported: {why}; use a CLIP ViT model such as ViT-B-32")


def explicit_block(blk: ResidualAttentionBlock, x: torch.Tensor, mask: torch.Tensor | None = None):
    """One residual attention block with the attention probabilities as a tensor in the graph.

    Same arithmetic as nn.MultiheadAttention (packed in-projection, scaled dot product, out-projection).
    Returns (output, probs [N, heads, L, L]).
    """
    attn = blk.attn
    n, length, d = x.shape
    heads = attn.num_heads
    h = blk.ln_1(x)
    q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(n, length, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    scores = (q * (1.0 / math.sqrt(d // heads))) @ k.transpose(-1, -2)
    if mask is not None:
        scores = scores + mask.to(scores.dtype)
    probs = scores.softmax(dim=-1)
    out = (probs @ v).transpose(1, 2).reshape(n, length, d)
    out = attn.out_proj(out)
    x = x + blk.ls_1(out)
    x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
    return x, probs


class Towers:
    """Batched forward passes over a loaded CLIP; no parameters of its own."""

    def __init__(self, loaded):
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.device = loaded.device
        text = _text_parts(loaded.model)
        self.text = text
        self.token_embedding: torch.nn.Embedding = text.token_embedding
        self.vocab_size = self.token_embedding.num_embeddings
        self.context_length = text.positional_embedding.shape[0]
        self.sot_id = int(loaded.tokenizer.sot_token_id)
        self.eot_id = int(loaded.tokenizer.eot_token_id)
        self.visual: VisionTransformer = loaded.model.visual
        self.vision_blocks = list(self.visual.transformer.resblocks)
        self.text_blocks = list(text.transformer.resblocks)
        self.grid_size = tuple(self.visual.grid_size)
        self.logit_scale = float(loaded.model.logit_scale.detach().exp())  # detached: training builds Towers too

    def text_digest(self) -> str:
        """sha256 of the text tower's weights as loaded (every parameter outside the image tower): names cached
        text embeddings by the weights themselves, not by a tag or a file name that may change under them."""
        h = hashlib.sha256()
        with torch.no_grad():
            for name, p in sorted(self.model.named_parameters()):
                if name.startswith("visual."):
                    continue
                h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
                h.update(p.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def shape(self) -> dict:
        """The sizes that memory estimates need (audit.memory)."""
        blk = self.vision_blocks[0]
        gh, gw = self.grid_size
        return {"vision_layers": len(self.vision_blocks), "vision_heads": blk.attn.num_heads,
                "vision_width": self.visual.transformer.width, "grid_tokens": gh * gw + 1,
                "text_layers": len(self.text_blocks), "text_width": self.token_embedding.embedding_dim}

    # ---- text ---------------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """[SOT, tokens, EOT] per text, right-padded to the longest; returns (ids [N, L], eot index [N])."""
        return self.pack([self.tokenizer.encode(t)[: self.context_length - 2] for t in texts])

    def pack(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token-id rows as [SOT, ids, EOT], right-padded to the longest only (the text tower is causal, so
        nothing after EOT reaches it); returns (ids [N, L], eot index [N])."""
        length = max(len(r) for r in rows) + 2
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r) + 2] = torch.tensor([self.sot_id, *r, self.eot_id])
        eot = torch.tensor([len(r) + 1 for r in rows])
        return ids.to(self.device), eot.to(self.device)

    def text_from_embeddings(self, x: torch.Tensor, eot: torch.Tensor, explicit_from: int | None = None):
        """Text features (unnormalized) of embedded sequences [N, L, D], pooled at position eot [N].

        Positions after EOT cannot reach EOT through the causal mask, so sequences may be cut or padded
        freely there. Layers >= explicit_from use explicit attention; their probabilities are returned.
        """
        length = x.shape[1]
        t = self.text
        x = x + t.positional_embedding[:length].to(x.dtype)
        mask = t.attn_mask[:length, :length]
        probs = []
        if explicit_from is not None:
            # Relevancy: the layers before the first explained one need no gradient.
            with torch.no_grad():
                for blk in self.text_blocks[:explicit_from]:
                    x = blk(x, attn_mask=mask)
            x = x.detach().requires_grad_(True)
            for blk in self.text_blocks[explicit_from:]:
                x, p = explicit_block(blk, x, mask)
                probs.append(p)
        else:
            for blk in self.text_blocks:
                x = blk(x, attn_mask=mask)
        pooled = x[torch.arange(x.shape[0], device=x.device), eot]
        pooled = t.ln_final(pooled)  # LayerNorm is per position: pooling first gives the same vector
        proj = t.text_projection
        if proj is not None:
            pooled = proj(pooled) if isinstance(proj, torch.nn.Linear) else pooled @ proj
        return pooled, probs

    def encode_ids(self, ids: torch.Tensor, eot: torch.Tensor, explicit_from: int | None = None):
        return self.text_from_embeddings(self.token_embedding(ids), eot, explicit_from)

    # ---- vision -------------------------------------------------------------------------------------
    def vision_prefix(self, images: torch.Tensor, upto: int) -> torch.Tensor:
        """Hidden states after the first `upto` blocks."""
        # In float32 under a bfloat16 autocast, on purpose: open_clip casts the class and position embeddings to
        # the patch embedding's dtype, so a bfloat16 patch embedding would carry the whole residual stream in
        # bfloat16. The stem is a few percent of the tower's work; the blocks' products still run in bfloat16.
        with torch.autocast(images.device.type, enabled=False):
            x = self.visual._embeds(images.float())
        for blk in self.vision_blocks[:upto]:
            x = blk(x)
        return x

    def vision_suffix(self, x: torch.Tensor, start: int, explicit: bool = True):
        """Blocks start.. with explicit attention, then pooling and projection. Returns (features, probs)."""
        probs = []
        for blk in self.vision_blocks[start:]:
            if explicit:
                x, p = explicit_block(blk, x)
                probs.append(p)
            else:
                x = blk(x)
        return self.pool(x), probs

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """The image features (unnormalized) of the last block's output [N, L, D]: pooled, normed, projected."""
        pooled, _ = self.visual._pool(x)
        if self.visual.proj is not None:
            # In float32 under a bfloat16 autocast, on purpose: a bfloat16 product would round every stored
            # embedding to 8 bits of mantissa, and the rounding of each value would flip with the batch's shape
            # (bench/cpu_precision.py). One [D, E] product per image: free beside the blocks.
            with torch.autocast(x.device.type, enabled=False):
                pooled = pooled.float() @ self.visual.proj.float()
        return pooled

    def image_pass(self, images: torch.Tensor, keep: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The embeddings, in chunks of exactly EMBED_CHUNK images (the last one padded with blank images), so that
        each image's embedding is the same, bit for bit, whatever batch it came in. A matrix product's blocking
        follows its shape, and under bfloat16 one rounding flipped by it moved ViT-B-32's embedding values by up to
        0.03 between batch sizes (2e-6 in float32); with one shape there is one blocking.

        `keep`: also return the hidden states [N, L, D] that enter block `keep`, the ones a relevancy method
        starting there needs (hidden_states gives the same bits), so that relevancy does not run the image tower's
        first blocks a second time."""
        upto = len(self.vision_blocks) if keep is None else keep
        feats, hidden = [], []
        for part, real in fixed_chunks(images, EMBED_CHUNK):
            x = self.vision_prefix(part, upto)
            if keep is not None:
                hidden.append(x[:real])
            feats.append(self.vision_suffix(x, upto, explicit=False)[0][:real])
        if not feats:  # no images: the shapes an empty batch gives
            return self.encode_images(images), (self.vision_prefix(images, upto) if keep is not None else None)
        return torch.cat(feats), (torch.cat(hidden) if keep is not None else None)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Each image's embedding, independent of its batch (image_pass)."""
        return self.image_pass(images)[0]

    def hidden_states(self, images: torch.Tensor, upto: int) -> torch.Tensor:
        """The hidden states entering block `upto`, bit for bit as image_pass(images, keep=upto) keeps them."""
        return torch.cat([self.vision_prefix(part, upto)[:real] for part, real in fixed_chunks(images, EMBED_CHUNK)])

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.vision_suffix(self.vision_prefix(images, len(self.vision_blocks)), len(self.vision_blocks),
                                  explicit=False)[0]
