"""Which words count, how the tests are corrected for multiplicity, and kinds of words in report, check and diff:
hand-made scans with known counts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from audit.analysis import stats
from audit.analysis.associations import associations, word_filter
from audit.cli import main
from audit.errors import AuditError
from audit.outputs.report import build_report
from audit.policy.parse import parse_policy
from audit.store.query import ScanQuery, WordFilter

from .scanfactory import write_scan


def junk_scan(tmp_path):
    """20 images, A and B. 'grass' in 8 of A and 1 of B; 'the' in every image; 'allery' in 8 of A, but with an
    own cosine of 0.01 against the best sequence's 0.3 (a token that meant something only in its sequence)."""
    images = [{"image_id": f"a{i}", "label": "A"} for i in range(10)]
    images += [{"image_id": f"b{i}", "label": "B"} for i in range(10)]
    words = {im["image_id"]: ["the"] for im in images}
    for i in range(8):
        words[f"a{i}"] += ["grass", "allery"]
    words["b0"].append("grass")
    return write_scan(tmp_path / "scan", images, words,
                      word_cosine=lambda image, word: 0.01 if word == "allery" else 0.25)


def test_stop_words_and_out_of_context_tokens_are_not_tested(tmp_path):
    q = ScanQuery.open(junk_scan(tmp_path))
    kept = associations(q, "label", min_count=3)
    assert set(kept.table.word) == {"grass"}
    assert kept.filtered == {"pairs": 37, "words": 3, "kept_pairs": 9, "kept_words": 1, "stop_pairs": 20,
                             "cosine_pairs": 8}
    everything = associations(q, "label", min_count=3, words=WordFilter())
    assert {"grass", "the", "allery"} == set(everything.table.word)
    assert ("A", "allery") in set(zip(everything.flagged.grp, everything.flagged.word, strict=True))
    # The threshold is relative to the image's own best sequence: 0.01 / 0.3 is 3%, 0.25 / 0.3 is 83%.
    assert set(associations(q, "label", 3, words=word_filter(min_relative_cosine=0.03)).table.word) == \
        {"grass", "allery"}
    assert set(associations(q, "label", 3, words=word_filter(min_relative_cosine=0.84)).table.word) == set()
    with pytest.raises(AuditError, match="between 0 and 1"):
        word_filter(min_relative_cosine=1.5)


def test_stop_word_lists_from_a_file_or_none(tmp_path):
    q = ScanQuery.open(junk_scan(tmp_path))
    (tmp_path / "stop.txt").write_text("# my list\ngrass  # not wanted here\n", encoding="utf-8")
    custom = associations(q, "label", 3, words=word_filter(str(tmp_path / "stop.txt"), 0.0))
    assert set(custom.table.word) == {"the", "allery"}
    assert set(associations(q, "label", 3, words=word_filter("none", 0.0)).table.word) == {"grass", "the", "allery"}
    with pytest.raises(AuditError, match="does not exist"):
        word_filter(str(tmp_path / "missing.txt"))


def test_the_report_says_what_each_filter_removed(tmp_path, capsys):
    scan = junk_scan(tmp_path)
    html = build_report(scan, ["label"], tmp_path / "r.html", min_count=3).read_text()
    assert "stop words removed 20" in html and "removed 8" in html and "9 pairs (1 distinct words)" in html
    assert "Stop words" in html and "Tarone" in html
    assert main(["report", str(scan), "-g", "label", "-o", str(tmp_path / "all.html"), "--min-count", "3",
                 "--stop-words", "none", "--min-relative-cosine", "0", "--procedure", "bh"]) == 0
    everything = (tmp_path / "all.html").read_text()
    assert "no stop words were removed" in everything and "allery" in everything
    assert "over every tested pair" in everything


