"""The ascent's straight-through Gumbel-softmax step as two fused Triton kernels (--kernel triton).

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

The tiles (`Tiles`) set the traffic that remains. Each program reads all of E once for its `rows` rows, so E
costs D * 2 / rows bytes per logit per kernel (bf16 E): 64 rows make that 16 bytes for a 512-wide model, 16
rows 64. The forward splits D over programs (`dim` columns each) to bound its accumulator; each such program
recomputes the noise and softmax of its rows, so fewer, wider ones trade registers for arithmetic. Which tiles
are fastest is a GPU's to say: bench/fused_tiles.py sweeps them, and --triton-tiles overrides the default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from audit.errors import AuditError


@dataclass(frozen=True)
class Tiles:
    rows: int = 64  # rows per program (tl.dot's M; at least 16)
    vocab: int = 128  # vocabulary entries per tile
    dim: int = 128  # forward: embedding columns per program; backward: columns per dot
    warps: int = 8
    stages: int = 2

    def __post_init__(self):
        for name in ("rows", "vocab", "dim"):
            n = getattr(self, name)
            if n < 16 or n & (n - 1):
                raise AuditError(f"Triton tile {name}={n}: a power of two, at least 16")
        if self.warps < 1 or self.warps & (self.warps - 1) or self.stages < 1:
            raise AuditError(f"Triton tiles: warps must be a power of two and stages at least 1, not "
                             f"{self.warps} and {self.stages}")

    @classmethod
    def parse(cls, text: str) -> Tiles:
        """"rows,vocab,dim[,warps[,stages]]", the form of --triton-tiles (AUDIT_TRITON_TILES) and of bench/fused_tiles.py's answer."""
        parts = text.split(",")
        try:
            if not 3 <= len(parts) <= 5:
                raise ValueError
            return cls(*(int(x) for x in parts))
        except ValueError:
            raise AuditError(f"--triton-tiles must read rows,vocab,dim[,warps[,stages]], not {text!r}") from None

    def __str__(self) -> str:
        return f"{self.rows},{self.vocab},{self.dim},{self.warps},{self.stages}"


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
    # The programs that share rows and split D are launched next to each other, so their reads of the same
    # logits come from L2 rather than memory.
    pid_d = tl.program_id(0)
    pid_r = tl.program_id(1)
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
            part = tl.dot(p.to(tl.bfloat16), e)
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
            ue += tl.dot(u.to(tl.bfloat16), e)
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
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, dot_bf16: bool | None = None,
                 tiles: Tiles | None = None):
        if logits.dtype != torch.float32 or not logits.is_contiguous():
            raise ValueError("the fused step needs contiguous float32 logits")
        self.logits = logits  # [B, C, K, V], updated in place
        self.shape = logits.shape
        self.rows = math.prod(self.shape[:-1])
        self.vocab = self.shape[-1]
        self.rows_per_image = math.prod(self.shape[1:-1])
        # bf16 tensor-core dots on CUDA, as autocast makes the eager step's matmul there; fp32 on request (checks).
        if dot_bf16 is None:  # the scan's --precision: bfloat16 is the autocast the step is built under
            dot_bf16 = logits.device.type == "cuda" and torch.is_autocast_enabled("cuda")
        self.dot_bf16 = dot_bf16
        # E is read once per program: stored in the dots' precision, it costs half the traffic in bf16.
        self.emb = emb.detach().to(torch.bfloat16 if self.dot_bf16 else torch.float32).contiguous()
        self.dim = self.emb.shape[1]
        self.tiles = tiles or Tiles()
        self.exp_avg = torch.zeros_like(logits)
        self.exp_avg_sq = torch.zeros_like(logits)
        self.tau = tau
        self.lr, self.betas, self.eps = lr, betas, eps
        self.step_count = 0
        self.lse = torch.empty(self.rows, device=logits.device, dtype=torch.float32)

    def _launch(self) -> dict:
        t = self.tiles
        return dict(BLOCK_R=t.rows, BLOCK_V=t.vocab, BLOCK_D=t.dim, DOT_BF16=self.dot_bf16, num_warps=t.warps,
                    num_stages=t.stages)

    def forward(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.empty(self.rows, self.dim, device=self.logits.device, dtype=torch.float32)
        idx = torch.empty(self.rows, device=self.logits.device, dtype=torch.int32)
        grid = (triton.cdiv(self.dim, self.tiles.dim), triton.cdiv(self.rows, self.tiles.rows))
        _forward[grid](self.logits, keys.to(torch.int32).contiguous(), self.emb, s, idx, self.lse, self.rows,
                       self.vocab, self.dim, self.rows_per_image, self.tau, **self._launch())
        return s, idx.long()

    def backward(self, u: torch.Tensor, s: torch.Tensor, keys: torch.Tensor) -> None:
        self.step_count += 1
        b1, b2 = self.betas
        t = self.step_count
        us = (u.float() * s.float()).sum(-1).contiguous()
        # Row blocks vary fastest: neighbouring programs read the same tile of E, from L2.
        grid = (triton.cdiv(self.rows, self.tiles.rows), triton.cdiv(self.vocab, self.tiles.vocab))
        _backward_adam[grid](self.logits, self.exp_avg, self.exp_avg_sq, keys.to(torch.int32).contiguous(),
                             self.emb, u.float().contiguous(), us, self.lse, self.rows, self.vocab, self.dim,
                             self.rows_per_image, self.tau, self.lr / (1 - b1 ** t), b1, b2,
                             math.sqrt(1 - b2 ** t), self.eps, **self._launch())
