"""Batched relevancy equals a slow, obvious per-(image, word) implementation of Chefer et al."""

import math

import pytest
import torch
import torch.nn.functional as F

from audit.relevancy import relevancy


def manual_attention_block(blk, x, mask=None):
    """A residual attention block written out by hand, returning its attention probabilities."""
    attn = blk.attn
    heads = attn.num_heads
    width = x.shape[2]
    hd = width // heads
    h = blk.ln_1(x)[0]  # one sequence
    qkv = h @ attn.in_proj_weight.T + attn.in_proj_bias
    q, k, v = qkv[:, :width], qkv[:, width:2 * width], qkv[:, 2 * width:]
    outs, probs = [], []
    for head in range(heads):
        sl = slice(head * hd, (head + 1) * hd)
        s = q[:, sl] @ k[:, sl].T / math.sqrt(hd)
        if mask is not None:
            s = s + mask
        p = torch.softmax(s, dim=-1)
        probs.append(p)
        outs.append(p @ v[:, sl])
    out = torch.cat(outs, dim=1) @ attn.out_proj.weight.T + attn.out_proj.bias
    x = x + out[None]
    x = x + blk.mlp(blk.ln_2(x))
    return x, probs  # one [L, L] tensor per head, each used in the graph


def reference(model, tokenizer, image, word, start_layer, start_layer_text):
    """One pair, full 77-token context, every layer explicit, Chefer's loop verbatim."""
    visual = model.visual
    x = visual._embeds(image[None]).detach().requires_grad_(True)
    vprobs = []
    for blk in visual.transformer.resblocks:
        x, p = manual_attention_block(blk, x)
        vprobs.append(p)
    img = visual._pool(x)[0] @ visual.proj
    ids = tokenizer([word])
    t = (model.token_embedding(ids) + model.positional_embedding).detach().requires_grad_(True)
    tprobs = []
    for blk in model.transformer.resblocks:
        t, p = manual_attention_block(blk, t, model.attn_mask)
        tprobs.append(p)
    t = model.ln_final(t)
    eot = ids.argmax(-1)
    txt = t[0, eot[0]] @ model.text_projection
    with torch.no_grad():
        assert torch.allclose(img, model.encode_image(image[None]), atol=1e-5)
        assert torch.allclose(txt, model.encode_text(ids)[0], atol=1e-5)
    cos = F.cosine_similarity(img, txt[None])[0]
    logit = model.logit_scale.exp() * cos
    flat = [p for layer in vprobs + tprobs for p in layer]
    flat_grads = iter(torch.autograd.grad(logit, flat))
    grads = [[next(flat_grads) for _ in layer] for layer in vprobs + tprobs]

    def chefer(probs, grads, start):
        n = probs[0][0].shape[-1]
        start = start % len(probs)
        r = torch.eye(n)
        for i, (heads_a, heads_g) in enumerate(zip(probs, grads, strict=True)):
            if i < start:
                continue
            cam = sum((g * a).clamp(min=0) for a, g in zip(heads_a, heads_g, strict=True)) / len(heads_a)
            r = r + cam @ r
        return r

    rv = chefer(vprobs, grads[: len(vprobs)], start_layer)
    rt = chefer(tprobs, grads[len(vprobs):], start_layer_text)
    return rv[0, 1:], rt[eot[0], 1:eot[0]], cos.detach()


@pytest.mark.parametrize("start_layer,start_layer_text", [(-1, -1), (0, 0), (1, 0)])
def test_batched_relevancy_matches_per_pair_reference(tiny, towers, start_layer, start_layer_text):
    torch.manual_seed(0)
    imgs = torch.randn(3, 3, 64, 64)
    words = ["red", "circle", "grass", "snow-covered hill", "dog", "a b c d"]
    pair_image = torch.tensor([0, 0, 1, 1, 2, 2])
    got = relevancy(towers, imgs, pair_image, words, start_layer, start_layer_text, chunk=4)
    assert got.image.shape == (6, 4, 4)
    for p, w in enumerate(words):
        img_map, text_map, cos = reference(tiny.model, tiny.tokenizer, imgs[pair_image[p]], w, start_layer,
                                           start_layer_text)
        assert torch.allclose(got.image[p].flatten(), img_map, atol=1e-5), w
        assert got.text[p].shape == text_map.shape
        assert torch.allclose(got.text[p], text_map, atol=1e-5), w
        assert abs(float(got.cosine[p]) - float(cos)) < 1e-5


def test_relevancy_of_a_pair_does_not_depend_on_its_batch(towers):
    torch.manual_seed(1)
    imgs = torch.randn(2, 3, 64, 64)
    both = relevancy(towers, imgs, torch.tensor([0, 1, 1]), ["red", "blue", "sky"])
    alone = relevancy(towers, imgs[1:], torch.tensor([0, 0]), ["blue", "sky"])
    assert torch.allclose(both.image[1:], alone.image, atol=1e-6)


def test_no_pairs(towers):
    out = relevancy(towers, torch.randn(1, 3, 64, 64), torch.zeros(0, dtype=torch.long), [])
    assert out.image.shape == (0, 4, 4) and out.text == []
