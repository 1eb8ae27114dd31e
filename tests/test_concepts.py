"""The concept opinion: the solver against a slow reference, the vocabulary and its cache, and scans that store
concepts beside (or instead of) the ascent's words."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import scipy.optimize
import torch
import torch.nn.functional as F

import audit
from audit.errors import AuditError
from audit.scanner import vocabulary as vocab_mod
from audit.scanner.sparse_solve import KKT_TOL, nonneg_lasso
from audit.words import STOP_WORDS

from .helpers import FAST, assert_same_rows, save_noise

CONCEPTS = dict(model="audit-tiny", pretrained="none", workers=0, quiet=True, opinion="concepts", concept_l1=0.05,
                precision="float32")


def reference_solve(atoms: np.ndarray, x: np.ndarray, l1: float) -> np.ndarray:
    """min 0.5 |A^T w - x|^2 + l1 sum(w), w >= 0, over every atom at once, in float64 (slow, plain)."""
    a = atoms.astype(np.float64)
    x = x.astype(np.float64)

    def f(w):
        r = a.T @ w - x
        return 0.5 * r @ r + l1 * w.sum(), a @ r + l1

    res = scipy.optimize.minimize(f, np.zeros(len(a)), jac=True, method="L-BFGS-B", bounds=[(0, None)] * len(a),
                                  options={"maxiter": 50_000, "ftol": 1e-16, "gtol": 1e-12})
    return res.x


def dictionary(n_atoms: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(n_atoms, dim, generator=g) + 0.5 * torch.randn(1, dim, generator=g)  # correlated atoms
    return F.normalize(raw - raw.mean(0), dim=-1)


def dense(solution, i: int, n_atoms: int) -> np.ndarray:
    w = np.zeros(n_atoms)
    w[solution.atoms[i].numpy()] = solution.weights[i].numpy()
    return w


@pytest.mark.parametrize("n_atoms,dim,l1", [(300, 32, 0.05), (300, 32, 0.2), (900, 48, 0.1), (40, 64, 0.02)])
def test_the_solver_finds_the_reference_optimum(n_atoms, dim, l1):
    atoms = dictionary(n_atoms, dim, seed=n_atoms + dim)
    x = F.normalize(torch.randn(6, dim, generator=torch.Generator().manual_seed(1)), dim=-1)
    sol = nonneg_lasso(atoms, x, l1)
    assert (sol.weights >= 0).all()
    assert (sol.violation <= KKT_TOL).all()
    for i in range(len(x)):
        got, want = dense(sol, i, n_atoms), reference_solve(atoms.numpy(), x[i].numpy(), l1)
        assert set(np.flatnonzero(got > 1e-4)) == set(np.flatnonzero(want > 1e-4)), i
        assert np.abs(got - want).max() < 1e-4, i
        assert 0 < (got > 0).sum() < dim  # sparse, and not empty at these penalties


def test_the_solver_does_not_depend_on_the_batch():
    """Each row alone, in a batch of 5, and in reverse order: the same support and weights."""
    atoms = dictionary(2000, 64, seed=3)
    x = F.normalize(torch.randn(5, 64, generator=torch.Generator().manual_seed(7)), dim=-1)
    together = nonneg_lasso(atoms, x, 0.08)
    backwards = nonneg_lasso(atoms, x.flip(0), 0.08)
    for i in range(5):
        alone = nonneg_lasso(atoms, x[i:i + 1], 0.08)
        want = dense(alone, 0, 2000)
        for got in (dense(together, i, 2000), dense(backwards, 4 - i, 2000)):
            assert set(np.flatnonzero(got)) == set(np.flatnonzero(want))
            assert np.abs(got - want).max() < 1e-5
    again = nonneg_lasso(atoms, x, 0.08)
    assert torch.equal(again.weights, together.weights) and torch.equal(again.atoms, together.atoms)


def test_the_solver_grows_its_working_set_when_the_answer_needs_it():
    """An image made of 100 atoms: the first working set (64) cannot hold the answer, the optimality check over
    every atom must bring the rest in."""
    atoms = dictionary(500, 256, seed=5)
    w_true = torch.zeros(500)
    w_true[torch.arange(0, 500, 5)] = 1.0
    x = F.normalize((w_true @ atoms)[None], dim=-1)
    sol = nonneg_lasso(atoms, x, 1e-3)
    assert sol.rounds > 1 and (sol.weights > 0).sum() > 64
    got, want = dense(sol, 0, 500), reference_solve(atoms.numpy(), x[0].numpy(), 1e-3)
    assert np.abs(got - want).max() < 1e-4


def test_a_zero_image_has_no_concepts():
    sol = nonneg_lasso(dictionary(50, 16, 0), torch.zeros(2, 16), 0.1)
    assert (sol.weights == 0).all()
    with pytest.raises(ValueError):
        nonneg_lasso(dictionary(50, 16, 0), torch.zeros(1, 16), 0.0)


# ---- vocabulary and its cache ---------------------------------------------------------------------------

def test_the_tokens_vocabulary_is_the_tokenizers_real_words(tiny):
    vocab = vocab_mod.named_vocabulary("tokens", tiny.tokenizer)
    words = vocab.words
    assert len(words) > 20_000 and len(set(words)) == len(words) and vocab.name == "tokens"
    assert all(w.isascii() and w.isalpha() and w.islower() and len(w) >= 3 for w in words)
    assert not set(words) & STOP_WORDS
    assert {"grass", "doctor", "wheelchair", "circle"} <= set(words)
    assert {"the", "thing", "and"}.isdisjoint(words)
    for w in ("grass", "wheelchair"):  # whole-word tokens: each is one token of its own
        assert len(tiny.tokenizer.encode(w)) == 1
    assert vocab == vocab_mod.default_vocabulary(tiny.tokenizer)  # the same list and hash every time


def test_the_words_vocabulary_is_the_shipped_list_of_common_words(tiny):
    """10,000 words then 3,000 two-word nouns, each most frequent first: whole lowercase words a person uses, nouns
    and adjectives, no stop words, no word pieces (the tokens rule keeps "allery", the ending of "gallery"); each
    fits the text context."""
    vocab = vocab_mod.named_vocabulary("words", None)
    entries = vocab.words
    words, phrases = entries[:10_000], entries[10_000:]
    assert len(entries) == 13_000 == len(set(entries)) and vocab.identity.startswith("words:")
    assert all(w.isascii() and w.isalpha() and w.islower() and len(w) >= 3 for w in words)
    assert all(len(p.split()) == 2 and all(w.isalpha() and w.islower() for w in p.split()) for p in phrases)
    assert not {w for e in entries for w in e.split()} & STOP_WORDS
    assert {"grass", "doctor", "nurse", "wheelchair", "woman", "beach", "kitchen"} <= set(words)
    assert {"swimming pool", "living room", "traffic light"} <= set(phrases)
    assert not {"think", "really", "know", "said"} & set(words)  # verbs and adverbs by WordNet's tagged senses
    assert {"ring", "cross", "watch"} <= set(words)  # mostly verbs, but they name things a photo shows
    assert "allery" in vocab_mod.named_vocabulary("tokens", tiny.tokenizer).words and "allery" not in words
    assert words.index("people") < words.index("doctor") < words.index("wheelchair")  # frequency order
    assert phrases.index("living room") < phrases.index("swimming pool") < phrases.index("traffic light")
    vocab_mod.check_vocabulary(vocab, tiny.tokenizer, 77)


def test_the_shipped_list_is_made_again_byte_for_byte():
    """data/make_concepts.py with the pinned wordfreq, WordNet (wn) and bigram counts (wordsegment) gives exactly
    the shipped file."""
    from audit.scanner.data.make_concepts import build  # the dev extra pins its three sources

    assert build() == vocab_mod.WORDS_FILE.read_text(encoding="utf-8")


def test_scans_made_with_the_tokenizers_words_before_they_were_named_read_as_tokens():
    from audit.store.settings import differences, upgrade

    old = {"model": "ViT-B-32", "opinions": ["concepts"], "vocabulary": "default:0123456789abcdef"}
    assert upgrade(old)["vocabulary"] == "tokens:0123456789abcdef"
    assert differences(old, {**old, "vocabulary": "tokens:0123456789abcdef"}) == []


def test_a_vocabulary_file_is_read_strictly(tmp_path, tiny):
    f = tmp_path / "v.txt"
    f.write_text("Red  Car\n# a comment\nred car\nfire fighter  # trailing comment\n\nnurse\n", encoding="utf-8")
    v = vocab_mod.read_vocabulary(f)
    assert v.words == ("red car", "fire fighter", "nurse") and v.name == "v.txt"
    with pytest.raises(AuditError, match="neither words, tokens nor a file that exists"):
        vocab_mod.read_vocabulary(tmp_path / "missing.txt")
    (tmp_path / "one.txt").write_text("car\n")
    with pytest.raises(AuditError, match="at least 2"):
        vocab_mod.read_vocabulary(tmp_path / "one.txt")
    (tmp_path / "long.txt").write_text("car\n" + "very " * 80 + "\n")
    with pytest.raises(AuditError, match="tokens; the text context holds"):
        vocab_mod.check_vocabulary(vocab_mod.read_vocabulary(tmp_path / "long.txt"), tiny.tokenizer, 77)


def test_embeddings_are_computed_once_and_cached(tmp_path, monkeypatch, towers, caplog):
    monkeypatch.setenv("AUDIT_CACHE_DIR", str(tmp_path / "cache"))
    vocab = vocab_mod._hashed(["red", "green", "blue car"], "test")
    calls = []
    real = vocab_mod.encode_texts
    monkeypatch.setattr(vocab_mod, "encode_texts", lambda t, w: calls.append(w) or real(t, w))
    first = vocab_mod.embeddings(towers, vocab, "tiny|seed0")
    second = vocab_mod.embeddings(towers, vocab, "tiny|seed0")
    assert len(calls) == 1 and torch.equal(first, second)
    assert torch.allclose(first.norm(dim=-1), torch.ones(3))
    ids, eot = towers.tokenize(["blue car"])
    direct = F.normalize(towers.encode_ids(ids, eot)[0].float(), dim=-1)[0]
    assert torch.allclose(first[2], direct, atol=1e-6)
    vocab_mod.embeddings(towers, vocab, "tiny|seed1")  # other weights: another entry
    assert len(calls) == 2
    # A damaged entry is computed again, with a warning, never used.
    for path in (tmp_path / "cache" / "concepts").glob("*.npy"):
        path.write_bytes(b"not numpy")
    with caplog.at_level(logging.WARNING, logger="audit.scan"):
        again = vocab_mod.embeddings(towers, vocab, "tiny|seed0")
    assert len(calls) == 3 and torch.equal(again, first) and "damaged or stale" in caplog.text


# ---- scans ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("concepts") / "ds"
    for i in range(9):
        save_noise(root / ("a" if i % 3 else "b") / f"{i}.png", size=(40 + 7 * i, 30 + 5 * i), seed=i)
    (root / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


@pytest.fixture(scope="module")
def concept_scan(photos, tmp_path_factory):
    return audit.scan(photos, tmp_path_factory.mktemp("cs") / "scan", **CONCEPTS, batch_size=2)


def test_a_concept_scan_stores_concepts_weights_and_heatmaps(concept_scan):
    tokens, heat, images = concept_scan.tokens(), concept_scan.heatmaps(), concept_scan.images()
    assert len(images) == 9 and len(concept_scan.errors()) == 1
    assert set(tokens.kind) == {"concept"} and set(heat.kind) == {"concept"}
    settings = concept_scan.config["settings"]
    # Only what shaped the rows: no ascent settings in a scan without an ascent (a resume compares these).
    assert settings["opinions"] == ["concepts"] and not {"steps", "candidates", "kernel", "probe_words"} & set(settings)
    assert settings["concept_mean"] == "dataset" and settings["vocabulary"].startswith("words:")  # the default
    stored = concept_scan.config["concept_mean"]
    assert stored["images"] == 9 and len(stored["vector"]) == 64
    for image_id, t in tokens.groupby("image_id"):
        t = t.sort_values("word_rank")
        assert list(t.word_rank) == list(range(len(t))) and 1 <= len(t) <= 10
        assert (t.weight > 0).all() and (np.diff(t.weight.to_numpy()) <= 0).all()
        assert (t.seq_rank == -1).all() and (t.seq_text == t.word).all() and (t.seq_cosine == t.word_cosine).all()
        h = heat[heat.image_id == image_id]
        assert set(h.word) == set(t.word[:3])  # heatmaps for the 3 largest weights
    assert images.concept_cosine.between(0, 1).all() and (images.concept_cosine > 0.2).all()


def test_concept_cosines_are_the_words_own(concept_scan, tiny, towers):
    """word_cosine of a concept = cosine between the image and the word alone, as for every other kind."""
    from audit.scanner.loader import to_model_input
    from audit.sources.decode import decode

    row = concept_scan.tokens().iloc[0]
    image = concept_scan.images().set_index("image_id").loc[row.image_id]
    d = decode(image.path, tiny.preprocess, None)
    x = to_model_input(d.pixels, np.asarray(tiny.preprocess["mean"], np.float32),
                       np.asarray(tiny.preprocess["std"], np.float32))[None]
    with torch.no_grad():
        img = F.normalize(towers.encode_images(x).float(), dim=-1)[0]
        ids, eot = towers.tokenize([row.word])
        txt = F.normalize(towers.encode_ids(ids, eot)[0].float(), dim=-1)[0]
    assert abs(float(img @ txt) - row.word_cosine) < 1e-4


def test_concepts_do_not_depend_on_batch_size_order_or_resume(photos, concept_scan, tmp_path):
    other = audit.scan(photos, tmp_path / "b5", **CONCEPTS, batch_size=5)
    assert_same_rows(other, concept_scan)
    # Resume: the stored mean is reused even if the source changed since (a new image, listed first), so the
    # rows already stored and the rows added agree on one centring.
    before = audit.scan(photos, tmp_path / "part", **{**CONCEPTS, "batch_size": 3}).tokens()
    stored = json.loads((tmp_path / "part" / "scan.json").read_text())["concept_mean"]
    save_noise(photos / "a" / "0-new.png", seed=99)
    try:
        after = audit.scan(photos, tmp_path / "part", **{**CONCEPTS, "batch_size": 4}).tokens()
        assert json.loads((tmp_path / "part" / "scan.json").read_text())["concept_mean"] == stored
        added = after[after.image_id == "a/0-new.png"]
        assert len(after) == len(before) + len(added) and len(added) > 0
        fresh = audit.scan(photos, tmp_path / "fresh", **CONCEPTS, concept_mean=str(tmp_path / "part")).tokens()
        want = fresh[fresh.image_id == "a/0-new.png"]
        assert list(added.word) == list(want.word) and np.array_equal(added.weight, want.weight)
    finally:
        (photos / "a" / "0-new.png").unlink()


def test_both_opinions_side_by_side(photos, concept_scan, tmp_path):
    both = audit.scan(photos, tmp_path / "both", **{**CONCEPTS, **FAST, "opinion": "both", "concept_l1": 0.05})
    tokens = both.tokens()
    assert set(tokens.kind) == {"ascent", "concept"}
    concepts = tokens[tokens.kind == "concept"].sort_values(["image_id", "word_rank"]).reset_index(drop=True)
    alone = concept_scan.tokens().sort_values(["image_id", "word_rank"]).reset_index(drop=True)
    assert list(concepts.word) == list(alone.word)
    assert np.array_equal(concepts.weight, alone.weight)
    assert tokens[tokens.kind == "ascent"].weight.isna().all()


def test_concept_mean_from_a_file_a_scan_or_none(photos, concept_scan, tmp_path):
    vector = np.asarray(concept_scan.config["concept_mean"]["vector"], dtype=np.float32)
    np.save(tmp_path / "mean.npy", vector)
    from_file = audit.scan(photos, tmp_path / "f", **CONCEPTS, concept_mean=str(tmp_path / "mean.npy"))
    assert from_file.config["settings"]["concept_mean"].startswith("file:mean.npy:")
    assert_same_rows(from_file, concept_scan)  # the same vector: the same rows
    from_scan = audit.scan(photos, tmp_path / "s", **CONCEPTS, concept_mean=str(concept_scan.root))
    assert_same_rows(from_scan, concept_scan)
    plain = audit.scan(photos, tmp_path / "n", **CONCEPTS, concept_mean="none")
    assert plain.config["settings"]["concept_mean"] == "none" and plain.config["concept_mean"]["vector"] is None
    assert len(plain.tokens()) > 0
    np.save(tmp_path / "short.npy", vector[:10])
    with pytest.raises(AuditError, match="10-vector"):
        audit.scan(photos, tmp_path / "x", **CONCEPTS, concept_mean=str(tmp_path / "short.npy"))
    with pytest.raises(AuditError, match="stores no image mean"):
        audit.scan(photos, tmp_path / "y", **CONCEPTS, concept_mean=str(plain.root))
    with pytest.raises(AuditError, match="is not dataset, none"):
        audit.scan(photos, tmp_path / "z", **CONCEPTS, concept_mean="mean-of-nothing")


def test_concept_options_are_checked_before_anything_is_written(photos, tmp_path, capsys):
    from audit.cli import main

    for args, needle in ((["--opinion", "vibes"], "--opinion"), (["--concept-l1", "0"], "--concept-l1"),
                         (["--concept-heatmaps", "11"], "--concept-heatmaps 11 is more than"),
                         (["--vocabulary", str(tmp_path / "none.txt")], "neither words, tokens nor a file")):
        code = main(["scan", str(photos), "--out", str(tmp_path / "s"), "--model", "audit-tiny", "--pretrained",
                     "none", "--opinion", "concepts", *args])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "s").exists()


def test_a_vocabulary_file_limits_the_concepts(photos, tmp_path):
    words = ["red car", "green tree", "blue sky", "a doctor", "snow", "grass field"]
    (tmp_path / "v.txt").write_text("\n".join(words) + "\n")
    s = audit.scan(photos, tmp_path / "s", **{**CONCEPTS, "concept_l1": 0.01}, vocabulary=str(tmp_path / "v.txt"))
    assert set(s.tokens().word) <= set(words) and len(s.tokens()) > 0
    assert s.config["settings"]["vocabulary"].startswith("v.txt:")


def test_centring_removes_what_the_mean_holds():
    """An image whose embedding is the image mean has nothing left to explain: no concepts, fit 0. The atoms
    are the vocabulary's embeddings minus the text mean, normalised; uncentred (none) they are the embeddings."""
    from audit.scanner.concepts import ConceptSettings, Decomposition, ImageMean

    g = torch.Generator().manual_seed(0)
    emb = F.normalize(torch.randn(40, 16, generator=g), dim=-1)
    text_mean = emb.mean(0)
    feats = F.normalize(torch.randn(3, 16, generator=g), dim=-1)
    settings = ConceptSettings(l1=0.01, per_image=10, heatmaps=0)
    words = tuple(f"w{i}" for i in range(40))
    centred = Decomposition(words, emb, text_mean, ImageMean(feats[0].numpy(), "test"), settings)
    assert torch.allclose(centred.atoms, F.normalize(emb - text_mean, dim=-1))
    rows, fit = centred(feats)
    assert rows[0] == [] and fit[0] == 0 and all(rows[1:]) and (fit[1:] > 0.5).all()
    plain = Decomposition(words, emb, text_mean, ImageMean(None, "none"), settings)
    assert plain.atoms is emb
    rows, fit = plain(feats)
    assert rows[0] != []


def test_an_images_exact_weights_do_not_depend_on_the_support_it_started_from():
    """exact_row reaches one answer, bit for bit, from the batched support, from it without its smallest atom
    (a batch that left out a tiny weight, within its tolerance) and from it with one more atom at zero."""
    from audit.scanner.sparse_solve import exact_row, nonneg_lasso

    g = torch.Generator().manual_seed(0)
    atoms = F.normalize(torch.randn(300, 64, generator=g), dim=-1)  # supports well below 64 atoms: well posed
    x = F.normalize(torch.randn(6, 64, generator=g), dim=-1)
    sol = nonneg_lasso(atoms, x, 0.05)
    for i in range(len(x)):
        want = exact_row(atoms, x[i], 0.05, sol.weights[i], sol.atoms[i])
        k = int((sol.weights[i] > 0).sum())
        assert k >= 2 and bool((want[0] > 0).all())
        fewer = sol.weights[i].clone()
        fewer[k - 1] = 0
        more = sol.weights[i].clone()
        more[k] = 1e-3  # an atom the answer does not use
        for start in (fewer, more):
            got = exact_row(atoms, x[i], 0.05, start, sol.atoms[i], sol.slack[i])
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), i
