"""Embedding drift: a permutation test that keeps its false-alarm rate, sees a planted shift, samples the same
images however the scan was split into parts, and reaches `audit diff` and `audit check`."""

import numpy as np
import pytest
from PIL import Image

import audit
from audit.analysis.embedding_drift import mmd_test, sample
from audit.cli import main

from .helpers import FAST, save_noise

DIM = 64


def clusters(rs, n: int, centres: np.ndarray, moved: float = 0.0, spread: float = 0.5) -> np.ndarray:
    """n unit vectors around random centres; a share `moved` of them around the first centre instead."""
    pick = rs.integers(0, len(centres), n)
    pick[: int(moved * n)] = 0
    x = centres[pick] * 3 + rs.standard_normal((n, centres.shape[1])) * spread
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_the_false_alarm_rate_is_the_level_on_null_data():
    """Two samples of one distribution, 300 times: p < 0.05 in about 5% of them (the permutation test is exact)."""
    rs = np.random.default_rng(0)
    centres = rs.standard_normal((10, DIM))
    ps = np.array([mmd_test(clusters(rs, 60, centres), clusters(rs, 60, centres), 100, seed)[2]
                   for seed in range(300)])
    assert 0.02 <= (ps < 0.05).mean() <= 0.085, (ps < 0.05).mean()
    assert 0.3 < np.median(ps) < 0.7


def test_a_planted_shift_is_found():
    """A fifth of one snapshot moved to one of ten clusters (its share from 10% to 28%): found nearly always."""
    rs = np.random.default_rng(1)
    centres = rs.standard_normal((10, DIM))
    ps = np.array([mmd_test(clusters(rs, 200, centres), clusters(rs, 200, centres, moved=0.2), 200, seed)[2]
                   for seed in range(20)])
    assert (ps < 0.05).mean() >= 0.9, ps


def test_the_sample_does_not_depend_on_how_the_parts_were_cut():
    rs = np.random.default_rng(2)
    ids = [f"img/{i:05d}.jpg" for i in range(500)]
    emb = rs.standard_normal((500, 8)).astype(np.float32)

    def parts(order, size):
        return [([ids[i] for i in order[lo:lo + size]], emb[order[lo:lo + size]]) for lo in range(0, 500, size)]

    a = sample(parts(np.arange(500), 64), 100, seed=0)
    b = sample(parts(rs.permutation(500), 7), 100, seed=0)
    assert a.shape == (100, 8) and np.array_equal(a, b)
    assert np.allclose(np.linalg.norm(a, axis=1), 1)
    assert not np.array_equal(a, sample(parts(np.arange(500), 64), 100, seed=1))  # the seed picks the images
    everything = sample(parts(np.arange(500), 64), 1000, seed=0)  # fewer images than asked for: all of them
    assert everything.shape == (500, 8) and np.array_equal(everything, sample(parts(rs.permutation(500), 9), 1000, 0))


def flat_colours(root, n=8):
    for i in range(n):
        path = root / "x" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 40), (30 * i % 255, 200, 40)).save(path)
    return root


