"""Ascent: exact reformulations, best-sequence tracking, words, and independence from the batch."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from audit.scanner import rng
from audit.scanner.ascent import (
    AscentConfig,
    _Sequences,
    augment,
    decode_sequence,
    make_optimizer,
    merge_best,
    refine,
    relax,
    run_ascent,
    sequences_to_words,
    view_target,
)
from audit.words import clean_words

CFG = AscentConfig(steps=4, candidates=4, views=6)


def images(n, seed=0):
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_view_folding_equals_mean_of_view_cosines(towers):
    """<mean_v normalize(e_v), t_hat> == mean_v cos(e_v, t): one target replaces all views exactly."""
    imgs, seeds = images(3), torch.tensor([5, 6, 7])
    target = view_target(towers, imgs, seeds, 0, CFG)
    with torch.no_grad():
        views = towers.encode_images(augment(imgs, seeds, 0, CFG)).reshape(3, CFG.views, -1)
        ids, eot = towers.tokenize(["red", "circle on grass", "snow"])
        text = F.normalize(towers.encode_ids(ids, eot)[0], dim=-1)
    direct = F.cosine_similarity(views, text[:, None, :], dim=-1).mean(1)
    folded = (target * text).sum(-1)
    assert torch.allclose(direct, folded, atol=1e-5)


def test_views_are_per_image_and_mostly_transformed(towers):
    imgs, seeds = images(2), torch.tensor([1, 2])
    v = augment(imgs, seeds, 0, AscentConfig(views=32))
    alone = augment(imgs[1:], seeds[1:], 0, AscentConfig(views=32))
    assert torch.equal(v[32:], alone)
    changed = (v[:32] - imgs[0:1]).abs().flatten(1).amax(1) > 1e-4
    assert 0.5 < changed.float().mean() < 1.0  # p=0.8 of views are warped, the rest are the image itself


def test_merge_best_keeps_distinct_top_sequences():
    best_s = torch.tensor([[0.9, 0.5]])
    best_q = torch.tensor([[[1, 2], [3, 4]]])
    new_s = torch.tensor([[0.95, 0.9, 0.1]])
    new_q = torch.tensor([[[1, 2], [5, 6], [7, 8]]])
    s, q = merge_best(best_s, best_q, new_s, new_q, keep=3)
    assert q.tolist() == [[[1, 2], [5, 6], [3, 4]]]  # [1,2] once, at its best score; tie 0.9 keeps earlier
    assert torch.allclose(s, torch.tensor([[0.95, 0.9, 0.5]]))


def test_recorded_score_is_the_cosine_of_the_decoded_token_sequence(towers):
    """Scores come from hard tokens pooled at the true EOT: re-encoding the stored ids gives the same number."""
    imgs, seeds = images(2), torch.tensor([11, 12])
    res = run_ascent(towers, imgs, seeds, CFG)
    target = view_target(towers, imgs, seeds, 2_000_000, CFG)
    assert res.seqs.shape == (2, 5, 4)
    assert (res.scores[:, :-1] >= res.scores[:, 1:]).all()
    for i in range(2):
        for r in range(5):
            ids = torch.tensor([[towers.sot_id, *res.seqs[i, r].tolist(), towers.eot_id]])
            with torch.no_grad():
                feat = F.normalize(towers.encode_ids(ids, torch.tensor([5]))[0], dim=-1)
            assert abs(float((feat[0] * target[i]).sum()) - float(res.scores[i, r])) < 1e-5


def test_the_ascent_goes_uphill(towers):
    """The search maximises the cosine: the loss falls over the steps and the best sequence clearly beats the
    tokens it started from (a flipped gradient sign leaves the best at the start's level, about 0.17)."""
    imgs, seeds = images(3), torch.tensor([1, 2, 3])
    start = run_ascent(towers, imgs, seeds, AscentConfig(steps=0, candidates=4, views=4, refine_rounds=0))
    res = run_ascent(towers, imgs, seeds, AscentConfig(steps=30, candidates=4, views=4, refine_rounds=0))
    assert res.trace.shape == (30, 3, 4)
    assert (res.scores[:, 0] > start.scores[:, 0] + 0.15).all(), (start.scores[:, 0], res.scores[:, 0])
    mean = res.trace.mean(-1)  # [steps, images]: the candidates' mean cosine, i.e. minus the loss / 100
    assert (mean[-5:].mean(0) > mean[:2].mean(0) + 0.1).all(), mean
    loss = -100 * mean.sum(1)
    assert loss[-1] < loss[0] and loss[5:].mean() < loss[:5].mean()


def test_best_sequences_come_from_all_steps_not_just_the_last(towers):
    """The kept best is the best hard sequence seen at any step, and the steps differ enough for that to
    matter: for some image an earlier step beat the last one."""
    imgs, seeds = images(4), torch.tensor([3, 4, 5, 6])
    res = run_ascent(towers, imgs, seeds, AscentConfig(steps=8, candidates=4, views=4, refine_rounds=0))
    seen_best = res.trace.amax(dim=(0, 2))
    assert (res.scores[:, 0] >= seen_best - 1e-6).all()
    assert (res.trace[-1].amax(-1) < seen_best - 1e-4).any()
    # The five kept sequences are the five best distinct ones: each is at least the 5th best score seen.


def test_ascent_words_do_not_depend_on_batch_size_or_order(towers):
    imgs, seeds = images(5, seed=3), torch.tensor([101, 102, 103, 104, 105])
    together = run_ascent(towers, imgs, seeds, CFG)
    order = torch.tensor([4, 2, 0, 3, 1])
    shuffled = run_ascent(towers, imgs[order], seeds[order], CFG)
    one_by_one = [run_ascent(towers, imgs[i:i + 1], seeds[i:i + 1], CFG) for i in range(5)]
    for j, i in enumerate(order.tolist()):
        assert torch.equal(shuffled.seqs[j], together.seqs[i])
        assert torch.allclose(shuffled.scores[j], together.scores[i], atol=1e-5)
    for i in range(5):
        assert torch.equal(one_by_one[i].seqs[0], together.seqs[i])
        assert torch.allclose(one_by_one[i].scores[0], together.scores[i], atol=1e-5)


def test_the_seed_alone_decides_the_search(towers):
    imgs = images(1)
    a = run_ascent(towers, imgs, torch.tensor([1]), CFG)
    again = run_ascent(towers, imgs, torch.tensor([1]), CFG)
    b = run_ascent(towers, imgs, torch.tensor([2]), CFG)
    assert torch.equal(a.seqs, again.seqs) and torch.equal(a.trace, again.trace)
    assert not torch.equal(a.seqs, b.seqs) and not torch.equal(a.trace[0], b.trace[0])


def test_prompt_is_inside_every_scored_sequence(towers):
    """With a prompt, the recorded score is the cosine of SOT + prompt + the kept tokens + EOT."""
    imgs, seeds = images(1), torch.tensor([1])
    cfg = AscentConfig(steps=4, candidates=4, views=6, prompt="a photo of", refine_rounds=0)
    res = run_ascent(towers, imgs, seeds, cfg)
    prompt = towers.tokenizer.encode("a photo of")
    target = view_target(towers, imgs, seeds, 2_000_000, cfg)
    for r in range(5):
        ids = torch.tensor([[towers.sot_id, *prompt, *res.seqs[0, r].tolist(), towers.eot_id]])
        with torch.no_grad():
            feat = F.normalize(towers.encode_ids(ids, torch.tensor([ids.shape[1] - 1]))[0], dim=-1)
        assert abs(float((feat[0] * target[0]).sum()) - float(res.scores[0, r])) < 1e-5


def test_resampled_views_redraw_the_target_from_the_second_step(towers):
    imgs, seeds = images(1), torch.tensor([1])
    fixed = AscentConfig(steps=4, candidates=4, views=6, refine_rounds=0)
    redrawn = dataclasses.replace(fixed, resample_views=True)
    a, b = run_ascent(towers, imgs, seeds, fixed), run_ascent(towers, imgs, seeds, redrawn)
    assert torch.equal(a.trace[0], b.trace[0])  # step 0 scores against the same folded target
    assert not torch.allclose(a.trace[1:], b.trace[1:])
    # Step 1's scores are against the views drawn for step 1.
    step1 = view_target(towers, imgs, seeds, 2_000_001, fixed)
    assert not torch.allclose(step1, view_target(towers, imgs, seeds, 2_000_000, fixed))


def test_decode_and_clean_words(tiny):
    tok = tiny.tokenizer
    ids = [tok.sot_token_id, *tok.encode("red, circle!"), tok.eot_token_id, *tok.encode("grass")]
    text = decode_sequence(tok, ids)
    assert "start_of_text" not in text and "end_of_text" not in text
    assert clean_words(text) == ["red", "circle", "grass"]
    assert clean_words("Ünïcode\x00 ctrl\u200b!! 42") == ["ünïcode", "ctrl", "42"]


def test_sequences_to_words_are_unique_and_ranked(tiny):
    tok = tiny.tokenizer
    seqs = torch.tensor([tok.encode("red circle red") + [tok.eot_token_id],
                         tok.encode("circle on grass") + [tok.eot_token_id],
                         [-1, -1, -1, -1]])
    rows = sequences_to_words(tok, seqs, torch.tensor([0.5, 0.4, float("-inf")]))
    assert [r["word"] for r in rows] == ["red", "circle", "on", "grass"]
    assert [r["word_rank"] for r in rows] == [0, 1, 2, 3]
    assert [r["seq_rank"] for r in rows] == [0, 0, 1, 1]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_compiled_relaxation_matches_eager(device):
    # On CUDA the step's Gumbel-softmax runs compiled; inductor's CPU backend compiles the same graph here.
    # On CUDA, inductor once folded the noise's wrapping int32 product into an index constant Triton rejected.
    keys = rng.keys(torch.tensor([3, 77, 12345]), 1005, device)
    base = (torch.randn(3, 2, 4, 4999, generator=torch.Generator().manual_seed(0)) * 3).to(device)
    weight = torch.linspace(-1, 1, base.shape[-1], device=device)

    def step(fn):
        logits = base.clone().requires_grad_(True)
        soft, idx = fn(logits, keys, rng.offsets((2, 4, 4999), device), 1000.0)
        (soft * weight).sum().backward()
        return soft.detach(), idx, logits.grad

    eager, compiled = step(relax), step(torch.compile(relax))
    assert torch.equal(compiled[1], eager[1])
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=0)
    torch.testing.assert_close(compiled[2], eager[2], rtol=1e-5, atol=1e-12)
    # And the eager step is exactly the noise the seeds define.
    z = (base + rng.gumbel(torch.tensor([3, 77, 12345], device=device), 1005, (2, 4, 4999))) / 1000.0
    assert torch.equal(eager[0], z.softmax(-1)) and torch.equal(eager[1], z.argmax(-1))


