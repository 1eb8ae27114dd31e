"""Concept recall of audit-demo on held-out scenes, by centring and L1 penalty: the evidence for audit-demo's
uncentred profile (profiles.py) and for the default --concept-l1.

For each setting: the share of single-object scenes whose top 5 concepts include the scene's colour, shape and
background, the concepts per image, and the words that are none of those (per image). "centred" is the scan's
dataset centring with the mean of 300 other held-out scenes; "uncentred" is --concept-mean none.

    .venv/bin/python bench/concept_recall.py [--scenes 200]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from audit.demo.evaluate import scene_pixels
from audit.demo.scenes import make_scene
from audit.demo.train import EVAL_SEED_BASE
from audit.scanner.concepts import Decomposition, ImageMean
from audit.scanner.encoders import Towers
from audit.scanner.models import load_model
from audit.scanner.options import ScanOptions
from audit.scanner.profiles import profile
from audit.scanner.vocabulary import default_vocabulary, embeddings, text_mean


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenes", type=int, default=200)
    ap.add_argument("--l1", default="0.05,0.1,0.2,0.3,0.4")
    args = ap.parse_args()
    loaded = load_model("audit-demo", "auto", device="cpu")
    towers = Towers(loaded)
    scenes = [make_scene(EVAL_SEED_BASE + i, size=64, n_objects=1) for i in range(args.scenes)]
    others = [make_scene(EVAL_SEED_BASE + 10_000 + i, size=64, n_objects=1 + i % 2) for i in range(300)]
    with torch.no_grad():
        feats = towers.encode_images(scene_pixels([s.image for s in scenes], loaded.preprocess, "cpu")).float()
        ref = towers.encode_images(scene_pixels([s.image for s in others], loaded.preprocess, "cpu"))
        ref = F.normalize(ref.float(), dim=-1)
    vocab = default_vocabulary(towers.tokenizer)
    identity = "bench|audit-demo|auto"
    emb, mean_t = embeddings(towers, vocab, identity), text_mean(towers, identity)
    print(f"# concept recall of audit-demo, {args.scenes} held-out scenes, top 5 concepts, {len(vocab.words)} words")
    print(f"text mean norm (the default vocabulary's normalised embeddings): {float(mean_t.norm()):.3f}")
    print("| centring | l1 | colour | shape | background | concepts/image | other words/image |")
    print("|---|---|---|---|---|---|---|")
    default = profile("audit-demo").concept_l1
    for name, mean in (("uncentred", ImageMean(None, "none")), ("centred", ImageMean(ref.mean(0).numpy(), "ref"))):
        for l1 in map(float, args.l1.split(",")):
            opinion = Decomposition(vocab.words, emb, mean_t, mean, ScanOptions(concept_l1=l1).concepts())
            rows, _ = opinion(feats)
            found = {"colour": [], "shape": [], "background": []}
            others_per_image = []
            for s, r in zip(scenes, rows, strict=True):
                top = [c["word"] for c in r[:5]]
                truth = {"colour": s.objects[0].colour, "shape": s.objects[0].shape, "background": s.background}
                for k, v in truth.items():
                    found[k].append(v in top)
                others_per_image.append(len(set(top) - set(truth.values())))
            print(f"| {name} | {l1}{' (default)' if l1 == default else ''} | " + " | ".join(
                f"{np.mean(found[k]):.1%}" for k in found) + f" | {np.mean([len(r) for r in rows]):.2f} | "
                f"{np.mean(others_per_image):.2f} |")


if __name__ == "__main__":
    main()
