"""How much work fits on the device: batch sizes from free GPU memory, and what to do when it does not fit.

The estimates are deliberately rough (within a factor of about 1.5); an out-of-memory error during a scan halves
the batch and retries, so an optimistic estimate costs one retry, never the scan.
"""

from __future__ import annotations

import torch

# Bytes per element of the [candidates, tokens, vocabulary] logits that live at once during an ascent step.
# Separate passes (--kernel compile|eager): the fp32 parameter, its gradient, Adam's two moments, the
# Gumbel noise, the noisy logits, the softmax, its gradient, the logits' gradient and the bf16 copy that meets
# the embedding matrix. The fused kernels (triton): the parameter and the two moments, nothing else
# (tests/test_fused_step.py holds FusedStep to that).
_BYTES_PER_LOGIT = {"triton": 12}
_BYTES_PER_LOGIT_SEPARATE = 40
_MAX_BATCH = 1024
_HEADROOM = 0.8  # of the free memory; the rest absorbs allocator fragmentation and cuBLAS workspaces


def is_out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e))


def free_bytes(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bytes_per_logit(kernel: str) -> int:
    return _BYTES_PER_LOGIT.get(kernel, _BYTES_PER_LOGIT_SEPARATE)


def ascent_bytes_per_image(candidates: int, tokens: int, vocab: int, text_width: int, text_layers: int,
                           seq_len: int, kernel: str = "compile") -> int:
    """Memory one image adds to an ascent step run by `kernel` (ascent.resolve_kernel): the vocabulary-sized
    tensors plus the text tower's activations kept for the backward pass (about 24 values per width per
    position per layer)."""
    logits = candidates * tokens * vocab * bytes_per_logit(kernel)
    text = candidates * seq_len * text_width * text_layers * 24 * 4
    return logits + text


def relevancy_bytes_per_pair(layers: int, heads: int, grid_tokens: int, width: int) -> int:
    """Memory one (image, word) pair takes in a relevancy pass: each layer's attention probabilities, their
    gradient and the running relevance (heads x T x T), plus activations (about 16 values per width per token)."""
    t = grid_tokens
    return layers * (heads * t * t * 4 * 3 + t * width * 16 * 4)


def fit_count(free: int, per_item: int, reserved: int = 0, cap: int = _MAX_BATCH) -> int:
    """How many items of `per_item` bytes fit into `free` bytes after `reserved`, with headroom; at least 1."""
    usable = free * _HEADROOM - reserved
    return int(max(1, min(cap, usable // max(per_item, 1))))


# Sizing a scan's batches. `opts` is a ScanOptions and `towers` a Towers; neither is imported, so that this
# module stays below both.

def _pair_bytes(towers) -> int:
    shape = towers.shape()
    return relevancy_bytes_per_pair(shape["vision_layers"], shape["vision_heads"], shape["grid_tokens"],
                                    shape["vision_width"])


def cuda_batch_size(opts, towers, device: torch.device, words_per_image: int = 0) -> int:
    """The largest batch whose ascent (run by opts.kernel) fits the free GPU memory, next to one relevancy
    chunk; without an ascent, what the relevancy of `words_per_image` words an image needs."""
    free = free_bytes(device) or 0
    per_pair = _pair_bytes(towers)
    reserved = relevancy_chunk(towers, device, free) * per_pair
    if not opts.runs_ascent:
        per_image = max(1, words_per_image) * per_pair // 4
    else:
        shape = towers.shape()
        per_image = ascent_bytes_per_image(opts.candidates, opts.tokens_per_seq, towers.vocab_size,
                                           shape["text_width"], shape["text_layers"], opts.tokens_per_seq + 2,
                                           opts.kernel)
    return fit_count(free, per_image, reserved)


def relevancy_chunk(towers, device: torch.device, free: int | None = None) -> int:
    """(image, word) pairs per relevancy pass: 256 on a CPU; on a GPU, what a quarter of free memory holds."""
    if device.type != "cuda":
        return 256
    free = free_bytes(device) if free is None else free
    return fit_count(free // 4, _pair_bytes(towers), cap=256)