def test_the_in_place_draw_is_the_hash_written_out():
    """The uncompiled draw runs in place (rng._mix_) for speed; it must give the bits of the lowbias32 hash as the
    compiled, CUDA and Triton draws compute it, here written out in plain Python integers."""

    def lowbias32(x):
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    seeds, shape = torch.tensor([3, 77, 2**31 - 1]), (2, 3, 5)
    got = rng.uniform(seeds, 5, shape)
    keys = rng.keys(seeds, 5).tolist()
    for i, key in enumerate(keys):
        for j in range(30):
            h = lowbias32((key & 0xFFFFFFFF) ^ ((j * 0x9E3779B9) & 0xFFFFFFFF))
            assert got[i].flatten()[j].item() == ((h >> 9) + 0.5) / 2**23
    keys_t, offs = rng.keys(seeds, 5), rng.offsets(shape)
    compiled = torch.compile(rng.gumbel_from_keys, backend="aot_eager")(keys_t, offs, shape)
    assert torch.equal(compiled, rng.gumbel_from_keys(keys_t, offs, shape))
    assert torch.equal(rng.gumbel(seeds, 5, shape), -torch.log(-torch.log(got)))


def test_the_ascent_optimizer_is_adam_and_fused_adam_matches_the_plain_update():
    """The optimiser the ascent builds (`make_optimizer`) does Adam's update with the ascent's lr, and the fused
    kernel it uses on CUDA and CPU gives the same numbers as the plain one."""
    grads = torch.randn(5, 3, 4, 999, generator=torch.Generator().manual_seed(1))
    p = torch.zeros(3, 4, 999, requires_grad=True)
    opt = make_optimizer(p, 5.0)
    assert isinstance(opt, torch.optim.Adam)
    assert opt.param_groups[0]["lr"] == 5.0 and opt.param_groups[0]["fused"]
    m = torch.zeros_like(p)
    v = torch.zeros_like(p)
    want = torch.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        p.grad = g.clone()
        opt.step()
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        want = want - 5.0 * (m / (1 - 0.9 ** t)) / ((v / (1 - 0.999 ** t)).sqrt() + 1e-8)
    torch.testing.assert_close(p.detach(), want, rtol=1e-5, atol=1e-4)
    plain = torch.zeros(3, 4, 999, requires_grad=True)
    popt = torch.optim.Adam([plain], lr=5.0, fused=False, foreach=False)
    for g in grads:
        plain.grad = g.clone()
        popt.step()
    torch.testing.assert_close(plain.detach(), p.detach(), rtol=1e-5, atol=1e-5)