def test_min_attainable_p_is_the_most_extreme_table():
    # 10 images in the group, 30 in the rest, the word in 6: at best all 6 inside the group.
    assert math.isclose(stats.min_attainable_p(10, 30, 6), stats.association_test(6, 4, 0, 30)[0])
    # A word in 38 of 40: at least 8 must fall in the group of 10 (all 30 of the rest plus 8) or all 10.
    want = min(stats.association_test(8, 2, 30, 0)[0], stats.association_test(10, 0, 28, 2)[0])
    assert math.isclose(stats.min_attainable_p(10, 30, 38), want)
    # Chi-square margins (every expected count at least 5) use the same test as the data would.
    assert stats.association_test(50, 50, 0, 100)[1] == "chi2"
    assert math.isclose(stats.min_attainable_p(100, 100, 50), stats.association_test(50, 50, 0, 100)[0])
    # One-sided, only the over-represented end counts: a word in 38 of 40 reaches its floor with all 10 in the
    # group, not with 8 (where it is under-represented: p near 1).
    greater = stats.min_attainable_p(10, 30, 38, "greater")
    assert math.isclose(greater, stats.association_test(10, 0, 28, 2, "greater")[0]) and greater < 0.5
    assert stats.association_test(8, 2, 30, 0, "greater")[0] > 0.9


def test_tarone_bh_counts_only_the_tests_that_can_reach_significance():
    p = np.array([1e-7, 0.004, 0.02, 0.03, 0.4])
    floor = np.array([1e-9, 1e-6, 0.011, 0.012, 0.3])
    q, testable = stats.tarone_bh(p, floor, 0.05)
    # K = 4: four tests have a floor at most 0.05 / 4 = 0.0125; the fifth could never be significant.
    assert list(testable) == [True, True, True, True, False]
    assert np.allclose(q[:4], stats.bh_qvalues(p[:4])) and math.isnan(q[4])
    # Tighter: with floors above 0.05 / 2 for two of the tests, K = 2 keeps only the first two.
    q, testable = stats.tarone_bh(p, np.array([1e-9, 1e-6, 0.03, 0.03, 0.3]), 0.05)
    assert list(testable) == [True, True, False, False, False]
    assert np.allclose(q[:2], stats.bh_qvalues(p[:2]))
    assert stats.tarone_bh([], [], 0.05)[0].shape == (0,)


def test_tarone_bh_keeps_the_false_discovery_rate_on_null_data():
    """400 null datasets of 30 words over a group of 15 and a rest of 45: the word's images fall between the
    groups at random. Every flag is false, so the share of datasets with any flag is the FDR; it must stay at
    the stated 5% (20 of 400; a procedure without the correction flags in most datasets)."""
    rs = np.random.RandomState(0)
    any_flag = {"tarone-bh": 0, "bh": 0}
    for _ in range(400):
        totals = rs.randint(3, 25, size=30)
        a = rs.hypergeometric(15, 45, totals)
        rows = [(int(ai), 15 - int(ai), int(t - ai), 45 - int(t - ai)) for ai, t in zip(a, totals, strict=True)]
        p = np.array([stats.association_test(*r)[0] for r in rows])
        floor = np.array([stats.min_attainable_p(15, 45, int(t)) for t in totals])
        q, _ = stats.tarone_bh(p, floor, 0.05)
        any_flag["tarone-bh"] += bool((np.nan_to_num(q, nan=1) < 0.05).any())
        any_flag["bh"] += bool((stats.bh_qvalues(p) < 0.05).any())
    assert any_flag["tarone-bh"] <= 30 and any_flag["bh"] <= 30, any_flag  # 5% of 400, with binomial room


def snow_scan(tmp_path, rare_words: int, seed: int) -> ScanQuery:
    """Two groups of 30 (A) and 60 (B): 'snow' in 11 of A and 6 of B (chi-square p = 0.0023), and `rare_words`
    words in 5 images each, spread at random."""
    images = [{"image_id": f"a{i}", "label": "A"} for i in range(30)]
    images += [{"image_id": f"b{i}", "label": "B"} for i in range(60)]
    words = {im["image_id"]: [] for im in images}
    for i in range(11):
        words[f"a{i}"].append("snow")
    for i in range(6):
        words[f"b{i}"].append("snow")
    rs = np.random.RandomState(seed)
    for k in range(rare_words):
        for image_id in rs.choice(list(words), size=5, replace=False):
            words[image_id].append(f"rare{k}")
    return ScanQuery.open(write_scan(tmp_path / "scan", images, words))


