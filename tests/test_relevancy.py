"""Batched relevancy equals slow, obvious per-(image, word) implementations: Chefer et al., and occlusion."""

import math

import pytest
import torch
import torch.nn.functional as F

from audit.scanner.relevancy import relevancy


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
    got = relevancy(towers, imgs, pair_image, words, chunk=4, start_layer=start_layer,
                    start_layer_text=start_layer_text)
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


def occlusion_reference(model, tokenizer, image, word, window):
    """One pair, the obvious way: blank each window, re-encode, spread the logit's fall over its patches."""
    gh, gw = model.visual.grid_size
    ph, pw = image.shape[1] // gh, image.shape[2] // gw
    scale = model.logit_scale.exp()
    with torch.no_grad():
        txt = F.normalize(model.encode_text(tokenizer([word])), dim=-1)[0]

        def logit(x):
            return scale * (F.normalize(model.encode_image(x[None]), dim=-1)[0] @ txt)

        base = logit(image)
        total = torch.zeros(gh, gw)
        for y in range(1 - window, gh):
            for x in range(1 - window, gw):
                y0, y1, x0, x1 = max(y, 0), min(y + window, gh), max(x, 0), min(x + window, gw)
                blank = image.clone()
                blank[:, y0 * ph:y1 * ph, x0 * pw:x1 * pw] = 0
                total[y0:y1, x0:x1] += base - logit(blank)
        ids = tokenizer.encode(word)
        text = [base - logit_text for logit_text in
                (scale * (F.normalize(model.encode_image(image[None]), dim=-1)[0]
                          @ F.normalize(model.encode_text(_ids_text(tokenizer, ids[:k] + ids[k + 1:])), dim=-1)[0])
                 for k in range(len(ids)))]
    return (total / window**2).clamp(min=0), torch.stack(text) if text else torch.zeros(0), base / scale


def _ids_text(tokenizer, ids):
    row = torch.zeros(1, tokenizer.context_length, dtype=torch.long)
    row[0, : len(ids) + 2] = torch.tensor([tokenizer.sot_token_id, *ids, tokenizer.eot_token_id])
    return row


@pytest.mark.parametrize("window", [1, 2, 3])
def test_occlusion_matches_per_pair_reference(tiny, towers, window):
    torch.manual_seed(2)
    imgs = torch.randn(3, 3, 64, 64)
    pair_image = torch.tensor([0, 0, 1, 2, 2])
    words = ["red", "a blue sky", "dog", "cat", "green grass"]
    got = relevancy(towers, imgs, pair_image, words, method="occlusion", window=window, chunk=20)
    for p, w in enumerate(words):
        img_map, text_map, cos = occlusion_reference(tiny.model, tiny.tokenizer, imgs[pair_image[p]], w, window)
        assert torch.allclose(got.image[p], img_map, atol=1e-4), (w, window)
        assert torch.allclose(got.text[p], text_map, atol=1e-4), w
        assert abs(float(got.cosine[p]) - float(cos)) < 1e-5


def test_occlusion_does_not_depend_on_batch_or_chunk(towers):
    torch.manual_seed(3)
    imgs = torch.randn(3, 3, 64, 64)
    both = relevancy(towers, imgs, torch.tensor([0, 1, 2, 2]), ["red", "blue", "sky", "dog"], method="occlusion",
                     chunk=7)
    alone = relevancy(towers, imgs[2:], torch.tensor([0, 0]), ["sky", "dog"], method="occlusion", chunk=1000)
    assert torch.allclose(both.image[2:], alone.image, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(both.text[2:], alone.text, strict=True))


def test_occlusion_windows_cover_every_patch_equally():
    from audit.scanner.relevancy.occlusion import windows

    for window in (1, 2, 3, 5):
        count = torch.zeros(4, 6)
        for y0, y1, x0, x1 in windows(4, 6, window):
            assert 0 <= y0 < y1 <= 4 and 0 <= x0 < x1 <= 6
            count[y0:y1, x0:x1] += 1
        assert (count == window**2).all()


def test_unknown_method_and_bad_window_are_refused(towers):
    imgs = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match="unknown relevancy method"):
        relevancy(towers, imgs, torch.tensor([0]), ["red"], method="lime")
    with pytest.raises(ValueError, match="at least 1 patch"):
        relevancy(towers, imgs, torch.tensor([0]), ["red"], method="occlusion", window=0)


def legrad_reference(model, tokenizer, image, word, layers):
    """LeGrad for one pair as its paper states it, every layer written out by hand: each of the last `layers`
    blocks gets its own score (the mean of its output tokens through ln_post and the projection, cosine with the
    word), whose rectified gradient with respect to that block's attention probabilities is averaged over heads
    and query rows, the class token's key dropped; the layers' maps summed, then scaled to 0-1."""
    visual = model.visual
    txt = F.normalize(model.encode_text(tokenizer([word])).detach()[0], dim=-1)
    blocks = list(visual.transformer.resblocks)
    x = visual._embeds(image[None]).detach().requires_grad_(True)
    total = None
    for i, blk in enumerate(blocks):
        x, probs = manual_attention_block(blk, x)
        if i < len(blocks) - layers:
            x = x.detach().requires_grad_(True)
            continue
        vector = F.normalize(visual.ln_post(x[0].mean(dim=0)) @ visual.proj, dim=-1)
        score = (vector * txt).sum()
        grads = torch.autograd.grad(score, probs, retain_graph=True)
        layer_map = sum(g.clamp(min=0).mean(dim=0) for g in grads) / len(grads)  # rows, then heads
        total = layer_map[1:] if total is None else total + layer_map[1:]
    cos = F.cosine_similarity(visual._pool(x)[0] @ visual.proj, txt[None])[0]
    return (total - total.min()) / (total.max() - total.min()), cos.detach()


@pytest.mark.parametrize("layers", [1, 2])  # audit-tiny has 2 image layers
def test_legrad_matches_per_pair_reference(tiny, towers, layers):
    torch.manual_seed(2)
    imgs = torch.randn(3, 3, 64, 64)
    words = ["red", "circle", "grass", "snow-covered hill", "dog", "a b c d"]
    pair_image = torch.tensor([0, 0, 1, 1, 2, 2])
    got = relevancy(towers, imgs, pair_image, words, method="legrad", chunk=4, layers=layers)
    assert got.image.shape == (6, 4, 4) and all(t.numel() == 0 for t in got.text)  # the image only
    for p, w in enumerate(words):
        grid, cos = legrad_reference(tiny.model, tiny.tokenizer, imgs[pair_image[p]], w, layers)
        assert torch.allclose(got.image[p].flatten(), grid, atol=1e-5), (w, got.image[p].flatten(), grid)
        assert got.image[p].min() == 0 and abs(float(got.image[p].max()) - 1) < 1e-6
        assert abs(float(got.cosine[p]) - float(cos)) < 1e-5


def test_legrad_does_not_depend_on_batch_or_chunk(towers):
    torch.manual_seed(3)
    imgs = torch.randn(2, 3, 64, 64)
    both = relevancy(towers, imgs, torch.tensor([0, 1, 1]), ["red", "blue", "sky"], method="legrad", chunk=2)
    alone = relevancy(towers, imgs[1:], torch.tensor([0, 0]), ["blue", "sky"], method="legrad")
    assert torch.allclose(both.image[1:], alone.image, atol=1e-6)


def test_legrad_layers_are_checked(towers):
    with pytest.raises(ValueError, match="LeGrad explains 1 to"):
        relevancy(towers, torch.randn(1, 3, 64, 64), torch.tensor([0]), ["red"], method="legrad", layers=99)
