"""Every valid image of the kinds real datasets hold is scanned; none may end up in `errors`.

The corpus (tests/corpus.py) is generated at test time: photo and scrape sizes, every format and mode Pillow
writes, all EXIF orientations, hostile file names.
"""

import os

import pytest
from PIL import Image

import audit
from audit.sources import printable_path
from audit.sources.decode import fit, open_rgb

from .corpus import DROPPED_BEFORE, make_corpus, smooth

PROBE_ONLY = dict(words=("a photo",), opinion="probes", workers=0, quiet=True, device="cpu")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "photos"
    return root, make_corpus(root)


def test_every_corpus_file_decodes_to_its_oriented_size_and_fits_every_input(corpus):
    root, items = corpus
    assert len(items) == 56  # 23 formats and modes, 8 orientations, 20 sizes, 5 names
    for item in items:
        img = open_rgb(os.path.join(root, item.name), None)
        assert img.mode == "RGB" and img.size == item.size, item.name
        for size in (224, 336, 384):
            for mode in ("shortest", "longest", "squash"):
                assert fit(img, size, mode)[0].shape == (size, size, 3), (item.name, size, mode)


def test_a_scan_of_the_corpus_stores_every_image_and_no_error(corpus):
    root, items = corpus
    scan = audit.scan(root, root.parent / "scan", model="audit-tiny", pretrained="none", **PROBE_ONLY)
    errors = scan.errors()
    assert errors.empty, errors[["image_id", "reason"]].to_string()
    images = scan.images().set_index("image_id")
    want = {printable_path(i.name): i.size for i in items}
    assert set(images.index) == set(want)
    got = {i: (int(r.width), int(r.height)) for i, r in images.iterrows()}
    assert got == want
    assert len(scan.tokens()) == len(items) and len(scan.heatmaps()) == len(items)


def test_a_scan_at_224_pixels_stores_the_photo_sizes_that_were_dropped(tmp_path):
    """The sizes of issue #16 at the input of ViT-B-32, through the real model (random weights, probe only)."""
    root = tmp_path / "photos"
    root.mkdir()
    for w, h in DROPPED_BEFORE:
        smooth((w, h), seed=w).save(root / f"{w}x{h}.jpg", quality=80)
    scan = audit.scan(root, tmp_path / "scan", model="ViT-B-32", pretrained="none", **PROBE_ONLY)
    assert scan.errors().empty, scan.errors().reason.tolist()
    assert sorted(scan.images().image_id) == sorted(f"{w}x{h}.jpg" for w, h in DROPPED_BEFORE)
    assert scan.config["runs"][-1]["preprocess"]["size"] in (224, [224, 224])


def test_huge_thin_strips_are_not_blown_up(tmp_path):
    """A 20000x2 banner is valid: it is cropped inside the resize and scanned like any photo."""
    path = tmp_path / "banner.png"
    smooth((20000, 2)).save(path)
    img = open_rgb(str(path), None)
    arr, frame = fit(img, 224)
    assert arr.shape == (224, 224, 3) and frame[1] == 0.0 and frame[3] == 2.0
    assert Image.fromarray(arr).size == (224, 224)
