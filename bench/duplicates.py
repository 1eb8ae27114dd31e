"""How well `audit duplicates` finds copies, and what it costs at a million images.

quality: planted copies of real photographs (scikit-image's data images) and of demo scenes, one transform
family at a time (JPEG quality 30-90, resize 0.5-2x, crop up to 10%, brightness and contrast +-20%, horizontal
flip, rotation up to 5 degrees, a text or logo overlay, greyscale), among hard negatives (distinct demo scenes with
the same shape, colour and background; overlapping views cut from one photograph, which show the same subject).
Each model scans the folder (probe opinion, embeddings kept), then: recall per family and source, the precision of
the pairs put in one cluster, and the share of hard-negative pairs merged. Also the cost of fingerprinting.

scale: N synthetic embeddings (512-d, float16 as a scan stores them; 1% planted near copies) with random pHashes,
written as a scan's tables: the search's wall time and peak memory, and the recall of the inverted-file index's
copy pairs against exact search on a sample.

case: issue #42's copies case (150 unbiased demo scenes, north and south alternating, plus 25 near copies of one
north image), scanned with audit-demo (concepts, seconds; or --opinion ascent at the demo's settings, about six
minutes a scan): the watch rule's verdict with --copies keep and collapse, with and without the copies.

    .venv/bin/python bench/duplicates.py quality [--models audit-demo audit-tiny]
    .venv/bin/python bench/duplicates.py scale [--images 1000000] [--sample 100000]
    .venv/bin/python bench/duplicates.py case [--opinion concepts|ascent]
"""

from __future__ import annotations

import argparse
import io
import itertools
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

import audit
from audit.analysis.duplicates import (
    EXACT_SEARCH,
    CopySettings,
    Prints,
    copy_pairs,
    duplicates,
    read_prints,
)
from audit.demo.scenes import BACKGROUNDS, COLOURS, SHAPES, make_scene
from audit.store.reader import Scan

PHOTOS = ["astronaut", "camera", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
          "retina", "page", "text", "coins", "moon", "grass", "gravel", "brick", "colorwheel", "clock", "cell"]
FAMILIES = ["jpeg", "resize", "crop", "colour", "flip", "rotate", "overlay", "grey"]


