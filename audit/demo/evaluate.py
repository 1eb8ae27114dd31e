"""`audit demo evaluate`: does the demo CLIP know colours, shapes and backgrounds, does ascent find the
words, and does the heatmap land on the right object? Measured on scenes from seeds never used in training.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from audit.demo.scenes import BACKGROUNDS, COLOURS, SHAPES, make_scene
from audit.demo.train import EVAL_SEED_BASE
from audit.scanner.encoders import Towers
from audit.scanner.heatmap_stats import grid_stats
from audit.scanner.models import load_model
from audit.scanner.pipeline import ScanOptions
from audit.scanner.profiles import profile
from audit.scanner.relevancy import METHODS, relevancy

# Word recall counts the words a scan finds, so it runs the scan's own ascent settings by default.
FAITHFULNESS_SCENES = 64  # as audit verify's default sample
RECALL_STEPS = ScanOptions.steps
RECALL_CANDIDATES = ScanOptions.candidates

TEMPLATES = {
    "colour": ("{}", "a {} thing", "a {} shape"),
    "shape": ("{}", "a {}", "a photo of a {}"),
    "background": ("{}", "a photo of {}", "something on {}"),
}


@dataclass
class Evaluation:
    scenes: int
    zero_shot: dict[str, float]
    recall: dict[str, float]
    pointing: dict[str, dict[str, tuple[float, float]]]  # method -> word kind -> (peak in box, box mass)
    heatmap: str  # the method a scan of this model uses by default
    recall_scenes: int
    pointing_scenes: int
    recall_steps: int
    recall_candidates: int
    concept_recall: dict[str, float] | None = None  # colour, shape, background among a scan's stored concepts
    concepts_per_image: float | None = None
    # method (and "random") -> word kind -> (deletion area, insertion area), audit verify's measure
    faithfulness: dict[str, dict[str, tuple[float, float]]] | None = None
    faithfulness_scenes: int = 0

    def lines(self) -> list[str]:
        z, r = self.zero_shot, self.recall
        point = []
        for method in sorted(self.pointing, key=lambda m: m != self.heatmap):
            (hits, mass), (c_hits, c_mass) = self.pointing[method]["shape"], self.pointing[method]["colour"]
            which = "the scan's default" if method == self.heatmap else "not the default"
            point.append(f"pointing game on {self.pointing_scenes} two-object scenes, {method} heatmaps ({which}): "
                         f"{hits:.1%} of shape-word peaks inside the right object's box, mean relevance inside "
                         f"it {mass:.1%} (colour words: {c_hits:.1%}, {c_mass:.1%})")
        return [
            f"zero-shot accuracy on {self.scenes} held-out single-object scenes: colour {z['colour']:.1%}, "
            f"shape {z['shape']:.1%}, background {z['background']:.1%}",
            f"ascent word recall on {self.recall_scenes} single-object scenes ({self.recall_steps} steps, "
            f"{self.recall_candidates} candidates): colour {r['colour']:.1%}, "
            f"shape {r['shape']:.1%}",
            *([] if self.concept_recall is None else [
                f"concept recall on {self.scenes} single-object scenes (--opinion concepts, the scan's defaults; "
                f"{self.concepts_per_image:.1f} concepts per image): colour {self.concept_recall['colour']:.1%}, "
                f"shape {self.concept_recall['shape']:.1%}, background {self.concept_recall['background']:.1%}"]),
            *point,
            *([] if not self.faithfulness else [
                f"faithfulness on {self.faithfulness_scenes} single-object scenes (audit verify's deletion / "
                f"insertion areas of the scene's own words; lower / higher is better), {method}: " + ", ".join(
                    f"{kind} {d:.3f} / {i:.3f}" for kind, (d, i) in self.faithfulness[method].items())
                for method in self.faithfulness]),
        ]


def scene_pixels(images, preprocess, device):
    from audit.scanner.loader import to_model_input
    from audit.sources.decode import fit

    mean = np.asarray(preprocess["mean"], dtype=np.float32)
    std = np.asarray(preprocess["std"], dtype=np.float32)
    arrays = [fit(im, preprocess["size"], preprocess.get("resize_mode", "shortest"),
                  preprocess.get("interpolation", "bicubic"))[0] for im in images]
    return torch.stack([to_model_input(a, mean, std) for a in arrays]).to(device)


@torch.no_grad()
def _class_embeddings(towers: Towers, kind: str, names):
    out = []
    for name in names:
        texts = [t.format(name) for t in TEMPLATES[kind]]
        ids, eot = towers.tokenize(texts)
        feats = F.normalize(towers.encode_ids(ids, eot)[0].float(), dim=-1).mean(0)
        out.append(F.normalize(feats, dim=-1))
    return torch.stack(out)


def zero_shot(towers: Towers, preprocess, scenes) -> dict[str, float]:
    x = scene_pixels([s.image for s in scenes], preprocess, towers.device)
    with torch.no_grad():
        img = F.normalize(towers.encode_images(x).float(), dim=-1)
    result = {}
    for kind, names, truth in (
        ("colour", list(COLOURS), [s.objects[0].colour for s in scenes]),
        ("shape", list(SHAPES), [s.objects[0].shape for s in scenes]),
        ("background", list(BACKGROUNDS), [s.background for s in scenes]),
    ):
        pred = (img @ _class_embeddings(towers, kind, names).T).argmax(1).cpu().tolist()
        result[kind] = float(np.mean([names[p] == t for p, t in zip(pred, truth, strict=True)]))
    return result


def _scan_scenes(scenes, **options):
    """The scenes' tokens from a real scan (the pipeline's own decoding, opinion and storage)."""
    import audit

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "scenes"
        root.mkdir()
        for i, s in enumerate(scenes):
            s.image.save(root / f"{i:05d}.png")
        return audit.scan(root, Path(tmp) / "scan", workers=0, **options).tokens()


def _found(scenes, tokens, attributes) -> dict[str, float]:
    words = tokens.groupby("image_id").word.apply(set).to_dict()
    get = {"colour": lambda s: s.objects[0].colour, "shape": lambda s: s.objects[0].shape,
           "background": lambda s: s.background}
    return {a: float(np.mean([get[a](s) in words.get(f"{i:05d}.png", set()) for i, s in enumerate(scenes)]))
            for a in attributes}


def word_recall(scenes, model: str, pretrained: str, steps: int, candidates: int, device: str, seed: int,
                quiet: bool = True, kernel: str = "auto"):
    """Scan the scenes with the real pipeline and count colour and shape words among the found words."""
    tokens = _scan_scenes(scenes, model=model, pretrained=pretrained, steps=steps, candidates=candidates,
                          device=device, seed=seed, quiet=quiet, kernel=kernel)
    return _found(scenes, tokens, ("colour", "shape"))


def concept_recall(scenes, model: str, pretrained: str, device: str, quiet: bool = True) -> tuple[dict, float]:
    """Scan the scenes with --opinion concepts (every other setting the scan's default) and count the colour,
    shape and background among each image's stored concepts; also the concepts per image."""
    tokens = _scan_scenes(scenes, model=model, pretrained=pretrained, device=device, opinion="concepts",
                          quiet=quiet)
    return _found(scenes, tokens, ("colour", "shape", "background")), len(tokens) / max(len(scenes), 1)


def pointing_game(towers: Towers, preprocess, scenes, method: str, start_layer: int = -1,
                  window: int | None = None, kind: str = "shape", layers: int | None = None) -> tuple[float, float]:
    """For each two-object scene and each of its objects: is the heatmap peak of the object's shape word (or
    colour word, kind="colour") inside that object's box, and how much of the relevance lies inside it. The
    method and its settings as in a scan (window, layers: audit-demo's unless given)."""
    x = scene_pixels([s.image for s in scenes], preprocess, towers.device)
    pair_image = torch.tensor([i for i, s in enumerate(scenes) for _ in s.objects])
    words = [getattr(o, kind) for s in scenes for o in s.objects]
    size = scenes[0].image.width
    boxes = np.array([[o.box[0] / size, o.box[1] / size, o.box[2] / size, o.box[3] / size]
                      for s in scenes for o in s.objects])
    window = profile("audit-demo").occlusion_window if window is None else window
    layers = profile("audit-demo").legrad_layers if layers is None else layers
    params = {"chefer": {"start_layer": start_layer}, "occlusion": {"window": window}, "legrad": {"layers": layers}}
    params = params[method]
    rel = relevancy(towers, x, pair_image, words, method=method, **params)
    stats = grid_stats(rel.image.numpy(), boxes)
    hits = np.array([bool(v) for v in stats["peak_in_box"]])
    return float(hits.mean()), float(np.nanmean(stats["box_mass"]))


def faithfulness(towers: Towers, preprocess, scenes, model: str = "audit-demo",
                 seed: int = 0) -> dict[str, dict[str, tuple[float, float]]]:
    """audit verify's deletion and insertion areas (its default steps and random orders) on single-object scenes,
    for each scene's own colour, shape and background words, per relevancy method (the model's settings) and for
    random orders."""
    from audit.analysis.verification import faithfulness_summary
    from audit.scanner.options import VerifyOptions
    from audit.scanner.verify import area, method_curves, method_params

    x = scene_pixels([s.image for s in scenes], preprocess, towers.device)
    kinds = ("colour", "shape", "background")
    pair_image = torch.arange(len(scenes)).repeat_interleave(len(kinds))
    words = [getattr(s.objects[0], k) if k != "background" else s.background for s in scenes for k in kinds]
    found = method_curves(towers, x, pair_image, words, method_params({"model": model}),
                          [str(i) for i in range(len(scenes))], VerifyOptions(seed=seed))
    rows = [{"part": "faithfulness", "image_id": str(int(pair_image[j])), "kind": kind, "word": w, "method": method,
             "deletion": float(area(cos[j, 0])), "insertion": float(area(cos[j, 1]))}
            for method, cos in found.items() for j, (w, kind) in enumerate(zip(words, kinds * len(scenes), strict=True))]
    table = faithfulness_summary(pd.DataFrame(rows))
    return {m: {k: (float(r.deletion), float(r.insertion)) for k, r in g.set_index("kind").iterrows()}
            for m, g in table.groupby("method", sort=False)}


def evaluate(scenes: int = 200, recall_scenes: int | None = None, model: str = "audit-demo",
             pretrained: str = "auto", steps: int = RECALL_STEPS, candidates: int = RECALL_CANDIDATES,
             device: str = "cpu", seed: int = 0, quiet: bool = True) -> Evaluation:
    loaded = load_model(model, pretrained, device=device)
    towers = Towers(loaded)
    singles = [make_scene(EVAL_SEED_BASE + i, size=64, n_objects=1) for i in range(scenes)]
    doubles = [make_scene(EVAL_SEED_BASE + 500_000 + i, size=64, n_objects=2) for i in range(scenes)]
    zs = zero_shot(towers, loaded.preprocess, singles)
    n_recall = scenes if recall_scenes is None else recall_scenes
    rec = word_recall(singles[:n_recall], model, pretrained, steps, candidates, device, seed, quiet)
    concepts, per_image = concept_recall(singles, model, pretrained, device, quiet)
    prof = profile(model)
    point = {method: {kind: pointing_game(towers, loaded.preprocess, doubles, method, prof.start_layer,
                                          prof.occlusion_window, kind, prof.legrad_layers)
                      for kind in ("shape", "colour")}
             for method in METHODS}
    faith_scenes = singles[:min(scenes, FAITHFULNESS_SCENES)]
    faith = faithfulness(towers, loaded.preprocess, faith_scenes, model, seed=seed)
    return Evaluation(scenes, zs, rec, point, profile(model).heatmap, n_recall, len(doubles), steps, candidates,
                      concepts, per_image, faith, len(faith_scenes))