def test_associations_count_each_two_group_table_once_and_gain_power(tmp_path):
    """Two groups, tested two-sided (audit 0.2): 'snow' in 11 of 30 A against 6 of 60 B (chi-square p = 0.0023),
    and 40 words seen in 5 images each. BH over the 41 words cannot flag snow (q = 0.095); a table with 5 images
    can reach p = 0.0032 at best, above 0.05 / 16, so Tarone-BH counts snow alone and flags it."""
    q = snow_scan(tmp_path, rare_words=40, seed=1)
    bh = associations(q, "label", min_count=5, procedure="bh", alternative="two-sided")
    tarone = associations(q, "label", min_count=5, procedure="tarone-bh", alternative="two-sided")
    t = tarone.table.set_index(["grp", "word"])
    assert t.loc[("A", "snow"), "q"] == t.loc[("B", "snow"), "q"]  # one hypothesis, two rows
    assert ("A", "snow") not in set(zip(bh.flagged.grp, bh.flagged.word, strict=True))
    assert list(zip(tarone.flagged.grp, tarone.flagged.word, strict=True)) == [("A", "snow")]
    assert tarone.testable == 2 and tarone.tested == 82 and t.q.isna().sum() == 80  # snow's two rows only
    assert math.isclose(t.loc[("A", "snow"), "q"], t.loc[("A", "snow"), "p"])
    # BH counts the 41 words once each as well: its q-values equal BH over one p-value per word.
    one = bh.table.drop_duplicates("word")
    assert np.allclose(one.sort_values("word").q, stats.bh_qvalues(one.sort_values("word").p))


def test_one_sided_tests_of_two_groups_are_two_hypotheses_with_the_same_answer(tmp_path):
    """One-sided (the default), "snow over-represented in A" and "in B" are two hypotheses: A's p is Fisher's
    mid-p, B's near 1. Counted both, Tarone-BH gives A's snow twice its p as q, and flags it as counting the
    table once did; the rare words' pairs in A can reach a mid-p of 0.0016 at best (5 of 5 images in A), in B
    0.06, above 0.05 / 32, so neither counts."""
    q = snow_scan(tmp_path, rare_words=40, seed=1)
    one_sided = associations(q, "label", min_count=5)
    t = one_sided.table.set_index(["grp", "word"])
    assert one_sided.alternative == "greater"
    assert math.isclose(t.loc[("A", "snow"), "p"], stats.fisher_exact(11, 19, 6, 54, "greater", mid=True))
    assert t.loc[("A", "snow"), "test"] == "fisher-mid-p" and t.loc[("B", "snow"), "p"] > 0.99
    assert one_sided.testable == 2 and t.q.notna().sum() == 2
    assert math.isclose(t.loc[("A", "snow"), "q"], 2 * t.loc[("A", "snow"), "p"], rel_tol=1e-12)
    assert list(zip(one_sided.flagged.grp, one_sided.flagged.word, strict=True)) == [("A", "snow")]
    bh = associations(q, "label", min_count=5, procedure="bh")
    assert bh.flagged.empty and bh.testable == 82


# ---- kinds in policies, check and diff ---------------------------------------------------------------------

def kinds_scan(tmp_path, name="scan"):
    """Ascent words evenly spread; concept 'grass' in 8 of A and 1 of B; probe 'doctor' higher in A."""
    images = [{"image_id": f"a{i}", "label": "A"} for i in range(10)]
    images += [{"image_id": f"b{i}", "label": "B"} for i in range(10)]
    words = {im["image_id"]: ["sky"] for im in images}
    concepts = {im["image_id"]: [("sky", 0.1)] for im in images}
    for i in range(8):
        concepts[f"a{i}"].append(("grass", 0.3))
    concepts["b0"].append(("grass", 0.05))
    probes = {im["image_id"]: [("doctor", 0.30 if im["label"] == "A" else 0.20)] for im in images}
    return write_scan(tmp_path / name, images, words, probes=probes, concepts=concepts)


