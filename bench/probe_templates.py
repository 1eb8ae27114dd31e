"""What prompt templates do to audit-demo's probe scores: the evidence for its profile's --templates default.

On held-out single-object scenes, each colour, shape and background word is scored on every scene bare
(--templates none), in CLIP's 7 "simple" templates and in its 80 ImageNet templates (openai). Printed per kind of
word: zero-shot accuracy (the argmax over the kind's words) and the separation d' of the word's cosine between
the scenes that show it and the others ((mean in - mean out) / pooled sd), averaged over the kind's words.

    .venv/bin/python bench/probe_templates.py [--scenes 300]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from audit.demo.evaluate import scene_pixels
from audit.demo.scenes import BACKGROUNDS, COLOURS, SHAPES, make_scene
from audit.demo.train import EVAL_SEED_BASE
from audit.scanner.encoders import Towers
from audit.scanner.models import load_model
from audit.scanner.templates import parse_templates, text_vectors


def separation(cos: np.ndarray, truth: list[str], names: list[str]) -> float:
    out = []
    for j, name in enumerate(names):
        shown = np.array([t == name for t in truth])
        if 0 < shown.sum() < len(shown):
            a, b = cos[shown, j], cos[~shown, j]
            out.append((a.mean() - b.mean()) / np.sqrt((a.var() + b.var()) / 2))
    return float(np.mean(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=300)
    args = parser.parse_args()
    loaded = load_model("audit-demo", "auto", device="cpu")
    towers = Towers(loaded)
    scenes = [make_scene(EVAL_SEED_BASE + 900_000 + i, size=64, n_objects=1) for i in range(args.scenes)]
    with torch.no_grad():
        img = F.normalize(towers.encode_images(scene_pixels([s.image for s in scenes], loaded.preprocess,
                                                            towers.device)).float(), dim=-1)
    kinds = (("colour", list(COLOURS), [s.objects[0].colour for s in scenes]),
             ("shape", list(SHAPES), [s.objects[0].shape for s in scenes]),
             ("background", list(BACKGROUNDS), [s.background for s in scenes]))
    print(f"audit-demo, {args.scenes} held-out scenes: zero-shot accuracy / separation d'\n")
    print("| --templates | " + " | ".join(k for k, _, _ in kinds) + " |")
    print("|---|" + "---:|" * len(kinds))
    for spec in ("none", "simple", "openai"):
        cells = []
        for _, names, truth in kinds:
            cos = (img @ text_vectors(towers, names, parse_templates(spec)).T).numpy()
            acc = np.mean([names[p] == t for p, t in zip(cos.argmax(1), truth, strict=True)])
            cells.append(f"{acc:.3f} / {separation(cos, truth, names):.2f}")
        print(f"| {spec} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
