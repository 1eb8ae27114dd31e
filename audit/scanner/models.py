"""Load any open_clip model (name + pretrained tag, local checkpoint, or random weights) and check that
audit can explain it; register the project's own model configs (audit-tiny, later audit-demo)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch

from audit.errors import AuditError
from audit.scanner.device import resolve_device
from audit.scanner.options import DEFAULT_MODEL, DEFAULT_PRETRAINED
from audit.scanner.profiles import profile

CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(CONFIG_DIR)

@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str
    pretrained: str
    weights_sha256: str | None
    device: torch.device
    preprocess: dict


def file_sha256(path: str | os.PathLike) -> str:
    st = os.stat(path)
    return _sha256(os.path.abspath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:  # size and mtime make a changed file a new key
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _weights_hint(name: str) -> str:
    tags = open_clip.list_pretrained_tags_by_model(name)
    tag_text = f"a tag open_clip can download ({', '.join(tags[:3])}{', …' if len(tags) > 3 else ''}), " if tags else ""
    return (f"pass --pretrained with {tag_text}a local checkpoint file (--pretrained /path/to/weights.pt), "
            "or --pretrained none for random weights (tests only)")


def resolve_weights(name: str, pretrained: str) -> tuple[str | None, str | None]:
    """Check model name and weights without loading them.

    Returns (what open_clip should load: a tag, a file path, or None for random weights; sha256 of a file).
    'auto' means the bundled file for the project's own models, random weights for test-only configs and
    the 'openai' tag otherwise.
    """
    if name not in open_clip.list_models():
        raise AuditError(f"unknown model {name!r}: pass an open_clip model name "
                         "(python -c 'import open_clip; print(open_clip.list_models())'), audit-demo or audit-tiny")
    choice = pretrained.strip()
    if choice.lower() == "auto":
        prof = profile(name)
        if prof.bundled_weights is not None:
            choice = str(prof.bundled_weights)
            if not os.path.isfile(choice):
                raise AuditError(f"the bundled weights of {name} are missing ({choice}); reinstall audit or "
                                 "retrain them: audit demo train --out " + choice)
        elif prof.random_weights:
            choice = "none"
        else:
            choice = "openai"
    if choice.lower() in ("none", ""):
        return None, None
    if open_clip.get_pretrained_cfg(name, choice):
        return choice, None
    if not os.path.isfile(choice):
        raise AuditError(f"--pretrained {choice!r} is neither an open_clip tag for {name} nor a file; "
                         + _weights_hint(name))
    return os.path.abspath(choice), file_sha256(choice)


def weights_identity(weights: str | None, sha: str | None) -> str:
    """What a scan records about its weights: stable across machines (a file is known by its hash)."""
    if weights is None:
        return "none"
    return f"file:{os.path.basename(weights)}" if sha else weights


@contextlib.contextmanager
def _quiet_open_clip():
    """Hold back open_clip's own log records (it logs on the root logger) and nobody else's."""
    def not_open_clip(record: logging.LogRecord) -> bool:
        return f"{os.sep}open_clip{os.sep}" not in record.pathname

    roots = [logging.getLogger(), logging.getLogger("open_clip")]
    for logger in roots:
        logger.addFilter(not_open_clip)
    try:
        yield
    finally:
        for logger in roots:
            logger.removeFilter(not_open_clip)


def vocab_size(name: str) -> int:
    """The size of the model's token vocabulary, from its config without loading it (CLIP's 49,408 where the
    config does not say)."""
    cfg = open_clip.get_model_config(name) or {}
    return int(cfg.get("text_cfg", {}).get("vocab_size", 49408))


def get_tokenizer(name: str):
    """The model's tokenizer, without loading the model."""
    try:
        return open_clip.get_tokenizer(name)
    except Exception as e:  # noqa: BLE001
        raise AuditError(f"could not build the tokenizer for {name}: {e}") from e


def build_model(name: str, weights: str | None = None, conv_stem: bool = False) -> torch.nn.Module:
    """The open_clip model `name` on the CPU, then `weights` (a tag, a file or None for random weights). A conv
    stem is added when asked for or when a weights file of a model whose profile has a stem holds one."""
    channels = profile(name).conv_stem
    stem = channels is not None and (_has_conv_stem(weights) if weights is not None else conv_stem)
    if conv_stem and channels is None:
        raise ValueError(f"{name} has no conv stem configuration")
    if not stem:
        return open_clip.create_model(name, pretrained=weights, device="cpu")
    from open_clip.factory import load_checkpoint

    from audit.scanner.conv_stem import add_conv_stem

    model = add_conv_stem(open_clip.create_model(name, pretrained=None, device="cpu"), channels)
    if weights is not None:
        load_checkpoint(model, weights)
    return model


def _has_conv_stem(weights: str) -> bool:
    """Whether a weights file was saved from a model with a conv stem (the bundled audit-demo weights were not)."""
    if not weights.endswith(".safetensors") or not os.path.isfile(weights):
        return False
    from safetensors import safe_open

    with safe_open(weights, framework="pt") as f:
        return "visual.conv1.0.weight" in f.keys()


def load_model(name: str = DEFAULT_MODEL, pretrained: str = DEFAULT_PRETRAINED, *, device: str = "auto",
               seed: int = 0) -> LoadedModel:
    """Build the model in eval mode on the chosen device; every failure a user can fix is an AuditError."""
    dev = resolve_device(device)
    weights, sha = resolve_weights(name, pretrained)
    try:
        # Random init draws from torch's global generator: fork it so --seed fixes the weights and the
        # caller's random state is untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            # open_clip logs a warning for purpose-made random weights and an error before raising on a
            # failed download; the AuditError below says it better, once.
            with _quiet_open_clip():
                model = build_model(name, weights)
    except AuditError:
        raise
    except Exception as e:  # noqa: BLE001 - open_clip raises bare RuntimeErrors for missing downloads
        text = " ".join(str(e).split()) or type(e).__name__
        if "download" in text.lower() or "hub" in text.lower():
            text = "the download failed (offline, or the model hub is unreachable)"
        raise AuditError(f"could not load weights for {name} (pretrained={pretrained}): {text[:160]}; "
                         + _weights_hint(name)) from e
    model = model.to(dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tokenizer = get_tokenizer(name)
    preprocess = dict(open_clip.get_model_preprocess_cfg(model))
    loaded = LoadedModel(model, tokenizer, name, pretrained, sha, dev, preprocess)
    from audit.scanner.encoders import check_supported

    check_supported(loaded)
    return loaded
