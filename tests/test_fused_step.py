"""The fused Triton kernels of the ascent step (--kernel triton) against the eager step, on the CPU under
Triton's interpreter, and the switch that chooses the kernel."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from audit.errors import AuditError
from audit.scanner.ascent import resolve_kernel

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def measured(fused_measured):
    """tests/fused_check.py in a process of its own (TRITON_INTERPRET must be set before the kernels exist),
    started by conftest.py when the suite was collected."""
    return fused_measured


def test_the_noise_is_rngs_bit_for_bit(measured):
    """The uniform draws are the same bits as audit.scanner.rng's; the Gumbel noise on top differs only by the
    logarithm's last bit between libraries."""
    assert measured["uniform_bits_equal"]
    assert measured["noisy_max_rel"] < 1e-6


@pytest.mark.parametrize("tiles", ["64,128,128,8,2", "16,128,32,8,2"])
def test_fused_steps_match_the_eager_step_and_torchs_adam(measured, tiles):
    """Steps on one loss (four with the default tiles, two with small ones), with fp32 dots: the same hard tokens
    every step, the soft embeddings and log-sum-exp to float precision, and logits and both Adam moments after the
    steps within fp32 tolerance of torch.optim.Adam's."""
    m = measured["fp32"][tiles]
    assert m["same_tokens"]
    assert m["soft_emb_max_diff"] < 1e-5 and m["lse_max_diff"] < 1e-4
    assert m["logits_moved"] > 1.0  # Adam at lr 5 moved the logits: the comparison below means something
    assert m["logits_max_diff"] < 1e-3
    assert m["exp_avg_max_rel"] < 1e-4 and m["exp_avg_sq_max_rel"] < 1e-4


def test_run_ascent_finds_the_same_sequences_with_either_kernel(measured):
    assert measured["ascent_same_seqs"]
    assert measured["ascent_score_max_diff"] < 1e-5 and measured["ascent_trace_max_diff"] < 1e-5


def test_tiles_are_checked_where_they_are_parsed_and_given():
    from audit.scanner.fused_step import Tiles
    from audit.scanner.options import ScanOptions

    assert Tiles.parse("32,64,256") == Tiles(32, 64, 256, 8, 2) and str(Tiles.parse("32,64,256")) == "32,64,256,8,2"
    for bad, message in (("32,48,256", "vocab=48: a power of two"), ("8,64,64", "rows=8"),
                         ("64,128", "rows,vocab,dim"), ("a,b,c", "rows,vocab,dim"), ("64,128,128,3", "warps")):
        with pytest.raises(AuditError, match=message):
            Tiles.parse(bad)
    # The scan option is checked before a model loads (with a message of its own for the tile sizes).
    for bad in ("32,48,256", "8,64,64", "64,128", "a,b,c"):
        with pytest.raises(AuditError, match="--triton-tiles"):
            ScanOptions(triton_tiles=bad).check()
    ScanOptions(triton_tiles="32,64,256").check()


def test_the_kernel_is_a_setting_resolved_per_device(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert resolve_kernel("auto", cpu) == "eager" and resolve_kernel("auto", cuda) == "compile"
    assert resolve_kernel("Triton", cuda) == "triton" and resolve_kernel("eager", cuda) == "eager"
    with pytest.raises(AuditError, match="TRITON_INTERPRET"):
        resolve_kernel("triton", cpu)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_kernel("triton", cpu) == "triton"
    with pytest.raises(AuditError, match="--kernel must be auto or one of triton, compile, eager"):
        resolve_kernel("cuda-graphs", cpu)


def test_the_environment_is_read_at_the_edge_only(monkeypatch):
    """AUDIT_KERNEL and AUDIT_COMPILE=0 are the API's (and the CLI's) defaults; the library never reads them."""
    from audit.api import env_kernel

    for name in ("AUDIT_KERNEL", "AUDIT_COMPILE"):
        monkeypatch.delenv(name, raising=False)
    assert env_kernel() == "auto"
    monkeypatch.setenv("AUDIT_COMPILE", "0")
    assert env_kernel() == "eager"
    monkeypatch.setenv("AUDIT_KERNEL", "Triton")
    assert env_kernel() == "triton"
    root = Path(__file__).parents[1] / "audit"
    readers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                     if any(v in p.read_text(encoding="utf-8") for v in
                            ('environ.get("AUDIT_KERNEL', 'environ.get("AUDIT_COMPILE', 'environ.get("AUDIT_TRITON')))
    assert readers == ["api.py"], readers


def test_the_fused_step_holds_what_the_batch_size_estimate_counts():
    """The auto batch size counts 12 bytes per logit for the fused kernels (memory.bytes_per_logit): the
    logits and Adam's two moments. A vocabulary-sized buffer added to FusedStep would break that estimate and
    this test, before it broke a scan with an out-of-memory retry on a GPU."""
    from audit.scanner.fused_step import FusedStep
    from audit.scanner.memory import bytes_per_logit

    logits = torch.zeros(3, 4, 2, 1000)
    emb = torch.zeros(1000, 32)
    step = FusedStep(logits, emb, tau=1000.0, lr=5.0)
    held = {id(t): t for t in vars(step).values() if isinstance(t, torch.Tensor) and t is not step.emb}
    per_logit = sum(t.numel() * t.element_size() for t in held.values()) / logits.numel()
    assert bytes_per_logit("triton") <= per_logit < bytes_per_logit("triton") + 0.1
    assert bytes_per_logit("triton") < bytes_per_logit("compile") == bytes_per_logit("eager")
