"""The re-expressed towers compute exactly what open_clip computes."""

import pytest
import torch

from audit.scanner.encoders import Towers, explicit_block


def random_ids(n, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 49400, (n, length), generator=g)  # no SOT/EOT inside


@pytest.mark.parametrize("explicit_from", [None, 0, 1])
def test_text_cut_at_eot_equals_full_context(tiny, towers, explicit_from):
    """Sequences cut right after EOT and pooled there = encode_text on the 77-token padded input."""
    body = random_ids(6, 5)
    lengths = [1, 2, 3, 4, 5, 5]
    full = torch.zeros(6, 77, dtype=torch.long)
    cut = torch.zeros(6, 7, dtype=torch.long)
    for i, k in enumerate(lengths):
        row = [towers.sot_id, *body[i, :k].tolist(), towers.eot_id]
        full[i, : len(row)] = torch.tensor(row)
        cut[i, : len(row)] = torch.tensor(row)
    eot = torch.tensor([k + 1 for k in lengths])
    with torch.no_grad():
        expected = tiny.model.encode_text(full)
    got, probs = towers.encode_ids(cut, eot, explicit_from=explicit_from)
    assert torch.allclose(got, expected, atol=1e-5)
    assert len(probs) == (0 if explicit_from is None else 2 - explicit_from)


def test_tokenize_matches_open_clip(tiny, towers):
    words = ["red circle", "a", "snow-covered hill"]
    ids, eot = towers.tokenize(words)
    ref = tiny.tokenizer(words)
    for i in range(len(words)):
        assert ids[i, : eot[i] + 1].tolist() == ref[i, : eot[i] + 1].tolist()
        assert ref[i, eot[i]].item() == towers.eot_id


def test_explicit_block_matches_fused_attention(towers):
    torch.manual_seed(0)
    x = torch.randn(3, 17, 64)
    blk = towers.vision_blocks[0]
    with torch.no_grad():
        fused = blk(x)
        mine, probs = explicit_block(blk, x)
    assert torch.allclose(mine, fused, atol=1e-5)
    assert torch.allclose(probs.sum(-1), torch.ones(3, blk.attn.num_heads, 17), atol=1e-6)
    mask = towers.text.attn_mask[:9, :9]
    t = torch.randn(2, 9, 64)
    tb = towers.text_blocks[1]
    with torch.no_grad():
        assert torch.allclose(explicit_block(tb, t, mask)[0], tb(t, attn_mask=mask), atol=1e-5)


def test_vision_split_matches_encode_image(tiny, towers):
    torch.manual_seed(1)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = tiny.model.encode_image(images)
        for start in (0, 1, 2):
            got, probs = towers.vision_suffix(towers.vision_prefix(images, start), start)
            assert torch.allclose(got, expected, atol=1e-5)
            assert len(probs) == 2 - start


def test_vit_b_32_random_weights_are_supported():
    """The default architecture loads and its cut text path matches open_clip (random weights, no download)."""
    from audit.scanner.models import load_model

    loaded = load_model("ViT-B-32", "none", device="cpu")
    t = Towers(loaded)
    assert t.grid_size == (7, 7) and t.vocab_size == 49408
    ids, eot = t.tokenize(["a photo of a dog"])
    with torch.no_grad():
        expected = loaded.model.encode_text(loaded.tokenizer(["a photo of a dog"]))
        got, _ = t.encode_ids(ids, eot)
    assert torch.allclose(got, expected, atol=1e-4)
