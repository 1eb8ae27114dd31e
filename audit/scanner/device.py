"""Which device a scan runs on, at which precision, and a CPU allocator setting that the ascent needs."""

from __future__ import annotations

import contextlib
import ctypes

import torch

from audit.errors import AuditError


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise AuditError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu or auto")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise AuditError(f"--device must be auto, cpu or cuda, not {device!r}")
    return torch.device(device)


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
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
