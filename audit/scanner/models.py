"""Load any open_clip model (name + pretrained tag, local checkpoint, or random weights) and check that
audit can explain it; register the project's own model configs (audit-tiny, later audit-demo)."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch

from audit.errors import AuditError
from audit.scanner.options import DEFAULT_MODEL, DEFAULT_PRETRAINED

CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(CONFIG_DIR)

# Weights that ship inside the package, used by --pretrained auto.
BUNDLED = {"audit-demo": Path(__file__).parents[1] / "demo" / "weights" / "audit-demo.safetensors"}
NO_WEIGHTS = {"audit-tiny"}  # test-only configs: auto means random weights
# The project's models that can put a convolutional stem before the ViT (channels per stride-2 stage). open_clip
# configs cannot say this, so build_model adds it before weights are loaded: when asked (training) or when the
# weights file holds one. The bundled audit-demo weights (v1 on) hold one; v0's did not.
CONV_STEMS = {"audit-demo": (32, 64, 128)}
# First image layer of the relevancy when --start-layer is not given. Chefer's CLIP code starts at the last
# layer, which suits 12-layer models whose last attention already points at objects. audit-demo has 4 layers:
# its last-layer CLS attention reads tokens that have mixed in their neighbours, and only the whole rollout
# traces relevance back to the object (colour words on 200 two-object scenes: peak on the right object 98% from
# layer 0 against 70% from the last; see the model card).
START_LAYERS = {"audit-demo": 0}


# Relevancy method when --heatmap is not given (relevancy.METHODS): Chefer's for every model, audit-demo included.
# On audit-demo v1 occlusion is far better for shape words (peak on the named object in 97% of two-object scenes
# against 59%) but worse for background words (peak inside the object's box in 78% of maps against 5%): blanking
# a patch of grass leaves the rest of the grass, blanking the object changes the scene. Users pick per question.
HEATMAPS: dict[str, str] = {}
# Side of the occlusion window in patches when --occlusion-window is not given. audit-demo's was chosen on scenes
# outside training and evaluation, by pointing for shape and colour words together (4 of its 8 patches, about
# one and a half objects); 3 elsewhere, untuned.
OCCLUSION_WINDOWS = {"audit-demo": 4}


def default_start_layer(name: str) -> int:
    return START_LAYERS.get(name, -1)


def default_heatmap(name: str) -> str:
    return HEATMAPS.get(name, "chefer")


def default_occlusion_window(name: str) -> int:
    return OCCLUSION_WINDOWS.get(name, 3)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str
    pretrained: str
    weights_sha256: str | None
    device: torch.device
    preprocess: dict


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise AuditError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu or auto")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise AuditError(f"--device must be auto, cpu or cuda, not {device!r}")
    return torch.device(device)


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
        if name in BUNDLED:
            choice = str(BUNDLED[name])
            if not os.path.isfile(choice):
                raise AuditError(f"the bundled weights of {name} are missing ({choice}); reinstall audit or "
                                 "retrain them: python -m audit.demo.train --out " + choice)
        elif name in NO_WEIGHTS:
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


def build_model(name: str, weights: str | None = None, conv_stem: bool = False) -> torch.nn.Module:
    """The open_clip model `name` on the CPU, then `weights` (a tag, a file or None for random weights). A conv
    stem is added when asked for or when a weights file of a model in CONV_STEMS holds one."""
    stem = name in CONV_STEMS and (_has_conv_stem(weights) if weights is not None else conv_stem)
    if conv_stem and name not in CONV_STEMS:
        raise ValueError(f"{name} has no conv stem configuration")
    if not stem:
        return open_clip.create_model(name, pretrained=weights, device="cpu")
    from open_clip.factory import load_checkpoint

    from audit.scanner.conv_stem import add_conv_stem

    model = add_conv_stem(open_clip.create_model(name, pretrained=None, device="cpu"), CONV_STEMS[name])
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
            logging.disable(logging.CRITICAL)
            try:
                model = build_model(name, weights)
            finally:
                logging.disable(logging.NOTSET)
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
    try:
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as e:  # noqa: BLE001
        raise AuditError(f"could not build the tokenizer for {name}: {e}") from e
    preprocess = dict(open_clip.get_model_preprocess_cfg(model))
    loaded = LoadedModel(model, tokenizer, name, pretrained, sha, dev, preprocess)
    from audit.scanner.encoders import check_supported

    check_supported(loaded)
    return loaded