def test_policy_rules_gate_on_the_kind_they_name(tmp_path, capsys):
    scan = kinds_scan(tmp_path)
    policy = tmp_path / "p.toml"
    policy.write_text('group_by = "label"\nmin_count = 3\n'
                      '[[watch]]\nname = "ascent"\nwords = ["grass"]\n'
                      '[[watch]]\nname = "concepts"\nkind = "concept"\nwords = ["grass"]\n'
                      '[[watch]]\nname = "probes"\nkind = "probe"\nwords = ["doctor"]\n'
                      '[max_association]\nkind = "concept"\nmax_odds_ratio = 1.0\nlevel = "warn"\n', encoding="utf-8")
    code = main(["check", str(scan), "--policy", str(policy)])
    out = capsys.readouterr().out
    assert code == 1
    assert "PASS  watch:ascent" in out and "FAIL  watch:concepts" in out and "FAIL  watch:probes" in out
    assert "'grass' with label=A" in out and "'doctor' with label=A" in out
    assert "WARN  max_association" in out


@pytest.mark.parametrize("table,kind,message", [
    ("max_association", "probe", "max_association.kind is 'ascent' or 'concept'"),
    ("drift", "probe", "drift.kind is 'ascent' or 'concept'"),
    ("watch", "concepts", "watch.kind is 'ascent' or 'concept' or 'probe'"),
])
def test_policy_kinds_are_checked(table, kind, message):
    body = {"max_association": {"max_odds_ratio": 2.0}, "drift": {"max_jsd": 0.1}, "watch": {"words": ["grass"]}}
    with pytest.raises(AuditError, match=message):
        parse_policy({"group_by": "label", table: {**body[table], "kind": kind}}, "p.toml")


def test_policy_stop_words_and_threshold(tmp_path):
    (tmp_path / "stop.txt").write_text("sky\n")
    p = parse_policy({"group_by": "label", "stop_words": "stop.txt", "min_relative_cosine": 0.2,
                      "watch": {"words": ["grass"]}}, str(tmp_path / "p.toml"))
    assert p.stop_words == str(tmp_path / "stop.txt") and p.min_relative_cosine == 0.2
    with pytest.raises(AuditError, match="not a file"):
        parse_policy({"group_by": "label", "stop_words": "nope.txt", "watch": {"words": ["grass"]}},
                     str(tmp_path / "p.toml"))
    with pytest.raises(AuditError, match="share between 0 and 1"):
        parse_policy({"group_by": "label", "min_relative_cosine": 2, "watch": {"words": ["grass"]}}, "p.toml")


def test_diff_compares_the_kind_asked_for(tmp_path, capsys):
    old, new = kinds_scan(tmp_path, "old"), kinds_scan(tmp_path, "new")
    assert main(["diff", str(old), str(new), "--kind", "concept", "-g", "label", "--min-count", "3"]) == 0
    out = capsys.readouterr().out
    assert "concept distribution" in out and "grass" in out
    assert main(["diff", str(old), str(new), "--kind", "probe"]) == 2