def test_diff_and_check_see_what_the_images_show(tmp_path, capsys):
    """Noise photos against flat colours (audit-tiny): the embeddings moved; against itself they did not; a
    scan without embeddings says why it is not compared, and the rule is skipped."""
    noise = tmp_path / "noise"
    for i in range(8):
        save_noise(noise / "x" / f"{i}.png", seed=i)
    kw = dict(opinion="probes", words="red", **FAST)
    audit.scan(noise, tmp_path / "a", **kw)
    audit.scan(flat_colours(tmp_path / "flat"), tmp_path / "b", **kw)
    audit.scan(noise, tmp_path / "bare", embeddings="none", **kw)
    assert main(["diff", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "Embeddings: maximum mean discrepancy" in out and "moved beyond sampling noise" in out, out
    assert main(["diff", str(tmp_path / "a"), str(tmp_path / "a")]) == 0
    assert "within sampling noise" in capsys.readouterr().out
    policy = tmp_path / "policy.toml"
    policy.write_text('[drift]\nembeddings = true\nkind = "ascent"\n', encoding="utf-8")
    assert main(["check", str(tmp_path / "b"), "--policy", str(policy), "--baseline", str(tmp_path / "a")]) == 1
    assert "FAIL  drift.embeddings" in capsys.readouterr().out
    assert main(["check", str(tmp_path / "a"), "--policy", str(policy), "--baseline", str(tmp_path / "a")]) == 0
    assert "PASS  drift.embeddings" in capsys.readouterr().out
    assert main(["check", str(tmp_path / "a"), "--policy", str(policy), "--baseline", str(tmp_path / "bare")]) == 0
    out = capsys.readouterr().out
    assert "SKIP  drift.embeddings" in out and "keeps no image embeddings" in out, out
    assert "not compared" in audit.diff(tmp_path / "bare", tmp_path / "a").markdown()
    # A scan `audit ask` made keeps no embeddings of its own: its source's are its images'.
    audit.ask(tmp_path / "a", tmp_path / "asked", words="dog", device="cpu", quiet=True)
    assert "within sampling noise" in audit.diff(tmp_path / "a", tmp_path / "asked").text()
    assert "moved beyond sampling noise" in audit.diff(tmp_path / "b", tmp_path / "asked").text()


def test_a_rule_without_a_kind_reads_the_words_the_scan_holds(tmp_path, capsys):
    """[drift] embeddings on two concept scans names the concepts that moved (it named the ascent's words, which
    a concepts scan has none of: "moved most: none"); a kind set in the policy still wins."""
    noise = tmp_path / "noise"
    for i in range(8):
        save_noise(noise / "x" / f"{i}.png", seed=i)
    kw = dict(opinion="concepts", **FAST)
    audit.scan(noise, tmp_path / "a", **kw)
    audit.scan(flat_colours(tmp_path / "flat"), tmp_path / "b", **kw)
    policy = tmp_path / "policy.toml"
    policy.write_text("[drift]\nembeddings = true\n", encoding="utf-8")
    assert main(["check", str(tmp_path / "b"), "--policy", str(policy), "--baseline", str(tmp_path / "a")]) == 1
    out = capsys.readouterr().out
    assert "concept words that moved most: '" in out, out
    # A concepts scan keeps its vocabulary's text embeddings, so the check names the drift in words, no model loaded.
    words, text = audit.Scan(tmp_path / "b").vocabulary()
    assert len(words) == len(text) > 100 and np.allclose(np.linalg.norm(text, axis=1), 1, atol=1e-2)
    assert "the new images are more like '" in out, out
    policy.write_text('[drift]\nembeddings = true\nkind = "ascent"\n', encoding="utf-8")
    main(["check", str(tmp_path / "b"), "--policy", str(policy), "--baseline", str(tmp_path / "a")])
    assert "ascent words that moved most: none" in capsys.readouterr().out
    # audit diff likewise compares the concepts of two concept scans, unless told otherwise.
    assert audit.diff(tmp_path / "a", tmp_path / "b").diff.kind == "concept"
    assert audit.diff(tmp_path / "a", tmp_path / "b", kind="ascent").diff.kind == "ascent"


@pytest.mark.parametrize("bad", ["embeddings = 1", 'embeddings = "yes"'])
def test_the_rule_takes_a_boolean(tmp_path, bad, capsys):
    audit.scan(flat_colours(tmp_path / "flat"), tmp_path / "a", opinion="probes", words="red", **FAST)
    policy = tmp_path / "policy.toml"
    policy.write_text(f"[drift]\n{bad}\n", encoding="utf-8")
    assert main(["check", str(tmp_path / "a"), "--policy", str(policy)]) == 2
    assert "embeddings" in capsys.readouterr().err


def test_the_smallest_p_of_the_kernel_widths_is_calibrated():
    """The smallest of the widths' p-values alone would find drift too often; the test calibrates it by the
    shuffles' own smallest, so its p is never below the smallest width's and, under no drift, mostly above."""
    from audit.analysis.embedding_drift import SCALES

    rs = np.random.default_rng(4)
    centres = rs.standard_normal((10, DIM))
    above = 0
    for seed in range(20):
        x, y = clusters(rs, 60, centres), clusters(rs, 60, centres)
        aggregated = mmd_test(x, y, 100, seed)[2]
        smallest = min(mmd_test(x, y, 100, seed, scales=(s,))[2] for s in SCALES)
        assert aggregated >= smallest - 1e-12
        above += aggregated > smallest + 1e-12
    assert above >= 10, above


def gapped(rs, centres: np.ndarray, gap: np.ndarray) -> np.ndarray:
    """Text embeddings for the centres as CLIP places them: near their images' direction, across a common gap."""
    t = centres + gap + rs.standard_normal(centres.shape) * 0.3
    return t / np.linalg.norm(t, axis=1, keepdims=True)


def test_the_witness_names_the_word_whose_images_arrived():
    """A fifth of the new snapshot moved to the first of ten clusters: its word follows the witness best of 30
    words (10 near the clusters across a modality gap, 20 elsewhere) in 8 of 8 draws; the other way round it is
    the word the images are least like."""
    from audit.analysis.drift_words import drift_words

    rs = np.random.default_rng(3)
    centres = rs.standard_normal((10, DIM))
    words = [f"w{i}" for i in range(30)]
    unit = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    text = np.concatenate([gapped(rs, unit * 3, rs.standard_normal(DIM) * 0.4), rs.standard_normal((20, DIM))])
    for seed in range(8):
        old, new = clusters(rs, 300, centres), clusters(rs, 300, centres, moved=0.2)
        width = mmd_test(old, new, 50, seed)[3]
        found = drift_words(old, new, words, text, width)
        assert found.arrived[0][0] == "w0" and "w0" not in [w for w, _ in found.left], found
        back = drift_words(new, old, words, text, width)
        assert back.left[0][0] == "w0" and "w0" not in [w for w, _ in back.arrived], back


def test_diff_and_check_say_the_drift_in_words_only_when_it_drifted(tmp_path, capsys):
    """Stored embeddings and a stored vocabulary, no model: the moved snapshot is 'more like' the word its
    images moved towards, in audit diff and in the check's rule; a snapshot of the same distribution drifts
    not, and no words are said. Without a stored vocabulary the diff says why there are none."""
    from audit.store.layout import write_vocabulary

    from .scanfactory import write_scan

    rs = np.random.default_rng(4)
    centres = rs.standard_normal((6, DIM))
    unit = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    names = ["snow", "grass", "sand", "road", "water", "wall"]
    text = gapped(rs, unit * 3, rs.standard_normal(DIM) * 0.4)

    def snapshot(name, moved):
        emb = clusters(rs, 240, centres, moved=moved, spread=2.0)  # wide enough that no two are near-copies
        images = [{"image_id": f"{name}/{i}.png", "label": "a"} for i in range(240)]
        write_scan(tmp_path / name, images, {im["image_id"]: ["thing"] for im in images}, embeddings=emb)
        return tmp_path / name

    old, same, moved = snapshot("old", 0.0), snapshot("same", 0.0), snapshot("moved", 0.25)
    out = audit.diff(old, moved).text()
    assert "no words for it" in out and "stored a vocabulary" in out, out
    for scan in (old, same, moved):
        write_vocabulary(scan, names, text, "test")
    out = audit.diff(old, moved).text()
    assert "moved beyond sampling noise" in out and "the new images are more like 'snow'" in out, out
    out = audit.diff(old, same).text()
    assert "within sampling noise" in out and "more like" not in out, out
    policy = tmp_path / "policy.toml"
    policy.write_text('[drift]\nembeddings = true\nkind = "ascent"\n', encoding="utf-8")
    assert main(["check", str(moved), "--policy", str(policy), "--baseline", str(old), "--json",
                 str(tmp_path / "check.json")]) == 1
    assert "the new images are more like 'snow'" in capsys.readouterr().out
    import json

    rule = next(r for r in json.loads((tmp_path / "check.json").read_text())["rules"]
                if r["name"] == "drift.embeddings")
    assert rule["measured"]["more_like"][0]["word"] == "snow", rule
    assert main(["check", str(same), "--policy", str(policy), "--baseline", str(old)]) == 0
    assert "more like" not in capsys.readouterr().out
