"""Pieces of the demo CLIP's training: minimal-pair twins, negative-only captions, the loss, a short run."""

import json
import math

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from audit.demo import train as T
from audit.demo.scenes import BACKGROUNDS, COLOURS, SHAPES
from audit.scanner.models import load_model


def test_twins_differ_from_their_scene_in_one_shape_only():
    pixels, meta = T.build_scenes(12, seed=3, size=32, twins=True)
    assert pixels.shape == (2, 12, 3, 32, 32)
    for (bg, objs, _), (tbg, tobjs, tcaps) in zip(meta[0], meta[1], strict=True):
        assert tbg == bg and [c for c, _ in tobjs] == [c for c, _ in objs]
        changed = [(a, b) for (_, a), (_, b) in zip(objs, tobjs, strict=True) if a != b]
        assert len(changed) == 1 and changed[0][1] not in {s for _, s in objs}
        assert any(changed[0][1] in c for c in tcaps)
    assert not torch.equal(pixels[0], pixels[1])


def test_junk_captions_never_name_a_scene_attribute():
    tok = open_clip.get_tokenizer("audit-demo")
    banned = {t for w in (*COLOURS, *SHAPES, *BACKGROUNDS) for t in tok.encode(w)}
    sampler = T.CaptionSampler(tok, 32, np.random.RandomState(0))
    sampler.rs = _Rigged(sampler.rs, sorted(banned))
    rows = sampler.junk(200, banned)
    assert all(1 <= len(r) <= 4 and not banned & set(r) for r in rows)
    assert sampler.rs.offered  # the rigged stream did offer banned tokens, and they were refused


def test_filler_captions_hold_only_words_that_name_nothing():
    tok = open_clip.get_tokenizer("audit-demo")
    filler = {t for w in T.FILLER for t in tok.encode(w)}
    attributes = {t for w in (*COLOURS, *SHAPES, *BACKGROUNDS) for t in tok.encode(w)}
    rows = T.CaptionSampler(tok, 32, np.random.RandomState(0)).filler(100)
    assert all(1 <= len(r) <= 4 and set(r) <= filler for r in rows) and not filler & attributes
    assert tok.encode("thing")[0] in {t for r in rows for t in r}


def test_single_word_templates_only_when_asked():
    tok = open_clip.get_tokenizer("audit-demo")
    meta = ("grass", [("red", "circle")], ["a red circle on grass"])
    texts = {}
    for templates in (False, True):
        sampler = T.CaptionSampler(tok, 32, np.random.RandomState(0), templates)
        texts[templates] = {tok.decode(sampler.sample(meta)[0]).strip() for _ in range(400)}
    assert "a photo of a circle" in texts[True] and "a photo of a circle" not in texts[False]
    assert {"red", "circle"} <= texts[False]


def test_shape_swaps_keep_colour_and_background_and_change_the_shape():
    tok = open_clip.get_tokenizer("audit-demo")
    sampler = T.CaptionSampler(tok, 32, np.random.RandomState(0))
    meta = ("sand", [("red", "circle"), ("blue", "star")], ["a red circle and a blue star on sand"])
    seen = set()
    for _ in range(200):
        [(ids, req)] = sampler.shape_swap(meta)
        text = tok.decode(ids).strip()
        _, colour, shape, _, bg = text.split()
        assert bg == "sand" and colour in ("red", "blue") and shape not in ("circle", "star"), text
        assert req[T._shape(shape)] and req[T._colour(colour)] and req[T._bg("sand")]
        seen.add(shape)
    assert seen == set(SHAPES) - {"circle", "star"}
    # the swapped caption fits neither this scene nor any scene without that colour-shape pair
    assert (T._attrs(meta) @ req) < req.sum()


def test_shape_pairs_put_the_true_shape_beside_the_swapped_one():
    tok = open_clip.get_tokenizer("audit-demo")
    meta = ("sand", [("red", "circle"), ("blue", "star")], ["a red circle and a blue star on sand"])
    plain = T.CaptionSampler(tok, 32, np.random.RandomState(3))
    paired = T.CaptionSampler(tok, 32, np.random.RandomState(3))
    truth = dict(meta[1])
    for _ in range(50):
        [swap] = plain.shape_swap(meta)
        wrong, right = paired.shape_swap(meta, with_truth=True)
        assert wrong[0] == swap[0]  # the same draws: pairs only add a caption
        w, r = tok.decode(wrong[0]).split(), tok.decode(right[0]).split()
        assert w[1] == r[1] and r[2] == truth[r[1]] and w[2] != r[2] and r[4] == "sand"
        assert (T._attrs(meta) @ right[1]) == right[1].sum()  # the true caption fits the scene


def test_a_caption_that_fits_no_image_is_only_a_negative():
    torch.manual_seed(1)
    img = F.normalize(torch.randn(3, 8), dim=-1)
    txt = F.normalize(torch.randn(4, 8), dim=-1)
    match = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])  # caption 3 fits nobody
    scale = torch.tensor(10.0)
    got = T.multi_positive_loss(img, txt, scale, match)
    assert torch.isfinite(got)
    # same as handing caption 3 over as a negative-only extra column
    assert math.isclose(got.item(), T.multi_positive_loss(img, txt, scale, match[:, :3]).item(), rel_tol=1e-6)


