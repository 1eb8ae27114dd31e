"""The ascent's straight-through Gumbel-softmax step as two fused Triton kernels (AUDIT_KERNEL=triton).

Per row r (image, candidate, position) with logits l, counter-based noise g (audit.scanner.rng, bit for bit)
and z = (l + g) / tau, the step needs p = softmax(z), its argmax, s = p . E (E the [V, D] token embeddings) and,
after the text tower's backward has given u = dL/ds, dL/dl = p * (u . e_v - u . s) / tau: the softmax
backward's reduction sum_v p_v (u . e_v) is u . s, already known. So:

- forward: stream the vocabulary in tiles, draw the noise in the kernel, keep an online max and sum (as flash
  attention does) and the running argmax, and accumulate p . E tile by tile with tl.dot; write s, the argmax
  and the row's log-sum-exp. Nothing vocabulary-sized is written.
- backward: stream the vocabulary again, recompute p from l, the noise and the log-sum-exp, get u . e_v from
  tl.dot tiles, and apply Adam to l and its two moments in place. No vocabulary-sized gradient is stored.

Both read the logits once and write them (and the moments) once: about 30 bytes per logit per step instead of
the ~200 of the separate passes. Triton's interpreter (TRITON_INTERPRET=1, set before this module is imported)
runs the same kernels on a CPU, which is how the tests compare them with the eager step.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

BLOCK_R = 16  # rows per program: tl.dot wants at least 16
BLOCK_V = 128  # vocabulary entries per tile
BLOCK_D = 64  # embedding columns per tile


@triton.jit
def _mix(x):
    """Wellons' lowbias32 on uint32 (rng._mix does the same on int32 with masked shifts)."""
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def uniform_tile(keys_ptr, rows, cols, n_rows, n_cols, rows_per_image):
    """rng.uniform_from_keys for a [BLOCK_R, BLOCK_V] tile of rows (image, candidate, position) and vocabulary
    columns: the same bits."""
    key = tl.load(keys_ptr + rows // rows_per_image, mask=rows < n_rows, other=0).to(tl.uint32, bitcast=True)
    # The element's index within its image's [C, K, V] draw, times rng's golden-ratio constant, in uint32.
    flat = (rows % rows_per_image).to(tl.uint32)[:, None] * n_cols.to(tl.uint32) + cols[None, :].to(tl.uint32)
    h = _mix(key[:, None] ^ (flat * 0x9E3779B9))
    u = ((h >> 9) & 0x7FFFFF).to(tl.float32)
    return (u + 0.5) * (1.0 / 8388608.0)


@triton.jit
def noisy_tile(logits_ptr, keys_ptr, rows, cols, n_rows, n_cols, rows_per_image, tau):
    """z = (l + gumbel) / tau for a tile (out-of-range entries -inf), and the tile's in-range mask."""
    ok = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    logit = tl.load(logits_ptr + rows[:, None].to(tl.int64) * n_cols + cols[None, :], mask=ok, other=0.0)
    g = -tl.log(-tl.log(uniform_tile(keys_ptr, rows, cols, n_rows, n_cols, rows_per_image)))
    return tl.where(ok, (logit + g) / tau, float("-inf")), ok


@triton.jit
def _forward(logits_ptr, keys_ptr, emb_ptr, s_ptr, idx_ptr, lse_ptr, n_rows, n_cols, dim, rows_per_image,
             tau, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
             DOT_BF16: tl.constexpr):
    pid_r = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    dcols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = dcols < dim
    m = tl.full((BLOCK_R,), float("-inf"), tl.float32)
    total = tl.zeros((BLOCK_R,), tl.float32)
    best = tl.full((BLOCK_R,), float("-inf"), tl.float32)
    best_idx = tl.zeros((BLOCK_R,), tl.int32)
    acc = tl.zeros((BLOCK_R, BLOCK_D), tl.float32)
    for v0 in range(0, n_cols, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        z, ok = noisy_tile(logits_ptr, keys_ptr, rows, cols, n_rows, n_cols, rows_per_image, tau)
        tile_max = tl.max(z, axis=1)
        tile_arg = tl.argmax(z, axis=1).to(tl.int32) + v0
        better = tile_max > best  # strictly: a tie keeps the earlier index, as torch.argmax does
        best_idx = tl.where(better, tile_arg, best_idx)
        best = tl.where(better, tile_max, best)
        m_new = tl.maximum(m, tile_max)
        # Rows past the end are -inf throughout: keep their arithmetic finite (0, not -inf - -inf = NaN).
        shift = tl.where(m_new > float("-inf"), m_new, 0.0)
        scale = tl.exp(m - shift)
        p = tl.where(ok, tl.exp(z - shift[:, None]), 0.0)
        total = total * scale + tl.sum(p, axis=1)
        e = tl.load(emb_ptr + cols[:, None].to(tl.int64) * dim + dcols[None, :],
                    mask=(cols < n_cols)[:, None] & d_ok[None, :], other=0.0)
        if DOT_BF16:
            part = tl.dot(p.to(tl.bfloat16), e.to(tl.bfloat16))
        else:
            part = tl.dot(p, e, input_precision="ieee")
        acc = acc * scale[:, None] + part
        m = m_new
    s = acc / total[:, None]
    row_ok = rows < n_rows
    tl.store(s_ptr + rows[:, None].to(tl.int64) * dim + dcols[None, :], s, mask=row_ok[:, None] & d_ok[None, :])
    if pid_d == 0:
        tl.store(idx_ptr + rows, best_idx, mask=row_ok)
        tl.store(lse_ptr + rows, m + tl.log(tl.where(total > 0, total, 1.0)), mask=row_ok)


@triton.jit
def _backward_adam(logits_ptr, m1_ptr, m2_ptr, keys_ptr, emb_ptr, u_ptr, us_ptr, lse_ptr, n_rows, n_cols, dim,
                   rows_per_image, tau, step_size, beta1, beta2, bias2_sqrt, eps,
                   BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, DOT_BF16: tl.constexpr):
    pid_r = tl.program_id(0)
    pid_v = tl.program_id(1)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = rows < n_rows
    z, ok = noisy_tile(logits_ptr, keys_ptr, rows, cols, n_rows, n_cols, rows_per_image, tau)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    p = tl.where(ok, tl.exp(z - lse[:, None]), 0.0)
    ue = tl.zeros((BLOCK_R, BLOCK_V), tl.float32)
    for d0 in range(0, dim, BLOCK_D):
        dcols = d0 + tl.arange(0, BLOCK_D)
        d_ok = dcols < dim
        u = tl.load(u_ptr + rows[:, None].to(tl.int64) * dim + dcols[None, :],
                    mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        e = tl.load(emb_ptr + cols[None, :].to(tl.int64) * dim + dcols[:, None],
                    mask=(cols < n_cols)[None, :] & d_ok[:, None], other=0.0)  # E^T tile [BLOCK_D, BLOCK_V]
        if DOT_BF16:
            ue += tl.dot(u.to(tl.bfloat16), e.to(tl.bfloat16))
        else:
            ue += tl.dot(u, e, input_precision="ieee")
    us = tl.load(us_ptr + rows, mask=row_ok, other=0.0)
    grad = p * (ue - us[:, None]) / tau
    offs = rows[:, None].to(tl.int64) * n_cols + cols[None, :]
    # Adam, in torch.optim.Adam's order of operations (single-tensor, not capturable).
    m1 = tl.load(m1_ptr + offs, mask=ok, other=0.0)
    m2 = tl.load(m2_ptr + offs, mask=ok, other=0.0)
    m1 = m1 * beta1 + grad * (1 - beta1)
    m2 = m2 * beta2 + grad * grad * (1 - beta2)
    logit = tl.load(logits_ptr + offs, mask=ok, other=0.0)
    logit = logit - step_size * (m1 / (tl.sqrt(m2) / bias2_sqrt + eps))
    tl.store(m1_ptr + offs, m1, mask=ok)
    tl.store(m2_ptr + offs, m2, mask=ok)
    tl.store(logits_ptr + offs, logit, mask=ok)


class FusedStep:
    """The ascent's logits and Adam moments, and the two kernels over them. `forward(keys)` gives the soft
    embeddings s [R, D] and the hard tokens [R]; `backward(u, s)` takes dL/ds and steps Adam in place."""

    def __init__(self, logits: torch.Tensor, emb: torch.Tensor, tau: float, lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, dot_bf16: bool | None = None):
        if logits.dtype != torch.float32 or not logits.is_contiguous():
            raise ValueError("the fused step needs contiguous float32 logits")
        self.logits = logits  # [B, C, K, V], updated in place
        self.shape = logits.shape
        self.rows = math.prod(self.shape[:-1])
        self.vocab = self.shape[-1]
        self.rows_per_image = math.prod(self.shape[1:-1])
        self.emb = emb.float().contiguous()
        self.dim = self.emb.shape[1]
        self.exp_avg = torch.zeros_like(logits)
        self.exp_avg_sq = torch.zeros_like(logits)
        self.tau = tau
        self.lr, self.betas, self.eps = lr, betas, eps
        self.step_count = 0
        self.lse = torch.empty(self.rows, device=logits.device, dtype=torch.float32)
        # bf16 tensor-core dots on CUDA, as autocast makes the eager step's matmul there; fp32 on request (checks).
        self.dot_bf16 = logits.device.type == "cuda" if dot_bf16 is None else dot_bf16

    def forward(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.empty(self.rows, self.dim, device=self.logits.device, dtype=torch.float32)
        idx = torch.empty(self.rows, device=self.logits.device, dtype=torch.int32)
        grid = (triton.cdiv(self.rows, BLOCK_R), triton.cdiv(self.dim, BLOCK_D))
        _forward[grid](self.logits, keys.to(torch.int32).contiguous(), self.emb, s, idx, self.lse, self.rows,
                       self.vocab, self.dim, self.rows_per_image, self.tau, BLOCK_R=BLOCK_R, BLOCK_V=BLOCK_V,
                       BLOCK_D=BLOCK_D, DOT_BF16=self.dot_bf16)
        return s, idx.long()

    def backward(self, u: torch.Tensor, s: torch.Tensor, keys: torch.Tensor) -> None:
        self.step_count += 1
        b1, b2 = self.betas
        t = self.step_count
        us = (u.float() * s.float()).sum(-1).contiguous()
        grid = (triton.cdiv(self.rows, BLOCK_R), triton.cdiv(self.vocab, BLOCK_V))
        _backward_adam[grid](self.logits, self.exp_avg, self.exp_avg_sq, keys.to(torch.int32).contiguous(),
                             self.emb, u.float().contiguous(), us, self.lse, self.rows, self.vocab, self.dim,
                             self.rows_per_image, self.tau, self.lr / (1 - b1 ** t), b1, b2,
                             math.sqrt(1 - b2 ** t), self.eps, BLOCK_R=BLOCK_R, BLOCK_V=BLOCK_V, BLOCK_D=BLOCK_D,
                             DOT_BF16=self.dot_bf16)
