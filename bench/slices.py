"""What `audit slices` finds, how well it names it, and what it costs at a million images.

planted: per seed, 200 single-object demo scenes in two groups (a, b), scanned with audit-demo (concepts). A
slice of 10% of them is planted: one combination of shape, colour and background (drawn per seed) that no other
scene has and no column names. In the skewed set it lies 80/20 across a and b; in the null set 50/50, and nothing
else differs between the groups. For each seed: the precision-at-10 of the best-matching slice (the images
nearest its centroid, Domino's DCBench measure), whether its top-3 stored words and top-3 vocabulary words name
the planted attributes, whether the skew is flagged (skewed set) and whether anything is flagged (null set).

labels: the same kind of scans with the label = the scene's shape, colour or background (--label-by; which
audit-demo's embeddings predict, shape best), 5% of labels flipped to another value: the AUPRC of audit's out-of-fold probe (1 - probability of the given label)
against the flips, beside cleanlab's own kNN label check (Datalab with the same embeddings).

scale: N synthetic embeddings (512-d, float16 as stored; 30 clusters, a label that follows the cluster with 2%
flipped, one concept word per image) written as a scan: `audit slices --labels label --copies keep` wall time
and peak memory (a child process's max RSS).

    .venv/bin/python bench/slices.py planted [--seeds 20] [--images 200]
    .venv/bin/python bench/slices.py labels [--seeds 5] [--label-by shape|colour|background]
    .venv/bin/python bench/slices.py scale [--images 1000000]
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_set(root: Path, images: int, seed: int, planted_share: float = 0.1, skew: float | None = 0.8,
             label_by: str | None = None, flip: float = 0.0) -> tuple[set[str], tuple[str, str, str], set[str]]:
    """Scenes and manifest.csv (path, label); returns (planted ids, the planted (shape, colour, background),
    flipped ids)."""
    from audit.demo.scenes import BACKGROUNDS, COLOURS, SHAPES, make_scene

    rs = np.random.RandomState(seed)
    colours = list(COLOURS)
    combo = (SHAPES[rs.randint(len(SHAPES))], colours[rs.randint(len(colours))],
             BACKGROUNDS[rs.randint(len(BACKGROUNDS))])
    groups = np.array(["a", "b"] * (images // 2))
    n_planted = int(round(planted_share * images))
    if skew is None:
        planted = rs.choice(images, n_planted, replace=False)
    else:
        a, b = np.flatnonzero(groups == "a"), np.flatnonzero(groups == "b")
        k = int(round(skew * n_planted))
        planted = np.concatenate([rs.choice(a, k, replace=False), rs.choice(b, n_planted - k, replace=False)])
    is_planted = np.zeros(images, bool)
    is_planted[planted] = True
    rows, planted_ids, flipped = ["path,label,group"], set(), set()
    for i in range(images):
        if is_planted[i]:
            shape, colour, background = combo
        else:
            while True:
                shape, colour, background = (SHAPES[rs.randint(len(SHAPES))], colours[rs.randint(len(colours))],
                                             BACKGROUNDS[rs.randint(len(BACKGROUNDS))])
                if (shape, colour, background) != combo:
                    break
        scene = make_scene(seed * 100_000 + i, size=128, n_objects=1, shape=shape, colour=colour,
                           background=background)
        rel = f"{i:04d}.png"
        scene.image.save(root / rel)
        label = groups[i]
        if label_by is not None:
            values = {"shape": list(SHAPES), "colour": colours, "background": list(BACKGROUNDS)}[label_by]
            label = {"shape": shape, "colour": colour, "background": background}[label_by]
            if rs.rand() < flip:
                label = values[(values.index(label) + 1 + rs.randint(len(values) - 1)) % len(values)]
                flipped.add(rel)
        rows.append(f"{rel},{label},{groups[i]}")
        if is_planted[i]:
            planted_ids.add(rel)
    (root / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return planted_ids, combo, flipped


def best_match(rows: pd.DataFrame, members: set[str]) -> int:
    """The slice (of either level) that best matches a planted set: the highest F1 of its images against it."""
    inside = rows.assign(hit=rows.image_id.isin(members)).groupby("slice").agg(n=("hit", "size"), hit=("hit", "sum"))
    f1 = 2 * inside.hit / (inside.n + len(members))
    return int(f1.idxmax())


def scan_set(root: Path) -> Path:
    from audit.scanner.pipeline import run_scan

    run_scan(str(root / "manifest.csv"), str(root / "scan"), model="audit-demo", pretrained="auto", workers=0,
             device="cpu", quiet=True, opinion="concepts")
    return root / "scan"


def run_planted(seeds: int, images: int, work: Path) -> None:
    import audit

    rows = []
    for seed in range(seeds):
        for skewed in (True, False):
            root = work / f"planted-{seed}-{int(skewed)}"
            root.mkdir(parents=True)
            members, combo, _ = make_set(root, images, seed, skew=0.8 if skewed else 0.5)
            scan = scan_set(root)
            # The planted scenes are distinct renders, but flat synthetic scenes of one combination sit within
            # the pHash rule of each other, so collapsing copies would count many as one: kept here.
            found = audit.slices(scan, by=["group"], vocabulary="default", device="cpu", seed=seed, copies="keep")
            best = best_match(found.slices, members)
            nearest = found.slices[found.slices.slice == best].nlargest(10, "cosine").image_id
            top_stored = found.words_of(best, "stored")[:3]
            top_vocab = found.words_of(best, "vocabulary")[:3]
            flagged = found.flagged
            rows.append({"seed": seed, "skewed": skewed, "k": found.k, "combo": "/".join(combo),
                         "p_at_10": float(nearest.isin(members).mean()),
                         "stored_named": len(set(top_stored) & set(combo)),
                         "vocab_named": len(set(top_vocab) & set(combo)),
                         "planted_flagged": bool(((flagged.slice == best) & (flagged.value == "a")).any()),
                         "any_flagged": bool(len(flagged)),
                         "stored": ",".join(top_stored), "vocabulary": ",".join(top_vocab)})
            print(rows[-1], flush=True)
    t = pd.DataFrame(rows)
    sk, null = t[t.skewed], t[~t.skewed]
    print()
    print(f"planted slices ({seeds} seeds, {images} scenes, 10% planted): "
          f"precision-at-10 >= 0.8 in {(t.p_at_10 >= 0.8).mean():.0%} of sets (mean {t.p_at_10.mean():.2f})")
    for what, col in (("stored words", "stored_named"), ("vocabulary words", "vocab_named")):
        print(f"  top-3 {what} name all 3 planted attributes in {(t[col] == 3).mean():.0%} of sets, "
              f"at least 2 in {(t[col] >= 2).mean():.0%}, at least 1 in {(t[col] >= 1).mean():.0%}")
    print(f"  80/20 skew flagged in {sk.planted_flagged.mean():.0%} of seeds; null sets (50/50) flag nothing in "
          f"{(~null.any_flagged).mean():.0%} of seeds")


def run_labels(seeds: int, images: int, work: Path, label_by: str) -> None:
    from cleanlab import Datalab
    from sklearn.metrics import average_precision_score

    from audit.analysis.slices import SliceSettings, out_of_fold
    from audit.store.reader import Scan

    for seed in range(seeds):
        root = work / f"labels-{label_by}-{seed}"
        root.mkdir(parents=True)
        _, _, flipped = make_set(root, images, 1000 + seed, planted_share=0.0, skew=None, label_by=label_by,
                                 flip=0.05)
        scan = Scan(scan_set(root))
        oof = out_of_fold(scan, "label", SliceSettings(seed=seed))
        truth = np.array([i in flipped for i in oof.ids])
        ours = average_precision_score(truth, 1 - oof.probs[np.arange(len(oof.ids)), oof.given])
        ids, emb = scan.embeddings()
        order = np.argsort(np.asarray(ids, dtype=object))
        ids, emb = np.asarray(ids, dtype=object)[order], emb[order]
        labels = scan.df("images").set_index("image_id").label.reindex(ids)
        lab = Datalab(data={"label": list(labels)}, label_name="label", verbosity=0)
        lab.find_issues(features=emb / np.linalg.norm(emb, axis=1, keepdims=True), issue_types={"label": {}})
        theirs = average_precision_score(np.array([i in flipped for i in ids]),
                                         1 - lab.get_issues("label").label_score.to_numpy())
        print(f"label = {label_by}, seed {seed}: {len(flipped)} of {len(ids)} labels flipped; AUPRC audit probe {ours:.3f}, "
              f"cleanlab Datalab kNN {theirs:.3f}; probe accuracy note: {oof.notes[-1]}", flush=True)


def write_synthetic(root: Path, n: int, dim: int = 512, clusters: int = 30, seed: int = 0) -> None:
    import pyarrow as pa

    from audit.store.schema import embeddings_table
    from audit.store.writer import ScanWriter

    rs = np.random.default_rng(seed)
    centres = rs.standard_normal((clusters, dim), dtype=np.float32)
    writer = ScanWriter.open(root, {"model": "ViT-B-32", "pretrained": "none", "opinions": ["concepts"]},
                             {"kind": "synthetic"}, overwrite=True)
    writer.commit_seconds = 1e9
    part = 65536
    for lo in range(0, n, part):
        m = min(part, n - lo)
        which = rs.integers(0, clusters, m)
        v = centres[which] + 1.5 * rs.standard_normal((m, dim), dtype=np.float32)
        label = which % 10
        flip = rs.random(m) < 0.02
        label[flip] = rs.integers(0, 10, flip.sum())
        ids = [f"img-{lo + k:08d}" for k in range(m)]
        images = pa.table({"image_id": ids, "path": ids, "label": [f"l{x}" for x in label],
                           "width": pa.array([1] * m, pa.int32()), "height": pa.array([1] * m, pa.int32())})
        tokens = pa.table({"image_id": ids, "kind": ["concept"] * m, "word": [f"word{x}" for x in which],
                           "word_rank": [0] * m, "seq_rank": [-1] * m, "seq_text": [f"word{x}" for x in which],
                           "seq_cosine": pa.array([0.2] * m, pa.float32()),
                           "word_cosine": pa.array([0.2] * m, pa.float32()),
                           "weight": pa.array([0.1] * m, pa.float32())})
        writer.write_unit({"images": images, "tokens": tokens,
                           "embeddings": embeddings_table(pa.array(ids), v, "float16")})
    writer.record_run({"images": n})
    writer.close()


def run_scale(n: int, work: Path) -> None:
    root = work / "scale"
    t = time.perf_counter()
    write_synthetic(root, n)
    print(f"wrote {n} synthetic images in {time.perf_counter() - t:.0f} s", flush=True)
    code = ("import resource, sys, time, logging; logging.basicConfig(level=logging.INFO, format='%(message)s');"
            "import audit; t = time.perf_counter();"
            f"f = audit.slices({str(root)!r}, labels='label', copies='keep');"
            "print(f'slices: {f.images} images, k={f.k}, {len(f.label_issues)} label-issue candidates, "
            "flagged {len(f.flagged)}; {time.perf_counter() - t:.0f} s; peak memory "
            "{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB')")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("planted", "labels", "scale"))
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--label-by", choices=("shape", "colour", "background"), default="shape")
    args = ap.parse_args()
    logging.getLogger("audit").setLevel(logging.WARNING)
    work = args.work or Path(tempfile.mkdtemp(prefix="audit-slices-"))
    if args.what == "planted":
        run_planted(args.seeds, args.images or 200, work)
    elif args.what == "labels":
        run_labels(args.seeds, args.images or 400, work, args.label_by)
    else:
        run_scale(args.images or 1_000_000, work)


if __name__ == "__main__":
    main()
