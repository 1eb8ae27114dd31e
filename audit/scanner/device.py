"""Which device a scan runs on, at which precision, and a CPU allocator setting that the ascent needs."""

from __future__ import annotations

import contextlib
import ctypes

import torch

from audit.errors import AuditError
from audit.scanner.options import PRECISIONS


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise AuditError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu or auto")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise AuditError(f"--device must be auto, cpu or cuda, not {device!r}")
    return torch.device(device)


def native_bfloat16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 matrix products in hardware: a CUDA GPU with bf16 support (Ampere and
    later), or a CPU with AVX512-BF16 or AMX. Elsewhere bfloat16 is emulated, slower than float32, and `auto`
    keeps float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):  # private, but what torch itself asks
        try:
            if getattr(cpu, probe)():
                return True
        except (AttributeError, RuntimeError):
            continue
    return False


def resolve_precision(precision: str, device: torch.device, stored: str | None = None) -> str:
    """float32 or bfloat16. `auto` takes the precision a resumed scan already used (its rows must not mix two),
    else bfloat16 where the device computes it natively, else float32. An explicit value is kept as asked."""
    if precision not in PRECISIONS:
        raise AuditError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision != "auto":
        return precision
    if stored in ("float32", "bfloat16"):
        return stored
    return "bfloat16" if native_bfloat16(device) else "float32"


def autocast(device: torch.device, precision: str = "float32"):
    """The context the per-image model work runs in: bfloat16 autocast (matrix products and convolutions in
    bfloat16, accumulated in float32; reductions, norms and softmax of float32 inputs stay float32), or nothing."""
    if precision == "bfloat16" and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def tune_cpu_allocator() -> None:
    """Keep freed blocks up to glibc's 32 MB ceiling in the heap instead of returning them to the OS, so the
    ascent's per-step temporaries are reused rather than page-faulted anew (see bench/cpu_batch.py)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune
