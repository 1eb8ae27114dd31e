"""The scene generator: deterministic, varied, and labelled with words CLIP can say in one token."""

import numpy as np
import open_clip
import pytest

from audit.demo.scenes import BACKGROUNDS, COLOURS, SHAPES, captions, make_scene, texture


def test_vocabulary_sizes_and_single_tokens():
    assert len(SHAPES) >= 8 and len(COLOURS) >= 8 and len(BACKGROUNDS) >= 5
    tok = open_clip.get_tokenizer("ViT-B-32")
    for word in (*SHAPES, *COLOURS, *BACKGROUNDS):
        assert len(tok.encode(word)) == 1, word


def test_same_seed_same_scene():
    a, b = make_scene(123, size=64), make_scene(123, size=64)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert [(o.shape, o.colour, o.box) for o in a.objects] == [(o.shape, o.colour, o.box) for o in b.objects]
    assert not np.array_equal(np.asarray(a.image), np.asarray(make_scene(124, size=64).image))


@pytest.mark.parametrize("bg", BACKGROUNDS)
def test_backgrounds_are_textures_not_flat_fills(bg):
    t = texture(bg, 64, np.random.RandomState(0)).astype(float)
    assert t.std(axis=(0, 1)).max() > 3.0


def test_backgrounds_differ_from_each_other():
    means = [texture(bg, 64, np.random.RandomState(0)).reshape(-1, 3).mean(0) for bg in BACKGROUNDS]
    for i in range(len(means)):
        for j in range(i + 1, len(means)):
            assert np.abs(means[i] - means[j]).max() > 20


def test_two_object_scenes_have_distinct_separate_objects():
    for seed in range(40):
        s = make_scene(seed, size=64, n_objects=2)
        a, b = s.objects
        assert a.shape != b.shape and a.colour != b.colour
        assert not (a.mask & b.mask).any()
        for o in s.objects:
            ys, xs = np.nonzero(o.mask)
            assert o.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            # the object is drawn in its colour
            pix = np.asarray(s.image)[o.mask].astype(float).mean(0)
            assert np.abs(pix - np.array(COLOURS[o.colour])).max() < 40


def test_attributes_can_be_forced_and_captions_name_them():
    s = make_scene(7, size=96, n_objects=1, shape="heart", colour="purple", background="snow")
    assert (s.objects[0].shape, s.objects[0].colour, s.background) == ("heart", "purple", "snow")
    assert s.image.size == (96, 96)
    caps = captions(s)
    assert len(set(caps)) >= 3 and all("purple heart" in c and "snow" in c for c in caps)
    two = make_scene(8, size=64, n_objects=2)
    assert all(two.objects[0].shape in c and two.objects[1].shape in c for c in captions(two))


def test_shapes_vary_in_position_scale_and_rotation():
    boxes = [make_scene(s, size=64, n_objects=1, shape="square").objects[0].box for s in range(30)]
    centres = {((b[0] + b[2]) // 8, (b[1] + b[3]) // 8) for b in boxes}
    widths = {b[2] - b[0] for b in boxes}
    assert len(centres) > 10 and len(widths) > 5


def test_forced_shapes_make_a_minimal_pair():
    for seed in range(20):
        s = make_scene(seed, size=64)
        others = [x for x in SHAPES if x not in {o.shape for o in s.objects}]
        new = [others[0]] + [o.shape for o in s.objects[1:]]
        t = make_scene(seed, size=64, shapes=new)
        assert [o.shape for o in t.objects] == new
        assert t.background == s.background and [o.colour for o in t.objects] == [o.colour for o in s.objects]
        # the unchanged object is pixel-identical; the changed one sits in the same place
        for a, b in zip(s.objects[1:], t.objects[1:], strict=True):
            assert a.box == b.box and np.array_equal(a.mask, b.mask)
        (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = s.objects[0].box, t.objects[0].box
        assert abs((ax0 + ax1) - (bx0 + bx1)) <= 16 and abs((ay0 + ay1) - (by0 + by1)) <= 16
        assert not np.array_equal(s.objects[0].mask, t.objects[0].mask)
    with pytest.raises(ValueError, match="distinct known shapes"):
        make_scene(1, size=64, n_objects=2, shapes=["circle", "circle"])
    with pytest.raises(ValueError, match="distinct known shapes"):
        make_scene(1, size=64, n_objects=1, shapes=["blob"])
