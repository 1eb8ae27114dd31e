"""Second passes on every source kind: the demo's images stored as a folder, a manifest, WebDataset shards, a
Parquet file and a Hugging Face dataset give the same verification verdicts, the same report thumbnails, the same
explain drawings and the same `ask --heatmaps` maps, each image read again by its stored key."""

from __future__ import annotations

import re

import numpy as np
import pytest

import audit
from audit.errors import AuditError
from audit.sources.access import SourceImages, open_fetched

from .source_kinds import stem, write_kinds

KINDS = ("folder", "manifest", "webdataset", "parquet", "hf")


@pytest.fixture(scope="module")
def kind_scans(tmp_path_factory):
    from audit.demo import make_dataset

    root = tmp_path_factory.mktemp("kinds")
    manifest = make_dataset(root / "data", images=60)
    scans = {}
    for kind, (location, extra) in write_kinds(manifest, root / "stored").items():
        scan = audit.scan(location, root / f"scan-{kind}", model="audit-demo", opinion="concepts", workers=0,
                          device="cpu", quiet=True, **extra)
        assert scan.config["source"]["kind"] == kind and len(scan.images()) == 60
        scans[kind] = root / f"scan-{kind}"
    return scans


def test_every_kind_reads_its_images_again_by_key(kind_scans):
    want = None
    for kind in KINDS:
        scan = audit.Scan(kind_scans[kind])
        images = scan.images().sort_values("image_id")
        got = SourceImages(scan.config["source"]).fetch(zip(images.image_id, images.path, strict=True))
        assert all(f.error is None for f in got.values()), kind
        pixels = {stem(i): np.asarray(open_fetched(f)) for i, f in got.items()}
        if want is None:
            want = pixels
        assert pixels.keys() == want.keys() and all(np.array_equal(pixels[k], want[k]) for k in want), kind


def test_verify_gives_the_same_verdicts_on_every_kind(kind_scans):
    verdicts = {}
    for kind in KINDS:
        summary = audit.verify(kind_scans[kind], group_by="label", faithfulness_images=4,
                               min_count=3, device="cpu", quiet=True)
        rows = summary.grounding
        assert len(rows) >= 1, kind
        # The verdicts; their numbers differ in the random cells, which each image's id seeds.
        verdicts[kind] = [(r.grp, r.word, r.verdict, r.images) for r in rows.itertuples()]
        faith = summary.faithfulness.set_index("method")
        assert faith.images.min() == 4, kind  # every sampled image read again
    assert ("north", "grass", "grounded") == verdicts["folder"][0][:3]
    assert all(v == verdicts["folder"] for v in verdicts.values()), verdicts


def _thumbnails(html: str) -> list[str]:
    return re.findall(r"data:image/png;base64,[A-Za-z0-9+/=]+", html)


def test_the_report_shows_the_same_thumbnails_from_every_kind(kind_scans):
    shown = {kind: _thumbnails(audit.report(kind_scans[kind], "label", min_count=3).html) for kind in KINDS}
    assert len(shown["folder"]) >= 4
    assert all(v == shown["folder"] for v in shown.values()), {k: len(v) for k, v in shown.items()}


def test_explain_draws_a_scans_images_whatever_its_kind(kind_scans, tmp_path):
    drawn = {}
    for kind in KINDS:
        ids = sorted(audit.Scan(kind_scans[kind]).images().image_id, key=stem)[:3]
        done = audit.explain([kind_scans[kind]], tmp_path / kind, images=ids)
        assert len(done) == 3, kind
        assert all(d.mosaic.is_file() for d in done), kind
        # Each word's tile (the mosaic's first tile names the image, by its id).
        drawn[kind] = {(stem(d.image_id), w.word): w.tile.read_bytes() for d in done for w in d.words}
    assert len(drawn["folder"]) >= 3 and all(v == drawn["folder"] for v in drawn.values())
    with pytest.raises(AuditError, match="has no image 'nope'"):
        audit.explain([kind_scans["parquet"]], tmp_path / "x", images=["nope"])


def test_ask_heatmaps_on_every_kind(kind_scans, tmp_path):
    maps = {}
    for kind in KINDS:
        asked = audit.ask(kind_scans[kind], tmp_path / kind, words="grass,snow", heatmaps=True, device="cpu",
                          quiet=True)
        heat = asked.heatmaps()
        assert len(heat) == 120, kind  # every image read again: 60 images, 2 words
        maps[kind] = {(stem(i), w): np.asarray(g) for i, w, g in zip(heat.image_id, heat.word, heat.grid,
                                                                    strict=True)}
    for kind in KINDS:
        assert maps[kind].keys() == maps["folder"].keys()
        assert all(np.array_equal(maps[kind][k], maps["folder"][k]) for k in maps["folder"]), kind
