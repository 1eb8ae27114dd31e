"""Issue 43's yardstick: what --precision bfloat16 buys on a CPU, and what it changes.

    python bench/cpu_precision.py speed  [--images 1000] [--baseline-ref REF] [--compare-ref REF]
                                         [--opinions concepts,probes,ascent]     # scans, side by side
    python bench/cpu_precision.py faithful [--model ViT-B-32]                      # bfloat16 against float32

speed: `audit scan` (a fresh process each, as a user runs it) of JPEG photographs cut from scikit-image's data
images, ViT-B-32 with random weights (speed does not depend on the weights; no download), for each opinion and
precision: wall time (start-up included), images/s over the whole run and over the model phase alone (scan.json's
phases), and 16 images' wall time. --baseline-ref runs the same concepts scan with the code of a git ref (the
commit before this work: float32 only, the concept mean encoded in a pass of its own) in the same run, for the
"x today" ratio.

faithful: the same images under both precisions, with the library's own functions: each image's embedding
cosine, the top-5 concepts (each precision centred by the mean of its own embeddings, as a scan does), probe
scores, and the Chefer and LeGrad heatmaps' Pearson r. On audit-demo (trained here, so its words mean something)
with demo scenes and photographs, and on ViT-B-32's real architecture with random weights.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry", "hubble_deep_field",
          "retina", "colorwheel", "logo", "page", "camera", "moon", "text", "brick", "grass", "gravel", "horse")
PROBES = ("cat", "person", "a rocket", "coffee", "grass", "text", "space", "red")


def photo_crops(n: int, seed: int = 0, size: tuple[int, int] = (500, 375)) -> list[Image.Image]:
    """n distinct photographs-like images: random crops of scikit-image's data images, resized to `size`."""
    import skimage.data

    base = []
    for name in PHOTOS:
        a = np.asarray(getattr(skimage.data, name)())
        if a.dtype != np.uint8:
            a = (a.astype(np.float64) / max(a.max(), 1) * 255).astype(np.uint8)
        base.append(Image.fromarray(a).convert("RGB"))
    rs = np.random.default_rng(seed)
    out = []
    for i in range(n):
        im = base[i % len(base)]
        w, h = im.size
        cw, ch = int(w * rs.uniform(0.4, 1.0)), int(h * rs.uniform(0.4, 1.0))
        x0, y0 = int(rs.integers(0, w - cw + 1)), int(rs.integers(0, h - ch + 1))
        crop = im.crop((x0, y0, x0 + cw, y0 + ch)).resize(size, Image.BICUBIC)
        out.append(crop.transpose(Image.FLIP_LEFT_RIGHT) if rs.random() < 0.5 else crop)
    return out