def test_refinement_only_raises_scores_and_finds_better_sequences(towers):
    imgs, seeds = images(3, seed=5), torch.tensor([21, 22, 23])
    plain = run_ascent(towers, imgs, seeds, dataclasses.replace(CFG, refine_rounds=0))
    refined = run_ascent(towers, imgs, seeds, CFG)
    assert (refined.scores[:, 0] >= plain.scores[:, 0]).all()
    assert (refined.scores[:, 0] > plain.scores[:, 0] + 1e-3).any()


def test_refinement_recovers_a_sequence_from_one_wrong_token(towers):
    """The target is the text of a known sequence, one token off at the start. With every token short-listed
    the swaps are exhaustive, so they must find it again: this checks the swap bookkeeping, not the ranking."""
    truth = torch.tensor([[[320, 736, 7117, 525]]])  # a red circle on (the standard vocabulary's ids)
    start, before, scores, tokens = swap_back(towers, truth, AscentConfig(refine_rounds=1,
                                                                         refine_top=towers.vocab_size))
    assert torch.equal(tokens, truth) and float(scores[0, 0]) > 0.999 > float(before[0, 0])


def swap_back(towers, truth: torch.Tensor, cfg: AscentConfig):
    """Target the text of `truth` [1, 1, K], start one token off at position 2, run the swaps: (start, its
    score, the swaps' scores and tokens)."""
    emb = towers.token_embedding.weight
    seqs = _Sequences(towers, cfg)
    with torch.no_grad():
        target = F.normalize(towers.text_from_embeddings(
            torch.cat([seqs.head[None], emb[truth[0]], seqs.tail[None]], 1),
            torch.tensor([seqs.length - 1]))[0].float(), dim=-1)
    start = truth.clone()
    start[0, 0, 2] = 4000
    with torch.no_grad():
        before = seqs.cosine(emb[start], target)
    return start, before, *refine(seqs, emb, target, before, start, cfg)


