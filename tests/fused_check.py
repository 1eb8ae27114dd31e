"""The fused Triton step against the eager step: under Triton's interpreter on the CPU (the tests), or compiled on
a GPU (`python tests/fused_check.py cuda`, from bench/gpu.sh).

Run by tests/test_fused_step.py in a process of its own: TRITON_INTERPRET must be set before the kernels are
defined, and the rest of the suite must not see it. Prints one JSON object of measured differences; the test
judges them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

# On a CPU the kernels run under Triton's interpreter; `fused_check.py cuda` runs them compiled (bench/gpu.sh).
DEVICE = sys.argv[1] if len(sys.argv) > 1 else "cpu"
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from audit.scanner import fused_step, rng  # noqa: E402
from audit.scanner.ascent import AscentConfig, _Sequences, run_ascent  # noqa: E402
from audit.scanner.encoders import Towers  # noqa: E402
from audit.scanner.models import load_model  # noqa: E402


@triton.jit
def _probe(logits_ptr, keys_ptr, u_ptr, z_ptr, n_rows, n_cols, rows_per_image, tau, BLOCK_R: tl.constexpr,
           BLOCK_V: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    ok = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    offs = rows[:, None] * n_cols + cols[None, :]
    tl.store(u_ptr + offs, fused_step.uniform_tile(keys_ptr, rows, cols, n_rows, n_cols, rows_per_image), mask=ok)
    z, _ = fused_step.noisy_tile(logits_ptr, keys_ptr, rows, cols, n_rows, n_cols, rows_per_image, tau)
    tl.store(z_ptr + offs, z, mask=ok)


def noise(result: dict) -> None:
    """The kernels' uniform draws and noisy logits against rng's, on a ragged shape (3 images, 2 x 3 rows each,
    a vocabulary that is no multiple of the tile)."""
    b, c, k, v = 3, 2, 3, 1000
    seeds = torch.tensor([7, 2**31 - 5, 123456], device=DEVICE)
    keys = rng.keys(seeds, 1_017)
    logits = torch.randn(b, c, k, v, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    u = torch.empty(b * c * k, v, device=DEVICE)
    z = torch.empty(b * c * k, v, device=DEVICE)
    _probe[(triton.cdiv(b * c * k, 16), triton.cdiv(v, 128))](logits, keys, u, z, b * c * k, v, c * k, 1000.0,
                                                                BLOCK_R=16, BLOCK_V=128)
    offs = rng.offsets((c, k, v), DEVICE)
    want_u = rng.uniform_from_keys(keys, offs, (c, k, v)).reshape(-1, v)
    want_z = ((logits + rng.gumbel_from_keys(keys, offs, (c, k, v))) / 1000.0).reshape(-1, v)
    result["uniform_bits_equal"] = bool(torch.equal(u.view(torch.int32), want_u.view(torch.int32)))
    # The logarithms of two libraries (numpy's here, libdevice's on a GPU, torch's in rng) may differ in the last
    # bit: compare l + g to its magnitude.
    result["noisy_max_rel"] = float(((z - want_z).abs() / (logits.abs() + 3).reshape(-1, v) * 1000).max())


def eager_step(logits, emb, keys, offs, tau):
    z = (logits + rng.gumbel_from_keys(keys, offs, tuple(logits.shape[1:]))) / tau
    soft = z.softmax(-1)
    return soft.reshape(-1, logits.shape[-1]) @ emb, z.detach().argmax(-1).reshape(-1), z.logsumexp(-1).reshape(-1)


def steps(towers: Towers, n_steps: int = 4, tiles: fused_step.Tiles | None = None, dot_bf16: bool = False) -> dict:
    """Several ascent steps on the same loss: fused kernels with their own Adam against eager autograd with
    torch.optim.Adam (single tensor, as on a CPU). Hard tokens, soft embeddings, logits and both moments."""
    cfg = AscentConfig(tokens_per_seq=4, candidates=3, steps=n_steps, views=2, refine_rounds=0)
    b, c, k, v = 3, cfg.candidates, cfg.tokens_per_seq, towers.vocab_size
    emb = towers.token_embedding.weight
    seqs = _Sequences(towers, cfg)
    seeds = torch.tensor([11, 12, 13], device=DEVICE)
    target = F.normalize(torch.randn(b, emb.shape[1], generator=torch.Generator().manual_seed(5)), dim=-1).to(DEVICE)
    init = rng.normal(seeds, 1, (c, k, v), device=DEVICE)
    eager = init.clone().requires_grad_(True)
    opt = torch.optim.Adam([eager], lr=cfg.lr)
    fused = fused_step.FusedStep(init.clone(), emb, cfg.tau, cfg.lr, dot_bf16=dot_bf16, tiles=tiles)
    offs = rng.offsets((c, k, v), DEVICE)
    same_tokens, s_diff, lse_diff = True, 0.0, 0.0

    def loss_of(soft_emb, idx):
        learned = emb[idx].reshape(-1, emb.shape[1]) + (soft_emb - soft_emb.detach())
        return -100.0 * seqs.cosine(learned.reshape(b, c, k, -1), target).mean(1).sum()

    for step in range(n_steps):
        keys = rng.keys(seeds, 1_000 + step)
        soft_emb, idx, lse = eager_step(eager, emb, keys, offs, cfg.tau)
        opt.zero_grad()
        loss_of(soft_emb, idx).backward()
        opt.step()
        s, fidx = fused.forward(keys)
        s.requires_grad_(True)
        grad, = torch.autograd.grad(loss_of(s, fidx), s)
        fused.backward(grad, s.detach(), keys)
        same_tokens &= bool(torch.equal(idx, fidx))
        s_diff = max(s_diff, float((s.detach() - soft_emb.detach()).abs().max()))
        lse_diff = max(lse_diff, float((fused.lse - lse.detach()).abs().max()))
    state = opt.state[eager]
    return dict(
        same_tokens=same_tokens, soft_emb_max_diff=s_diff, lse_max_diff=lse_diff,
        logits_max_diff=float((fused.logits - eager.detach()).abs().max()),
        logits_moved=float((eager.detach() - init).abs().max()),
        exp_avg_max_rel=float((fused.exp_avg - state["exp_avg"]).abs().max() / state["exp_avg"].abs().max()),
        exp_avg_sq_max_rel=float((fused.exp_avg_sq - state["exp_avg_sq"]).abs().max()
                                  / state["exp_avg_sq"].abs().max()))


def whole_ascent(towers: Towers, result: dict) -> None:
    """run_ascent itself with the triton and the eager kernel: the same best sequences and scores."""
    cfg = AscentConfig(tokens_per_seq=3, candidates=2, steps=3, views=2, refine_rounds=1, refine_top=8)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    seeds = torch.tensor([3, 4], device=DEVICE)
    out = {}
    for kernel in ("eager", "triton"):
        out[kernel] = run_ascent(towers, images, seeds, dataclasses.replace(cfg), kernel=kernel)
    result["ascent_same_seqs"] = bool(torch.equal(out["eager"].seqs, out["triton"].seqs))
    result["ascent_score_max_diff"] = float((out["eager"].scores - out["triton"].scores).abs().max())
    result["ascent_trace_max_diff"] = float((out["eager"].trace - out["triton"].trace).abs().max())


def main() -> None:
    torch.manual_seed(0)
    towers = Towers(load_model("audit-tiny", "none", device=DEVICE, seed=0))
    result: dict = {}
    noise(result)
    # fp32 dots, like the eager step, with the default tiles (one program holds all 36 rows, 3 images x 3 x 4, and
    # all 64 columns of the tiny model) and with small ones (3 blocks of rows that cut images' rows apart, the last
    # one ragged, times 2 blocks of columns in the forward: a grid that is not square, so swapped axes show).
    # The small tiles run 2 steps, not 4 (the interpreter takes 23 s a step on them, against 6 s with the default
    # tiles): the second step already reads the Adam moments the first wrote, tile by tile.
    result["fp32"] = {str(t): steps(towers, tiles=t, n_steps=n)
                      for t, n in ((fused_step.Tiles(), 4), (fused_step.Tiles(16, 128, 32), 2))}
    if DEVICE == "cuda":
        # bf16 dots (the CUDA default) for one step: after it, Adam's first update (lr times the gradient's sign)
        # separates the two wherever a gradient is near zero, so later steps are no comparison. Not on the CPU:
        # the interpreter's bf16 tl.dot returns garbage (a 16 x 16 product off by 3e10), kernel or not.
        result["bf16"] = steps(towers, n_steps=1, dot_bf16=True)
    whole_ascent(towers, result)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
