"""Counter-based randomness, one independent stream per image.

Every random number an image sees is a hash of (the image's seed, a stream number, the element's index), so
an image's results cannot depend on which other images share its batch, the batch order, the worker count,
or where a resumed scan restarts, and CPU and GPU draw the same numbers. torch's generators are sequential
and would need one call per image per step; this is one vectorised pass over the whole batch.
"""

from __future__ import annotations

import hashlib
import math

import torch

_GOLDEN = -0x61C88647  # 0x9E3779B9 as a signed int32


def image_seed(run_seed: int, image_id: str) -> int:
    """A 31-bit seed from the run seed and the image id (stable across processes and machines)."""
    digest = hashlib.blake2b(f"{run_seed}\x00{image_id}".encode("utf-8", "surrogatepass"), digest_size=4)
    return int.from_bytes(digest.digest(), "little") & 0x7FFFFFFF


def _mix(x: torch.Tensor) -> torch.Tensor:
    """32-bit integer mixer (Wellons' lowbias32) on an int32 tensor.

    int32 products wrap, which is exactly the modular arithmetic the mixer wants; shifts are arithmetic, so
    the shifted-in sign bits are masked off to make them logical. Out-of-place, so that torch.compile can
    fuse a whole draw into the kernel that consumes it.
    """
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * 0x7FEB352D
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * -0x7B935975  # 0x846CA68B
    return x ^ ((x >> 16) & 0xFFFF)


def keys(seeds: torch.Tensor, stream: int, device=None) -> torch.Tensor:
    """One int32 key per image for (its seed, stream): all an image's draws in that stream follow from it."""
    device = device if device is not None else seeds.device
    s = seeds.to(device=device, dtype=torch.int64).remainder(1 << 31).to(torch.int32)
    # Chained, not symmetric: (seed a, stream b) and (seed b, stream a) must not share a key.
    return _mix(_mix(_mix(s) ^ (stream % (1 << 31))))


def offsets(shape: tuple[int, ...], device=None) -> torch.Tensor:
    """The per-element half of every draw of this shape, [prod(shape)] int32, shared by all images.

    A tensor rather than index arithmetic, so that torch.compile cannot fold the wrapping int32 product
    into an index expression (inductor then emits a 64-bit constant that Triton rejects).
    """
    n = math.prod(shape)
    if n >= 1 << 31:
        raise ValueError("too many random numbers for one stream")
    return torch.arange(n, device=device, dtype=torch.int32) * _GOLDEN


def _mix_(x: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """`_mix` in place, with one scratch tensor of x's shape: the same bits without a vocabulary-sized temporary
    per operation (uncompiled, each one is a fresh allocation the CPU must fault in: 3.5 times slower)."""
    for shift, mask, factor in ((16, 0xFFFF, 0x7FEB352D), (15, 0x1FFFF, -0x7B935975), (16, 0xFFFF, None)):
        torch.bitwise_right_shift(x, shift, out=scratch)
        x ^= scratch.bitwise_and_(mask)
        if factor is not None:
            x *= factor
    return x


def uniform_from_keys(keys: torch.Tensor, offs: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Uniform float32 in (0, 1), shape [len(keys), *shape], from `keys` and `offsets(shape)`."""
    h = keys[:, None] ^ offs[None, :]
    if torch.compiler.is_compiling():
        # Out of place, so that the compiler fuses the whole draw into the kernel that consumes it.
        h = _mix(h)
        # 23 bits keep (k + 0.5) / 2**23 strictly inside (0, 1) in float32.
        u = (((h >> 9) & 0x7FFFFF).to(torch.float32) + 0.5) * (1.0 / (1 << 23))
        return u.reshape(len(keys), *shape)
    # The result owns its memory and the integer scratch is a view of it, not the other way round: the ascent
    # adds its logits to the draw in place, and autograd copies a view's whole base at each such step.
    h = h.reshape(len(keys), *shape)
    u = torch.empty(h.shape, dtype=torch.float32, device=h.device)
    _mix_(h, u.view(torch.int32))
    h >>= 9
    u.copy_(h.bitwise_and_(0x7FFFFF))
    u += 0.5
    u *= 1.0 / (1 << 23)
    return u


def uniform(seeds: torch.Tensor, stream: int, shape: tuple[int, ...], device=None) -> torch.Tensor:
    """Uniform float32 in (0, 1), shape [len(seeds), *shape]; row i depends only on seeds[i], stream, index."""
    k = keys(seeds, stream, device)
    return uniform_from_keys(k, offsets(shape, k.device), shape)


def gumbel_from_keys(keys: torch.Tensor, offs: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    u = uniform_from_keys(keys, offs, shape)
    if torch.compiler.is_compiling():
        return -torch.log(-torch.log(u))
    return u.log_().neg_().log_().neg_()


def gumbel(seeds: torch.Tensor, stream: int, shape: tuple[int, ...], device=None) -> torch.Tensor:
    k = keys(seeds, stream, device)
    return gumbel_from_keys(k, offsets(shape, k.device), shape)


def normal(seeds: torch.Tensor, stream: int, shape: tuple[int, ...], device=None) -> torch.Tensor:
    """Standard normal float32 by Box-Muller over two uniform streams."""
    u1 = uniform(seeds, 2 * stream, shape, device)
    u2 = uniform(seeds, 2 * stream + 1, shape, device)
    return u1.log_().mul_(-2.0).sqrt_().mul_(torch.cos(u2.mul_(2.0 * math.pi)))