def test_refinement_does_not_depend_on_chunking(towers):
    imgs, seeds = images(3, seed=8), torch.tensor([31, 32, 33])
    cfg = dataclasses.replace(CFG, refine_rounds=0)
    res = run_ascent(towers, imgs, seeds, cfg)
    seqs, emb = _Sequences(towers, cfg), towers.token_embedding.weight
    target = view_target(towers, imgs, seeds, 2_000_000, cfg)
    cfg = dataclasses.replace(cfg, refine_rounds=2, refine_top=8)
    whole = refine(seqs, emb, target, res.scores, res.seqs, cfg)
    chunked = refine(seqs, emb, target, res.scores, res.seqs, cfg, max_sequences=1)
    assert torch.equal(whole[1], chunked[1]) and torch.allclose(whole[0], chunked[0], atol=1e-6)


def test_swaps_go_to_whole_words_only_unless_asked(towers):
    """The same exhaustive swap, but the target's missing token is a word piece ("gard", which fuses with the next
    word when decoded): with refine_words (the default) no swap may bring it back, and every token a swap puts in
    is a real whole word; with any token allowed, the swap recovers it."""
    from audit.scanner.vocabulary import word_tokens

    words = {i for i, _ in word_tokens(towers.tokenizer)}
    piece = towers.tokenizer.encoder["gard"]
    assert piece not in words
    truth = torch.tensor([[[320, 736, piece, 525]]])
    for refine_words in (True, False):
        cfg = AscentConfig(refine_rounds=1, refine_top=towers.vocab_size, refine_words=refine_words)
        start, _, _, tokens = swap_back(towers, truth, cfg)
        changed = tokens[tokens != start]
        if refine_words:
            assert tokens[0, 0, 2] != piece and all(int(t) in words for t in changed)
        else:
            assert torch.equal(tokens, truth)
