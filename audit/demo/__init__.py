"""`audit demo`: a generated dataset with a planted bias, scanned offline with the project's own CLIP.

Photos of one object each from three camera sites; `label` is the site, and every site photographs the same
objects (shapes and colours). The planted, spurious correlation: the north site shot most of its photos on
grass, the other sites rarely did. Nothing else differs between sites, so a classifier of sites could learn
"grass", and an audit that links "grass" to label=north has found the bias. (Labels are not shapes on
purpose: a model's shape confusions would then be real findings of their own and hide the planted one.)
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from audit.demo.scenes import BACKGROUNDS, COLOURS, SHAPES, make_scene
from audit.formats import percent, q_value

LABELS = ("north", "south", "west")
# The documented example policy (examples/audit-policy.toml links here); the demo gates on it.
POLICY = Path(__file__).with_name("audit-policy.toml")
# Measured with bench/demo_time.py to keep `make demo` within its time budget on a 2-core CPU.
log = logging.getLogger("audit.demo")
DEMO_SETTINGS = dict(steps=40, candidates=8, views=16)


def make_dataset(root: Path, images: int = 48, seed: int = 0, bias: float = 0.9, size: int = 128) -> Path:
    """Images in label folders plus manifest.csv (path, label, shape, colour, background, box). With a bias,
    a share `bias` of the north site's photos lie on grass and a share 1 - bias of each other site's; with
    bias None every site has each background equally often."""
    rs = np.random.RandomState(seed)
    rows = ["path,label,shape,colour,background,x0,y0,x1,y1"]
    others = [b for b in BACKGROUNDS if b != "grass"]
    # Shares are exact and every site photographs the same objects: drawn at random per image, 20 photos a
    # site can give one site twice the circles of another, and the words a model attaches to circles then
    # look like a site bias (and an unbiased dataset can show a grass bias of its own).
    colours = list(COLOURS)
    per_site = -(-images // len(LABELS))
    objects = [(SHAPES[j % len(SHAPES)], colours[(j + j // len(SHAPES)) % len(colours)]) for j in range(per_site)]
    objects = [objects[k] for k in rs.permutation(per_site)]
    backgrounds = {}
    for label in LABELS:
        if bias is None:
            site = [BACKGROUNDS[j % len(BACKGROUNDS)] for j in range(per_site)]
        else:
            grass = round((bias if label == LABELS[0] else 1 - bias) * per_site)
            site = ["grass"] * grass + [others[j % len(others)] for j in range(per_site - grass)]
        backgrounds[label] = [site[k] for k in rs.permutation(per_site)]
    for i in range(images):
        label = LABELS[i % len(LABELS)]
        background = backgrounds[label][i // len(LABELS)]
        shape, colour = objects[i // len(LABELS)]
        scene = make_scene(seed * 100_000 + i, size=size, n_objects=1, shape=shape, colour=colour,
                           background=background)
        rel = f"{label}/{i:04d}.png"
        (root / label).mkdir(parents=True, exist_ok=True)
        scene.image.save(root / rel)
        x0, y0, x1, y1 = scene.objects[0].box
        rows.append(f"{rel},{label},{shape},{colour},{background},{x0},{y0},{x1},{y1}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return manifest


def run_demo(out: str | Path, images: int = 60, quiet: bool = False, device: str = "auto",
             opinion: str = "ascent") -> Path:
    """Dataset, scan (with the given opinion: ascent, concepts or both), report and policy check; says where to
    look (logger "audit.demo"). Returns the report's path."""
    from audit.analysis.associations import associations
    from audit.outputs.check_output import write_outputs
    from audit.outputs.explain import render
    from audit.outputs.report import build_report
    from audit.policy.parse import load_policy
    from audit.policy.rules import run_check
    from audit.scanner.pipeline import run_scan
    from audit.store.query import ScanQuery

    out = Path(out)
    manifest = make_dataset(out / "dataset", images=images)
    run_scan(str(manifest), str(out / "scan"), model="audit-demo", pretrained="auto", workers=0, device=device,
             quiet=quiet, opinion=opinion, **DEMO_SETTINGS)
    report = build_report(out / "scan", ["label"], out / "report.html", min_count=3,
                          title="audit demo: a planted bias")
    kind = "concept" if opinion == "concepts" else "ascent"
    found = associations(ScanQuery.open(out / "scan"), "label", min_count=3, kind=kind).findings
    log.info(f"\nDemo dataset: {manifest} ({images} photos from three sites, label = site; planted bias: the north "
          "site shot 90% of its photos on grass, the others 10%; the same objects everywhere)")
    log.info(f"Scan: {out / 'scan'} (Parquet tables images, tokens, heatmaps, errors, embeddings)")
    if len(found):
        top = found.iloc[0]
        what = "the concept " if kind == "concept" else ""
        log.info(f"Top finding: CLIP links {what}'{top.word}' to label={top.grp} ({percent(top.share_group)} of its images vs "
                 f"{percent(top.share_rest)} of the rest, q={q_value(top.q)}); {len(found)} finding(s) in all")
        # Two of those photos drawn from the stored rows, as `audit explain` draws them.
        q = ScanQuery.open(out / "scan")
        ids = set(q.examples("label", top.grp, top.word, 2, kind=kind).image_id)
        for e in render(out / "scan", out / "explain", only=ids):
            log.info(f"Mosaic of every word's heatmap on {e.image_id}: {e.mosaic}; its best token sequences "
                     f"as text: {e.opinion}")
    else:
        log.info("No association beyond the labels' own names was flagged.")
    log.info(f"Report: {report} (open it in a browser)")
    checked = run_check(out / "scan", load_policy(POLICY))
    write_outputs(checked, junit_path=out / "check-junit.xml", json_path=out / "check.json",
                  markdown_path=out / "check.md")
    failed = [r.rule.id for r in checked.results if r.status == "fail"]
    log.info(f"Policy check (`audit check {out / 'scan'} --policy {POLICY.name}`): exit {checked.exit_code}"
          + (f", failed: {', '.join(failed)}" if failed else ", every rule passed")
          + f"; summary in {out / 'check.md'}")
    return report