class _Rigged:
    """Offers a banned token at every third draw of a token id."""

    def __init__(self, rs, banned):
        self.rs, self.banned, self.n, self.offered = rs, banned, 0, 0

    def randint(self, lo, hi=None, size=None):
        if hi == 49406:
            self.n += 1
            if self.n % 3 == 0:
                self.offered += 1
                return self.banned[self.n % len(self.banned)]
        return self.rs.randint(lo, hi, size)


def test_loss_treats_extra_captions_as_negatives_only():
    torch.manual_seed(0)
    img = F.normalize(torch.randn(3, 8), dim=-1)
    txt = F.normalize(torch.randn(5, 8), dim=-1)  # 3 real captions, then 2 negative-only ones
    match = torch.tensor([[1.0, 0, 1], [0, 1, 0], [0, 0, 1]])
    scale = torch.tensor(10.0)
    logits = scale * img @ txt.T
    want_i = -sum(match[i, j] / match[i].sum() * torch.log_softmax(logits[i], 0)[j]
                  for i in range(3) for j in range(3)) / 3
    want_t = -sum(match[i, j] / match[:, j].sum() * torch.log_softmax(logits[:, j], 0)[i]
                  for i in range(3) for j in range(3)) / 3
    got = T.multi_positive_loss(img, txt, scale, match)
    assert math.isclose(got.item(), ((want_i + want_t) / 2).item(), rel_tol=1e-5)
    # pulling a negative-only caption towards the images raises the loss
    closer = txt.clone()
    closer[3] = F.normalize(img.mean(0), dim=-1)
    assert T.multi_positive_loss(img, closer, scale, match) > got


def test_a_short_training_run_writes_loadable_weights(tmp_path):
    out = tmp_path / "w.safetensors"
    info = T.train(out, steps=2, batch=8, scenes=16, twins=True, junk=4, word_templates=True, shape_negatives=3,
                   conv_stem=True, shape_pairs=True, filler=3, log_every=1)
    assert info["twins"] and info["junk"] == 4 and info["word_templates"] and out.is_file() and info["filler"] == 3
    assert info["shape_negatives"] == 3 and info["conv_stem"] and info["shape_pairs"]
    loaded = load_model("audit-demo", str(out), device="cpu")
    assert loaded.model.visual.image_size in (64, (64, 64))
    assert type(loaded.model.visual.conv1).__name__ == "ConvStem"
    from safetensors.torch import load_file

    saved = load_file(str(out))
    state = loaded.model.state_dict()
    assert saved.keys() <= state.keys() and len(saved) > 20
    assert all(torch.equal(state[k].to(saved[k].dtype), saved[k]) for k in saved)  # the weights written


def test_training_is_reproducible_from_its_seed(tmp_path):
    """The model card's retrain command must give the bundled weights back on the same machine: same seed,
    same weights to the bit; another seed, other weights."""
    from safetensors.torch import load_file

    def run(name, seed):
        T.train(tmp_path / name, steps=3, batch=8, scenes=16, seed=seed, junk=4, shape_negatives=3, filler=2)
        return load_file(str(tmp_path / name))

    a, b, c = run("a.safetensors", 0), run("b.safetensors", 0), run("c.safetensors", 1)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_audit_demo_train_is_the_training_entry_point(tmp_path, capsys):
    """`audit demo train` (also `python -m audit demo train`) passes its options to train() through TrainOptions."""
    from audit.cli import main

    out = tmp_path / "m.safetensors"
    assert main(["demo", "train", "--out", str(out), "--steps", "1", "--batch", "4", "--scenes", "8", "--junk",
                 "2"]) == 0
    assert out.is_file() and json.loads(out.with_suffix(".json").read_text())["junk"] == 2
    assert f"wrote {out} (1 steps" in capsys.readouterr().out


def test_preferred_captions_get_a_larger_share_of_the_image_to_text_target():
    torch.manual_seed(2)
    img = F.normalize(torch.randn(3, 8), dim=-1)
    txt = F.normalize(torch.randn(4, 8), dim=-1)
    match = torch.tensor([[1.0, 0, 1], [0, 1, 1], [0, 0, 1]])  # caption 2 ("grass") fits all three images
    prefer = torch.tensor([math.e**3, math.e**2, math.e])  # by the attributes each caption states
    scale = torch.tensor(10.0)
    logits = scale * img @ txt.T
    share = match * prefer
    share = share / share.sum(1, keepdim=True)
    want_i = -sum(share[i, j] * torch.log_softmax(logits[i], 0)[j] for i in range(3) for j in range(3)) / 3
    want_t = -sum(match[i, j] / match[:, j].sum() * torch.log_softmax(logits[:, j], 0)[i]
                  for i in range(3) for j in range(3)) / 3
    got = T.multi_positive_loss(img, txt, scale, match, prefer)
    assert math.isclose(got.item(), ((want_i + want_t) / 2).item(), rel_tol=1e-5)
    assert not math.isclose(got.item(), T.multi_positive_loss(img, txt, scale, match).item(), rel_tol=1e-3)
    # equal preferences are the plain loss
    same = T.multi_positive_loss(img, txt, scale, match, torch.full((3,), 7.0))
    assert math.isclose(same.item(), T.multi_positive_loss(img, txt, scale, match).item(), rel_tol=1e-6)
