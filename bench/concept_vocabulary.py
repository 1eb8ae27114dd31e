"""The default concept vocabulary and the text centring, decided with evidence.

1. audit-demo, held-out single-object scenes: how often the scene's colour, shape and background are among an
   image's top 5 concepts, with the tokenizer's whole words (--vocabulary tokens, 32k entries), with the
   shipped list (words: 10k words and 3k two-word nouns) and with its words alone, uncentred (its profile) and centred by a mean of other scenes;
   centred, the text side by the tokenizer sample's mean (audit's rule) or by the vocabulary's own (SpLiCE's).
2. ViT-B-32 with random weights, noise images, centred by their mean: how stable an image's top 5 concepts are
   when a fifth of the vocabulary (seeded) is taken away, with each text centring. Of the top-5 concepts of the
   full vocabulary that the smaller one still holds, the share that stay in the top 5.

    .venv/bin/python bench/concept_vocabulary.py [--scenes 200] [--images 64]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from audit.demo.evaluate import scene_pixels
from audit.demo.scenes import make_scene
from audit.demo.train import EVAL_SEED_BASE
from audit.scanner.concepts import ConceptSettings, Decomposition, ImageMean
from audit.scanner.encoders import Towers
from audit.scanner.models import load_model
from audit.scanner.profiles import profile
from audit.scanner.vocabulary import embeddings, from_words, named_vocabulary, text_mean


def top5(words, emb, tmean, mean, feats, l1) -> list[list[str]]:
    rows, _ = Decomposition(words, emb, tmean, mean, ConceptSettings(l1, 5, 0))(feats)
    return [[c["word"] for c in r] for r in rows]


def demo(scenes: int) -> None:
    loaded = load_model("audit-demo", "auto", device="cpu")
    towers = Towers(loaded)
    test = [make_scene(EVAL_SEED_BASE + i, size=64, n_objects=1) for i in range(scenes)]
    others = [make_scene(EVAL_SEED_BASE + 10_000 + i, size=64, n_objects=1 + i % 2) for i in range(300)]
    with torch.no_grad():
        feats = towers.encode_images(scene_pixels([s.image for s in test], loaded.preprocess, "cpu")).float()
        ref = F.normalize(towers.encode_images(scene_pixels([s.image for s in others], loaded.preprocess,
                                                            "cpu")).float(), dim=-1).mean(0).numpy()
    identity = "bench|audit-demo"
    fixed = text_mean(towers, identity)
    l1 = profile("audit-demo").concept_l1
    print(f"## audit-demo: colour / shape / background in the top 5 concepts ({scenes} held-out scenes, l1 {l1})\n")
    print("| vocabulary | image centring | text centring | colour | shape | background |\n|---|---|---|---:|---:|---:|")
    words = named_vocabulary("words", None)
    for name, vocab in (("tokens", named_vocabulary("tokens", towers.tokenizer)), ("words", words),
                        ("words without phrases", from_words([w for w in words.words if " " not in w], "single"))):
        emb = embeddings(towers, vocab, identity)
        for image, mean in (("none (its profile)", ImageMean(None, "none")), ("other scenes", ImageMean(ref, "r"))):
            texts = (("tokenizer sample", fixed), ("own vocabulary", emb.mean(0))) if mean.vector is not None \
                else (("-", fixed),)
            for tname, tmean in texts:
                tops = top5(vocab.words, emb, tmean, mean, feats, l1)
                hits = [np.mean([getattr(s.objects[0], k) in t for s, t in zip(test, tops, strict=True)])
                        for k in ("colour", "shape")]
                hits.append(np.mean([s.background in t for s, t in zip(test, tops, strict=True)]))
                print(f"| {name} ({len(vocab.words):,}) | {image} | {tname} | " + " | ".join(f"{h:.1%}" for h in hits)
                      + " |")


def stability(images: int) -> None:
    loaded = load_model("ViT-B-32", "none", device="cpu", seed=0)
    towers = Towers(loaded)
    rs = np.random.RandomState(0)
    pixels = torch.from_numpy(rs.standard_normal((images, 3, 224, 224)).astype(np.float32))
    with torch.no_grad():
        feats = torch.cat([towers.encode_images(pixels[i:i + 16]).float() for i in range(0, images, 16)])
    mean = ImageMean(F.normalize(feats, dim=-1).mean(0).numpy(), "own")
    identity = "bench|ViT-B-32|random0"
    fixed = text_mean(towers, identity)
    l1 = profile("ViT-B-32").concept_l1
    print(f"\n## ViT-B-32, random weights: top-5 concepts kept when a fifth of the vocabulary goes ({images} noise "
          f"images, l1 {l1})\n")
    print("| vocabulary | text centring | top-5 concepts still in the smaller vocabulary that stay in the top 5 |")
    print("|---|---|---:|")
    for name in ("tokens", "words"):
        vocab = named_vocabulary(name, towers.tokenizer)
        keep = np.sort(np.random.RandomState(1).permutation(len(vocab.words))[: int(0.8 * len(vocab.words))])
        small = from_words([vocab.words[i] for i in keep], "smaller")
        emb = embeddings(towers, vocab, identity)
        emb_small = emb[torch.from_numpy(keep)]
        for tname, full_mean, small_mean in (("tokenizer sample", fixed, fixed),
                                             ("own vocabulary", emb.mean(0), emb_small.mean(0))):
            a = top5(vocab.words, emb, full_mean, mean, feats, l1)
            b = top5(small.words, emb_small, small_mean, mean, feats, l1)
            kept = set(small.words)
            shares = [len(set(x) & set(y)) / len([w for w in x if w in kept])
                      for x, y in zip(a, b, strict=True) if any(w in kept for w in x)]
            print(f"| {name} ({len(vocab.words):,}) | {tname} | {np.mean(shares):.1%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()
    demo(args.scenes)
    stability(args.images)


if __name__ == "__main__":
    main()