def write_jpegs(root: Path, n: int, seed: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(photo_crops(n, seed)):
        im.save(root / f"{i:05d}.jpg", quality=90)
    return root


def pearson(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    a = a.flatten(1).double()
    b = b.flatten(1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)).numpy()


def compare(model: str, pretrained: str, images: list[Image.Image], probes=PROBES, top: int = 5,
            heatmap_words: int = 2, other: list[Image.Image] | None = None, other_precision: str = "bfloat16") -> dict:
    """bfloat16 autocast against float32 on the same images, through the library's own functions; or, with
    `other` (the same images altered, e.g. saved as JPEG) and other_precision float32, the noise floor that
    ordinary data already puts on each measure."""
    from audit.demo.evaluate import scene_pixels
    from audit.scanner.concepts import ImageMean
    from audit.scanner.device import autocast
    from audit.scanner.encoders import Towers
    from audit.scanner.models import load_model
    from audit.scanner.opinions.concepts import ConceptOpinion, ConceptPlan
    from audit.scanner.opinions.probes import ProbeOpinion, probe_cosines
    from audit.scanner.options import ScanOptions
    from audit.scanner.relevancy import method_options, relevancy

    loaded = load_model(model, pretrained, device="cpu", seed=0)
    towers = Towers(loaded)
    opts = ScanOptions(model=model, pretrained=pretrained, opinion="concepts", words=probes).with_model_defaults()
    pixels = {"float32": scene_pixels(images, loaded.preprocess, "cpu"),
              "bfloat16": scene_pixels(other or images, loaded.preprocess, "cpu")}
    precisions = {"float32": "float32", "bfloat16": other_precision}
    feats = {}
    for key, precision in precisions.items():
        with torch.no_grad(), autocast(towers.device, precision):
            feats[key] = towers.embed_images(pixels[key]).float()
    cosine = F.cosine_similarity(feats["float32"], feats["bfloat16"], dim=-1).numpy()

    plan = ConceptOpinion.plan(opts)
    found = {}
    for precision, f in feats.items():
        unit = F.normalize(f, dim=-1)
        mean = ImageMean(unit.mean(0).numpy(), "dataset", len(unit))
        words, _ = ConceptOpinion.build(opts, towers, ConceptPlan(plan.vocabulary, mean)).decomposition(f)
        found[precision] = [[w["word"] for w in ws] for ws in words]
    pairs = list(zip(found["float32"], found["bfloat16"], strict=True))
    same_set = np.mean([set(a[:top]) == set(b[:top]) for a, b in pairs])
    same_order = np.mean([a[:top] == b[:top] for a, b in pairs])
    # A swap of near-ties: bfloat16's top 5 among float32's top 7.
    near = np.mean([set(b[:top]) <= set(a[:top + 2]) for a, b in pairs])

    texts = ProbeOpinion.build(opts, towers, ProbeOpinion.plan(opts)).texts
    probe_diff = np.abs(probe_cosines(feats["float32"], texts) - probe_cosines(feats["bfloat16"], texts)).max()

    # Heatmaps of each image's first concepts (float32's), as the scan draws them.
    pair_image = torch.tensor([i for i in range(len(images)) for _ in range(heatmap_words)])
    first = [ws[:top] for ws in found["float32"]]
    pair_words = [first[i][j % max(len(first[i]), 1)] if first[i] else "a photo"
                  for i in range(len(images)) for j in range(heatmap_words)]
    maps = {}
    for method in ("chefer", "legrad"):
        params = method_options(method, opts)
        per = {}
        for key, precision in precisions.items():
            with autocast(towers.device, precision):
                per[key] = relevancy(towers, pixels[key], pair_image, pair_words, method, 64, **params).image.float()
        maps[method] = pearson(per["float32"], per["bfloat16"])
    return {"images": len(images), "min_cosine": float(cosine.min()), "median_cosine": float(np.median(cosine)),
            "top5_same_set": float(same_set), "top5_same_order": float(same_order),
            "top5_in_top7": float(near),
            "probe_max_diff": float(probe_diff),
            **{f"{m}_r_min": float(r.min()) for m, r in maps.items()},
            **{f"{m}_r_median": float(np.median(r)) for m, r in maps.items()}}


def jpeg(im: Image.Image, quality: int = 90) -> Image.Image:
    import io

    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def demo_scenes(n: int, seed: int = 0) -> list[Image.Image]:
    from audit.demo.scenes import make_scene

    return [make_scene(seed + i, size=128).image for i in range(n)]


def run_faithful(model: str, n: int) -> None:
    print(f"{'model':<11} {'images':<34} {'n':>4} {'min cos':>9} {'top-5 set':>9} {'order':>6} {'in top-7':>8} "
          f"{'probe Δ':>8} "
          f"{'chefer r min/med':>17} {'legrad r min/med':>17}")
    sets = [("audit-demo", "auto", "demo scenes", demo_scenes(n)), ("audit-demo", "auto", "photographs", photo_crops(n)),
            (model, "none", "photographs", photo_crops(n))]
    rows = [(name, pretrained, label, images, None) for name, pretrained, label, images in sets]
    # The floor: float32 against float32 of the same pictures saved once as JPEG (quality 90).
    rows += [(name, pretrained, f"{label}: JPEG q90, fp32", images, [jpeg(im) for im in images])
             for name, pretrained, label, images in sets[:2]]
    for name, pretrained, label, images, other in rows:
        r = compare(name, pretrained, images, other=other, other_precision="float32" if other else "bfloat16")
        print(f"{name:<11} {label:<34} {r['images']:>4} {r['min_cosine']:>9.6f} {r['top5_same_set']:>9.3f} "
              f"{r['top5_same_order']:>6.3f} {r['top5_in_top7']:>8.3f} {r['probe_max_diff']:>8.5f} "
              f"{r['chefer_r_min']:>8.4f}/{r['chefer_r_median']:.4f} {r['legrad_r_min']:>8.4f}/{r['legrad_r_median']:.4f}")


def scan_once(code: Path, source: Path, out: Path, args: list[str]) -> dict:
    """One `audit scan` in a fresh process with the package at `code`: wall seconds and what scan.json says."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "audit", "scan", str(source), "--out", str(out), "--quiet", *args],
                   env=env, check=True, cwd=code)
    wall = time.perf_counter() - started
    config = json.loads((out / "scan.json").read_text())
    run = config["runs"][-1]
    phases = run.get("phases") or {}
    return {"wall": wall, "images": run["images"], "seconds": run["seconds"], "phases": phases}


def worktree(ref: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-f", "--detach", str(where), ref], check=True,
                   capture_output=True)
    return where


def run_speed(images: int, small: int, baseline_ref: str | None, ascent_images: int, work: Path,
              chosen: list[str] | None = None, compare_ref: str | None = None) -> None:
    model = ["--model", "ViT-B-32", "--pretrained", "none", "--device", "cpu"]
    photos = write_jpegs(work / "photos", images)
    few = write_jpegs(work / "few", small, seed=1)
    few_ascent = write_jpegs(work / "ascent", ascent_images, seed=2)
    # Warm the vocabulary cache once (a user's first scan pays it once per model; see the start-up table).
    scan_once(ROOT, few, work / "warm", [*model, "--opinion", "concepts", "--precision", "float32"])
    opinions = {"concepts": (photos, ["--opinion", "concepts"]),
                "probes": (photos, ["--opinion", "probes", "--words", ",".join(PROBES)]),
                "ascent": (few_ascent, ["--opinion", "ascent", "--steps", "20", "--views", "8"])}
    opinions = {k: v for k, v in opinions.items() if not chosen or k in chosen}
    rows = []
    if compare_ref:  # the same scans in bfloat16 with an earlier commit's code, for the ratio of a later change
        before = worktree(compare_ref, work / "compare-code")
        for opinion, (src, extra) in opinions.items():
            r = scan_once(before, src, work / f"{opinion}-compare", [*model, *extra, "--precision", "bfloat16"])
            rows.append((opinion, f"bfloat16 @ {compare_ref[:10]}", r))
    if baseline_ref:
        base = worktree(baseline_ref, work / "baseline-code")
        r = scan_once(base, photos, work / "base-concepts", [*model, "--opinion", "concepts"])
        rows.append(("concepts", f"float32 @ {baseline_ref[:10]}", r))
    for opinion, (src, extra) in opinions.items():
        for precision in ("float32", "bfloat16"):
            r = scan_once(ROOT, src, work / f"{opinion}-{precision}", [*model, *extra, "--precision", precision])
            rows.append((opinion, precision, r))
    print(f"{'opinion':<9} {'precision':<22} {'images':>6} {'wall s':>7} {'img/s all-in':>12} {'img/s model':>11}")
    for opinion, precision, r in rows:
        # The model's phase and the first pass (the concept mean's images, decoded and encoded once).
        model_s = (r["phases"].get("model") or float("nan")) + r["phases"].get("first_pass", 0.0)
        print(f"{opinion:<9} {precision:<22} {r['images']:>6} {r['wall']:>7.1f} {r['images'] / r['wall']:>12.1f} "
              f"{r['images'] / model_s:>11.1f}")
    by = {(o, p): r for o, p, r in rows}
    for opinion in opinions:
        bf, fp = by[(opinion, "bfloat16")], by[(opinion, "float32")]
        print(f"ratio: {opinion} all-in bfloat16 vs float32 = {fp['wall'] / bf['wall']:.2f}x")
        if compare_ref:
            print(f"ratio: {opinion} all-in bfloat16 vs bfloat16 @ {compare_ref[:10]} = "
                  f"{by[(opinion, f'bfloat16 @ {compare_ref[:10]}')]['wall'] / bf['wall']:.2f}x")
    if baseline_ref and "concepts" in opinions:
        bf = by[("concepts", "bfloat16")]
        today = by[("concepts", f"float32 @ {baseline_ref[:10]}")]
        print(f"ratio: concepts all-in bfloat16 vs {baseline_ref[:10]} = {today['wall'] / bf['wall']:.2f}x")
    for precision in ("float32", "bfloat16"):
        r = scan_once(ROOT, few, work / f"small-{precision}", [*model, "--opinion", "concepts", "--precision", precision])
        print(f"{small} images, concepts, {precision}: {r['wall']:.1f} s wall (scan.json: {r['seconds']:.1f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("speed", "faithful"))
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--small", type=int, default=16)
    ap.add_argument("--ascent-images", type=int, default=16)
    ap.add_argument("--baseline-ref", default=None, help="float32 concepts scan with this commit's code")
    ap.add_argument("--compare-ref", default=None, help="every chosen opinion in bfloat16 with this commit's code")
    ap.add_argument("--opinions", default="concepts,probes,ascent", help="comma-separated: which scans to time")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--faithful-images", type=int, default=48)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    if args.what == "faithful":
        run_faithful(args.model, args.faithful_images)
        return
    with tempfile.TemporaryDirectory(prefix="cpu-precision-") as tmp:
        try:
            run_speed(args.images, args.small, args.baseline_ref, args.ascent_images, Path(tmp),
                      args.opinions.split(","), args.compare_ref)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], capture_output=True)


if __name__ == "__main__":
    main()