def test_a_two_group_table_counts_once_in_tarones_k(tmp_path):
    """Snow as above and 10 words in 5 images each: counted once per word, 11 tables can each reach 0.05 / 11
    (a 5-image table reaches 0.0032 < 0.0045), so all are testable and snow's q is BH over 11 words. Counted
    per row (22), none of the 5-image tables could reach 0.05 / 16 and only snow would count. One-sided, each row
    is its own hypothesis: a rare word's pair in A (30 of 90 images) can reach a mid-p of 0.0016, in B 0.06, so
    K = 12 counts snow's two rows and the ten rare words' rows in A."""
    q = snow_scan(tmp_path, rare_words=10, seed=2)
    a = associations(q, "label", min_count=5, alternative="two-sided")
    assert a.testable == 22 and a.tested == 22
    snow = a.table.set_index(["grp", "word"]).loc[("A", "snow")]
    one = a.table.drop_duplicates("word")
    assert math.isclose(snow.q, float(stats.bh_qvalues(one.p)[list(one.word).index("snow")]))
    one_sided = associations(q, "label", min_count=5).table
    counted = one_sided[one_sided.testable]
    assert len(counted) == 12 and set(counted[counted.word != "snow"].grp) == {"A"}


def test_mean_concept_weight_per_group_counts_absent_concepts_as_zero(tmp_path):
    from audit.analysis.associations import concept_weights

    images = [{"image_id": f"a{i}", "label": "A"} for i in range(4)]
    images += [{"image_id": f"b{i}", "label": "B"} for i in range(3)]
    concepts = {"a0": [("grass", 0.3)], "a1": [("grass", 0.5)], "b0": [("grass", 0.1)], "b1": [("sky", 0.2)]}
    scan = write_scan(tmp_path / "scan", images, {im["image_id"]: [] for im in images}, concepts=concepts)
    w = concept_weights(ScanQuery.open(scan), "label", ["grass", "sky", "unseen"]).set_index(["word", "grp"])
    a = np.array([0.3, 0.5, 0.0, 0.0])
    half = 1.959963984540054 * a.std(ddof=1) / 2
    row = w.loc[("grass", "A")]
    assert row.n == 4 and math.isclose(row["mean"], 0.2, abs_tol=1e-7)
    assert math.isclose(row.ci_lo, 0.2 - half, abs_tol=1e-6) and math.isclose(row.ci_hi, 0.2 + half, abs_tol=1e-6)
    assert math.isclose(row.mean_rest, 0.1 / 3, abs_tol=1e-7)
    assert math.isclose(w.loc[("sky", "B"), "mean"], 0.2 / 3, abs_tol=1e-7) and w.loc[("sky", "A"), "mean"] == 0
    assert (w.loc["unseen"]["mean"] == 0).all()


def test_a_weak_plant_missed_two_sided_is_found_one_sided(tmp_path):
    """The issue's held-out plant: 300 images in groups of 100, snow on 38 of A's images against 41 of the other
    200, and 20 words spread evenly (10 images in each group): 63 pairs. Two-sided, snow with A has p = 0.0012 and
    q = 0.074, missed at FDR 0.05; tested for over-representation, the claim a flag makes (Fisher's mid-p),
    p = 0.00076 and q = 0.048: found, and nothing else is flagged."""
    images = [{"image_id": f"{g}{i}", "label": g} for g in "ABC" for i in range(100)]
    words = {im["image_id"]: [] for im in images}
    for g, n in (("A", 38), ("B", 20), ("C", 21)):
        for i in range(n):
            words[f"{g}{i}"].append("snow")
    for g in "ABC":
        for i in range(100):
            words[f"{g}{i}"] += [f"even{k}" for k in range(20) if (i + k) % 10 == 0]
    q = ScanQuery.open(write_scan(tmp_path / "scan", images, words))
    two = associations(q, "label", min_count=5, alternative="two-sided")
    one = associations(q, "label", min_count=5)
    for a in (two, one):
        assert a.tested == 63 and a.testable == 63
    row = two.table.set_index(["grp", "word"]).loc[("A", "snow")]
    assert math.isclose(row.p, 0.0011779, rel_tol=1e-4) and math.isclose(row.q, row.p * 63) and two.flagged.empty
    row = one.table.set_index(["grp", "word"]).loc[("A", "snow")]
    assert math.isclose(row.p, 0.00076390, rel_tol=1e-4) and math.isclose(row.q, row.p * 63)
    assert list(zip(one.flagged.grp, one.flagged.word, strict=True)) == [("A", "snow")]