def photo(name: str) -> Image.Image:
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def transform(img: Image.Image, family: str, rs: np.random.Generator) -> Image.Image:
    w, h = img.size
    if family == "jpeg":
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(rs.integers(30, 91)))
        return Image.open(buf).convert("RGB")
    if family == "resize":
        s = float(np.exp(rs.uniform(np.log(0.5), np.log(2))))
        return img.resize((max(8, round(w * s)), max(8, round(h * s))), Image.Resampling.BICUBIC)
    if family == "crop":
        f = rs.uniform(0.02, 0.10)
        dx, dy = round(w * f * rs.uniform(0, 1)), round(h * f * rs.uniform(0, 1))
        return img.crop((dx, dy, dx + round(w * (1 - f)), dy + round(h * (1 - f))))
    if family == "colour":
        img = ImageEnhance.Brightness(img).enhance(rs.uniform(0.8, 1.2))
        return ImageEnhance.Contrast(img).enhance(rs.uniform(0.8, 1.2))
    if family == "flip":
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if family == "rotate":
        return img.rotate(rs.uniform(-5, 5), resample=Image.Resampling.BICUBIC)
    if family == "overlay":
        out, side = img.copy(), max(w, h)
        draw = ImageDraw.Draw(out)
        if rs.random() < 0.5:
            draw.text((w * 0.05, h * 0.85), "(c) stock photo 2024", fill=(255, 255, 255))
            draw.text((w * 0.05, h * 0.05), "SAMPLE", fill=(255, 0, 0), font_size=max(10, side // 12))
        else:
            r, x, y = side // 10, int(w * 0.8), int(h * 0.8)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=(255, 40, 40))
            draw.rectangle((x - r // 2, y - r // 2, x + r // 2, y + r // 2), fill=(255, 255, 255))
        return out
    if family == "grey":
        return ImageOps.grayscale(img).convert("RGB")
    raise ValueError(family)


def make_set(root: Path, scenes: int = 60, negatives: int = 60, seed: int = 0) -> None:
    """base.png and base__family.png for every base; hard negatives neg-*.png (no copies of them)."""
    root.mkdir(parents=True, exist_ok=True)
    rs = np.random.default_rng(seed)
    bases = {f"photo-{n}": photo(n) for n in PHOTOS}
    bases |= {f"scene-{i:03d}": make_scene(900_000 + i, size=224).image for i in range(scenes)}
    for i in range(negatives):  # two scenes with one shape, colour and background, drawn from other seeds
        attrs = dict(n_objects=1, shape=SHAPES[i % 8], colour=list(COLOURS)[(i // 8) % 8],
                     background=BACKGROUNDS[i % 5])
        make_scene(800_000 + i, size=224, **attrs).image.save(root / f"neg-scene-{i:03d}-a.png")
        make_scene(700_000 + i, size=224, **attrs).image.save(root / f"neg-scene-{i:03d}-b.png")
    for n in PHOTOS:  # three views of one photograph, each half its width, overlapping by a quarter
        im = photo(n)
        w, h = im.size
        for k, x0 in enumerate((0.0, 0.25, 0.5)):
            im.crop((round(x0 * w), 0, round((x0 + 0.5) * w), h)).save(root / f"neg-view-{n}-{k}.png")
    for name, im in bases.items():
        im.save(root / f"{name}.png")
        for family in FAMILIES:
            transform(im, family, rs).save(root / f"{name}__{family}.png")


def truth(image_id: str) -> str:
    """What an image is a copy of: its base (a hard negative is its own)."""
    return image_id.split("__")[0].removesuffix(".png")


def quality(found: pd.DataFrame, ids: list[str]) -> tuple[pd.DataFrame, float, int, int, float]:
    cluster = dict(zip(found.image_id, found.cluster, strict=True))
    rows = []
    for i in ids:
        if "__" in i:
            base = truth(i) + ".png"
            rows.append((i.split("__")[1].removesuffix(".png"), "photo" if i.startswith("photo") else "scene",
                         i in cluster and cluster.get(base) == cluster[i]))
    recall = pd.DataFrame(rows, columns=["family", "source", "found"]).groupby(["family", "source"]).found.mean()
    true = false = 0
    for _, members in found.groupby("cluster"):
        for a, b in itertools.combinations(members.image_id, 2):
            same = truth(a) == truth(b)
            true, false = true + same, false + (not same)
    hard = [(i, i.replace("-a.png", "-b.png")) for i in ids if i.startswith("neg-scene-") and i.endswith("-a.png")]
    hard += [(f"neg-view-{n}-{k}.png", f"neg-view-{n}-{k + 1}.png") for n in PHOTOS for k in (0, 1)]
    merged = sum(a in cluster and cluster.get(b) == cluster[a] for a, b in hard)
    return recall.unstack(), true / max(true + false, 1), true, false, merged / len(hard)


def hash_distances(p: Prints) -> None:
    """How far each family's copies are from their original in pHash bits (the fewer of direct and mirrored), and
    how close different images come: what the hash thresholds were calibrated on."""
    from audit.analysis.duplicates import hamming

    ids = [str(i) for i in p.ids]
    at = {i: k for k, i in enumerate(ids)}
    ph, mi, has = p.phash, p.mirror, p.has_hash
    rows = []
    for k, i in enumerate(ids):
        if "__" in i:
            b = at[truth(i) + ".png"]
            rows.append((i.split("__")[1].removesuffix(".png"), "photo" if i.startswith("photo") else "scene",
                         int(min(hamming(ph[k], ph[b]), hamming(ph[k], mi[b])))))
    table = pd.DataFrame(rows, columns=["family", "source", "bits"]).groupby(["family", "source"]).bits
    print("pHash bits between a copy and its original (median / max):")
    print(table.agg(lambda b: f"{int(b.median())}/{int(b.max())}").unstack().T.to_string())
    base = np.array([k for k, i in enumerate(ids) if "__" not in i and has[k]])
    d = np.minimum(hamming(ph[base][:, None], ph[base][None, :]), hamming(ph[base][:, None], mi[base][None, :]))
    d[np.arange(len(base)), np.arange(len(base))] = 99
    photos = np.array([ids[k].startswith(("photo-", "neg-view-")) for k in base])
    views = np.array([ids[k].startswith("neg-view-") for k in base])
    same_photo = np.array([[views[a] and views[b] and ids[base[a]].rsplit("-", 1)[0] == ids[base[b]].rsplit("-", 1)[0]
                            for b in range(len(base))] for a in range(len(base))])
    both = photos[:, None] & photos[None, :] & ~same_photo
    print(f"closest pair of different images: {int(d.min())} bits; of different photographs: {int(d[both].min())} "
          f"bits; of two views of one photograph: {int(d[same_photo].min())} bits")


def run_quality(models: list[str], work: Path) -> None:
    data = work / "copies"
    make_set(data)
    print(f"images: {len(list(data.iterdir()))} ({len(PHOTOS)} photographs and 60 demo scenes, each with one copy "
          f"per family; {60} pairs of distinct scenes with one shape, colour and background and {len(PHOTOS) * 2} "
          "pairs of overlapping views of one photograph as hard negatives)")
    for model in models:
        scan = work / f"scan-{model}"
        audit.scan(data, scan, model=model, pretrained="none" if model == "audit-tiny" else "auto",
                   opinion="probes", words=("a photo",), heatmap="legrad", workers=0, quiet=True, overwrite=True)
        ids = list(Scan(scan).images().image_id)
        if model == models[0]:
            hash_distances(read_prints(Scan(scan)))
        for label, settings in (("default", None),
                                ("pHash alone (no embedding clause)", CopySettings(min_cosine=2.0, tight_cosine=None))):
            found = duplicates(scan, settings=settings, store=False)
            recall, precision, true, false, merged = quality(found.copies, ids)
            print(f"\n{model}, {label}: {found.settings}")
            print(recall.round(2).T.to_string())
            print(f"precision of pairs in one cluster: {precision:.3f} ({true} true, {false} false); hard-negative "
                  f"pairs merged: {merged:.1%}")


def run_fingerprint_cost() -> None:
    from audit.sources.decode import decode
    from audit.sources.fingerprint import fingerprint

    pre = {"size": 224, "mean": [0, 0, 0], "std": [1, 1, 1]}
    print("\nfingerprint cost per image (decode + fit to 224 px, as the scan's loader does, against the fingerprints "
          "alone):")
    for side in (256, 512, 1024, 4000):
        im = photo("astronaut").resize((side, side * 3 // 4))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        data = buf.getvalue()
        n = 200 if side <= 512 else 10
        t0 = time.perf_counter()
        for _ in range(n):
            decode("x.jpg", pre, None, data)
        t1 = time.perf_counter()
        for _ in range(n):
            fingerprint(im)
        t2 = time.perf_counter()
        d, f = (t1 - t0) / n * 1000, (t2 - t1) / n * 1000
        print(f"  {side}x{side * 3 // 4}: decode+fit+fingerprint {d:.2f} ms, of which fingerprint {f:.2f} ms "
              f"({f / d:.0%})")


def write_synthetic(root: Path, n: int, dim: int = 512, seed: int = 0) -> None:
    """A scan directory with n images' rows and embeddings: random unit vectors, 1% of them near copies of
    another (the same vector plus noise at cosine about 0.98, a pHash a few bits off)."""
    import pyarrow as pa

    from audit.store.schema import embeddings_table
    from audit.store.writer import ScanWriter

    rs = np.random.default_rng(seed)
    writer = ScanWriter.open(root, {"model": "ViT-B-32", "pretrained": "none"}, {"kind": "synthetic"},
                             overwrite=True)
    writer.commit_seconds = 1e9
    base = 0
    part = 65536
    for lo in range(0, n, part):
        m = min(part, n - lo)
        v = rs.standard_normal((m, dim), dtype=np.float32)
        h = rs.integers(-2**63, 2**63 - 1, m, dtype=np.int64)
        copies = rs.choice(m, m // 100, replace=False)
        src = (copies + 1 + rs.integers(0, m - 1, len(copies))) % m
        v[copies] = v[src] + 0.2 * rs.standard_normal((len(copies), dim), dtype=np.float32)
        flip = np.int64(1) << rs.integers(0, 63, len(copies)).astype(np.int64)
        h[copies] = h[src] ^ flip
        ids = [f"img-{base + k:08d}" for k in range(m)]
        images = pa.table({"image_id": ids, "path": ids, "label": ["a"] * m, "width": pa.array([1] * m, pa.int32()),
                           "height": pa.array([1] * m, pa.int32()), "pixel_sha256": [f"{base + k:064x}" for k in range(m)],
                           "phash": h, "phash_mirror": ~h})
        writer.write_unit({"images": images, "embeddings": embeddings_table(pa.array(ids), v, "float16")})
        base += m
    writer.record_run({"images": n})
    writer.close()


def pairs_set(i: np.ndarray, j: np.ndarray) -> set:
    return set(zip(i.tolist(), j.tolist(), strict=True))


def run_scale(n: int, sample: int, work: Path) -> None:
    import multiprocessing

    root = work / f"synthetic-{n}"
    t0 = time.perf_counter()
    writer = multiprocessing.get_context("spawn").Process(target=write_synthetic, args=(root, n))
    writer.start()  # in a process of its own, so that the peak memory below is the search's alone
    writer.join()
    print(f"wrote {n} synthetic images in {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    found = duplicates(root, store=False)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{n} images: {found.clusters} clusters, {found.collapsed} copies collapsed, in {seconds:.0f} s; peak memory "
          f"{peak:.2f} GB")
    # The index's recall: the confirmed copy pairs of a sample, approximate index against exact search.
    p = read_prints(Scan(root))
    keep = np.sort(np.random.default_rng(1).choice(len(p), sample, replace=False))
    s = Prints(p.ids[keep], p.sha[keep], p.phash[keep], p.mirror[keep], p.has_hash[keep], p.vectors[keep])
    settings = CopySettings.for_model("ViT-B-32")
    from audit.analysis import duplicates as module

    def confirmed(exact: bool) -> set:
        old = module.EXACT_SEARCH
        module.EXACT_SEARCH = sample if exact else 0
        try:
            i, j, _, _ = copy_pairs(s, s, settings, same=True)
        finally:
            module.EXACT_SEARCH = old
        return pairs_set(i, j)

    t0 = time.perf_counter()
    exact = confirmed(True)
    t1 = time.perf_counter()
    approx = confirmed(False)
    t2 = time.perf_counter()
    print(f"sample of {sample}: exact search {t1 - t0:.0f} s, {len(exact)} copy pairs; index {t2 - t1:.0f} s, "
          f"recall {len(exact & approx) / max(len(exact), 1):.4f} (exact search is used up to {EXACT_SEARCH} images)")


def run_case(work: Path, opinion: str) -> None:
    from audit.demo import DEMO_SETTINGS

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.copies_case import POLICY, make_case

    policy = work / "policy.toml"
    kind = 'kind = "concept"\n' if opinion == "concepts" else ""
    policy.write_text(POLICY.replace("words = ", kind + "words = "), encoding="utf-8")
    for copies in (25, 0):
        manifest = make_case(work / f"data-{copies}", copies)
        scan = work / f"scan-{copies}"
        t0 = time.perf_counter()
        settings = DEMO_SETTINGS if opinion == "ascent" else {}
        audit.scan(manifest, scan, model="audit-demo", opinion=opinion, workers=0, quiet=True, overwrite=True,
                   **settings)
        print(f"\n{'with' if copies else 'without'} the 25 copies ({opinion}; scan {time.perf_counter() - t0:.0f} s)")
        for mode in ("keep", "collapse"):
            out = audit.check(scan, policy, copies=mode)
            print(f"  --copies {mode}: exit {out.exit_code}; {out.rules[0].summary}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("quality", "scale", "case"))
    ap.add_argument("--models", nargs="+", default=["audit-demo", "audit-tiny"])
    ap.add_argument("--images", type=int, default=1_000_000)
    ap.add_argument("--sample", type=int, default=100_000)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--opinion", choices=("concepts", "ascent"), default="concepts",
                    help="case: the words the watch rule reads (ascent: the demo's settings, minutes a scan)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = a.work or Path(tmp)
        if a.what == "quality":
            run_quality(a.models, work)
            run_fingerprint_cost()
        elif a.what == "scale":
            run_scale(a.images, a.sample, work)
        else:
            run_case(work, a.opinion)


if __name__ == "__main__":
    main()
