"""Copies and leaks: fingerprints taken while scanning, clusters that cannot chain, leaks between splits and scans,
statistics that a copy cannot sway, and the policy rules that gate on them."""

import io
import json
import random

import imagehash
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

import audit
from audit.analysis.duplicates import (
    CopySettings,
    Prints,
    find_copies,
    hamming,
    open_query,
)
from audit.cli import main
from audit.errors import AuditError
from audit.sources.fingerprint import fingerprint, phash
from audit.store.query import ScanQuery

from .copies_case import POLICY, make_case
from .helpers import FAST
from .scanfactory import write_scan

PROBES = dict(FAST, opinion="probes", words=("a photo",))


def photo(seed: int, size=(96, 72)) -> Image.Image:
    """A smooth random picture (a photograph's low frequencies, which a pHash reads)."""
    rs = np.random.RandomState(seed)
    small = rs.randint(0, 255, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def test_phash_is_imagehash_bit_for_bit():
    rs = np.random.default_rng(0)
    for k in range(50):
        a = rs.integers(0, 256, (32, 32), dtype=np.uint8) if k % 2 else \
            np.cumsum(rs.integers(0, 9, (32, 32)), 1).clip(0, 255).astype(np.uint8)
        want = int(str(imagehash.phash(Image.fromarray(a))), 16)
        assert phash(a.astype(np.float64)) & (2**64 - 1) == want


def test_fingerprints_equal_for_lossless_reencodes_and_close_for_lossy_and_mirrored():
    img = photo(1)
    png, webp, jpeg = io.BytesIO(), io.BytesIO(), io.BytesIO()
    img.save(png, "PNG")
    img.save(webp, "WEBP", lossless=True)
    img.save(jpeg, "JPEG", quality=70)
    a, b, c = (fingerprint(Image.open(f).convert("RGB")) for f in (png, webp, jpeg))
    assert a.pixel_sha256 == b.pixel_sha256 and a.phash == b.phash
    assert c.pixel_sha256 != a.pixel_sha256 and hamming(a.phash, c.phash) <= 4
    flipped = fingerprint(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    assert hamming(a.phash, flipped.phash) > 10 and hamming(a.phash, flipped.phash_mirror) == 0
    assert fingerprint(photo(2)).pixel_sha256 != a.pixel_sha256 and hamming(a.phash, fingerprint(photo(2)).phash) > 10


def prints(vectors, hashes, shas=None) -> Prints:
    n = len(vectors)
    v = np.asarray(vectors, np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    h = np.asarray(hashes, np.int64)
    return Prints(np.array([f"img{i}" for i in range(n)], dtype=object),
                  np.array(shas or [f"sha{i}" for i in range(n)], dtype=object), h, h, np.ones(n, bool), v)


def unit(angle_degrees: float) -> list[float]:
    t = np.radians(angle_degrees)
    return [np.cos(t), np.sin(t), 0.0]


def clusters_of(found: pd.DataFrame) -> set[frozenset]:
    return {frozenset(g.image_id) for _, g in found.groupby("cluster")}


def test_a_chain_of_near_neighbours_is_not_one_cluster():
    """a~b and b~c (12 degrees apart: cosine 0.978, above the tight 0.97) with a far from c (24 degrees: 0.914),
    and a with two more copies of its own, so that a represents the cluster: c is a copy of b only, and stays out,
    whichever order the images come in. The hashes are 31 bits or more apart: the embeddings alone decide."""
    s = CopySettings()
    angles = {"a": 0, "b": 12, "c": 24, "d": -3, "e": -6}
    far = [0, 0x00000000FFFFFFFF, 0x7FFFFFFF00000000, 0x5555555555555555, 0x3333333333333333]
    for order in (["a", "b", "c", "d", "e"], ["c", "b", "a", "e", "d"], ["b", "e", "c", "d", "a"]):
        p = prints([unit(angles[k]) for k in order], far)
        found = find_copies(p, s)
        name = {f"img{i}": k for i, k in enumerate(order)}
        got = {frozenset(name[i] for i in c) for c in clusters_of(found)}
        assert got == {frozenset("abde")}, order
        assert {name[r] for r in found.representative} == {"a"}, order  # the most copies, wherever it comes
    # A long chain (a burst of frames, 5 degrees apart): no cluster reaches past two steps from its representative.
    p = prints([unit(5 * k) for k in range(30)], [(k * 0x9E3779B97F4A7C15) % (1 << 63) for k in range(30)])
    found = find_copies(p, s)
    assert found.groupby("cluster").size().max() <= 5 and found.cluster.nunique() >= 6


def test_copies_of_one_photograph_stay_together_and_exact_copies_are_marked():
    """A star: each copy is a copy of the original, not all of each other (hash 6 apart from it, 12 from each
    other, cosines 0.95 > min_cosine): one cluster, with the original as representative."""
    s = CopySettings(tight_cosine=None)
    original = 0
    hashes = [original, 0b111111, 0b111111 << 6, 0b111111 << 12, 0b111111 << 18, original]
    vectors = [unit(0), unit(18), unit(-18), [0.95, 0, 0.31], [0.95, 0, -0.31], unit(0)]
    found = find_copies(prints(vectors, hashes, ["o", "a", "b", "c", "d", "o"]), s).set_index("image_id")
    assert set(found.representative) == {"img0"}
    assert found.kind.to_dict() == {"img0": "representative", "img1": "near", "img2": "near", "img3": "near",
                                    "img4": "near", "img5": "exact"}
    assert found.hash_distance["img1"] == 6 and found.similarity["img5"] == 1.0


def test_the_same_hash_with_a_different_embedding_is_not_a_copy_unless_within_same_hash_distance():
    p = prints([unit(0), unit(60), unit(120), unit(180)], [0, 0b1111111, 0x5555555555555555, 0x5555555555555556])
    found = find_copies(p, CopySettings(tight_cosine=None))
    assert clusters_of(found) == {frozenset({"img2", "img3"})}  # 2 bits: the pHash alone; 7 bits: no


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Two scans with audit-tiny: `a` holds three photographs, an exact copy (lossless WebP) and a JPEG copy
    under another label; `b` a resized copy of one of `a`'s photographs and a new one."""
    root = tmp_path_factory.mktemp("photos")
    for folder in ("a/train", "a/test", "b"):
        (root / folder).mkdir(parents=True)
    for k in range(3):
        photo(k).save(root / "a" / "train" / f"p{k}.png")
    photo(0).save(root / "a" / "train" / "p0-again.webp", lossless=True)
    photo(1).save(root / "a" / "test" / "p1.jpg", quality=85)
    photo(2).resize((120, 90)).save(root / "b" / "p2-big.png")
    photo(7).save(root / "b" / "p7.png")
    scans = {}
    for name in ("a", "b"):
        scans[name] = audit.scan(root / name, root / f"scan-{name}", **PROBES).root
    return root, scans


def test_a_scan_stores_fingerprints_and_finds_exact_and_near_copies(photos):
    root, scans = photos
    images = audit.Scan(scans["a"]).images().set_index("image_id")
    assert images.pixel_sha256.str.fullmatch("[0-9a-f]{64}").all() and images.phash.notna().all()
    assert images.pixel_sha256["train/p0.png"] == images.pixel_sha256["train/p0-again.webp"]
    found = audit.duplicates(scans["a"], split_by="label")
    assert clusters_of(found.copies) == {frozenset({"train/p0.png", "train/p0-again.webp"}),
                                         frozenset({"train/p1.png", "test/p1.jpg"})}
    kinds = found.copies.set_index("image_id").kind
    assert kinds["train/p0-again.webp"] == "representative" and kinds["train/p0.png"] == "exact"  # the smaller id
    assert {kinds["test/p1.jpg"], kinds["train/p1.png"]} == {"representative", "near"}
    leaks = found.leak_counts().set_index(["side", "other_side"]).images.to_dict()
    assert leaks == {("test", "train"): 1, ("train", "test"): 1}
    assert (scans["a"] / "duplicates" / "copies.parquet").exists()
    html = audit.report(scans["a"], "label", min_count=1).html
    conflicts = html.split('id="copy-conflicts"')[1].split("</table>")[0]  # p1 is in train and in test
    assert "test, train" in conflicts and conflicts.count("<tr>") == 2


def test_leaks_into_another_scan(photos):
    root, scans = photos
    found = audit.duplicates(scans["b"], against=[scans["a"]])
    assert found.leaks[["image_id", "other_image_id", "kind"]].values.tolist() == [["p2-big.png", "train/p2.png",
                                                                                       "near"]]
    assert found.leaks.other_side.tolist() == [str(scans["a"])]


def test_the_duplicates_command_prints_a_summary_and_writes_json(photos, tmp_path, capsys):
    root, scans = photos
    assert main(["duplicates", str(scans["a"]), "--split-by", "label", "--json", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert "2 clusters of copies hold 4 of them" in out and "test -> train: 1" in out
    summary = json.loads((tmp_path / "c.json").read_text())
    assert summary["collapsed"] == 2 and summary["settings"]["tight_cosine"] is None  # audit-tiny: off
    assert main(["duplicates", str(scans["a"]), "--split-by", "nope"]) == 2
    assert "unknown --split-by column 'nope'" in capsys.readouterr().err
    assert main(["duplicates", str(scans["a"]), "--against", str(tmp_path / "gone")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not an audit scan" in err


def test_a_scan_without_embeddings_finds_exact_copies_and_says_near_copies_need_them(tmp_path):
    for k in range(2):
        photo(k).save(tmp_path / f"p{k}.png")
    photo(0).save(tmp_path / "p0.webp", lossless=True)
    photo(1).save(tmp_path / "p1.jpg", quality=90)
    found = audit.duplicates(audit.scan(tmp_path, tmp_path / "scan", embeddings="none", **PROBES).root)
    assert clusters_of(found.copies) == {frozenset({"p0.png", "p0.webp"})}
    assert any("near copies need embeddings" in n for n in found.notes)


def test_a_cluster_that_spans_groups_counts_once_in_each(tmp_path):
    images = [{"image_id": f"i{k}", "label": "north" if k < 3 else "south"} for k in range(6)]
    scan = write_scan(tmp_path / "scan", images, {f"i{k}": ["star"] for k in range(6)})
    members = pa.table({"image_id": ["i0", "i1", "i3"], "cluster": pa.array([0, 0, 0], pa.int32()),
                        "representative": ["i1", "i1", "i1"]})
    q = ScanQuery.open(scan, members)
    assert dict(q.group_sizes("label").values.tolist()) == {"north": 2, "south": 3}  # i0 collapsed into i1
    assert sorted(q.images_groups().image_id) == ["i1", "i2", "i4", "i5"]  # without groups: once in all
    assert int(q.scalar("SELECT count(*) FROM all_images")) == 6
    kept = ScanQuery.open(scan)
    assert dict(kept.group_sizes("label").values.tolist()) == {"north": 3, "south": 3}


def test_a_hand_made_scan_without_fingerprints_says_what_is_missing(tmp_path):
    scan = write_scan(tmp_path / "scan", [{"image_id": "a", "label": "x"}], {"a": ["w"]})
    q = open_query(scan)
    assert q.copies.collapsed == 0
    assert any("no fingerprints" in n for n in q.copies.notes) and any("embeddings" in n for n in q.copies.notes)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """The copies case with the concept opinion (the issue scanned it with the ascent: bench/duplicates.py case),
    with and without the 25 copies; the watch rule reads concepts."""
    root = tmp_path_factory.mktemp("case")
    policy = root / "policy.toml"
    policy.write_text(POLICY.replace("words = ", 'kind = "concept"\nwords = '), encoding="utf-8")
    scans = {}
    for copies in (25, 0):
        scans[copies] = audit.scan(make_case(root / f"data-{copies}", copies), root / f"scan-{copies}",
                                   model="audit-demo", opinion="concepts", workers=0, quiet=True).root
    return scans, policy


def test_twenty_five_copies_make_a_finding_only_when_copies_are_kept(case):
    scans, policy = case
    kept = audit.check(scans[25], policy, copies="keep")
    assert kept.exit_code == 1 and "'purple' with label=north" in kept.rules[0].summary
    collapsed = audit.check(scans[25], policy)  # the default
    assert collapsed.exit_code == 0, collapsed.text()
    assert "copies: collapsed (" in collapsed.text() and "copies: collapsed (" in collapsed.to_json()
    for mode in ("keep", "collapse"):  # without the copies both modes agree
        assert audit.check(scans[0], policy, copies=mode).exit_code == 0
    assert json.loads((scans[25] / "duplicates" / "settings.json").read_text())["collapsed"] >= 24


def test_the_report_counts_copies_once_and_shows_them(case):
    scans, _ = case
    collapsed = audit.report(scans[25], "label", min_count=3)
    kept = audit.report(scans[25], "label", min_count=3, copies="keep")
    assert "purple" in set(kept.findings.word) and "purple" not in set(collapsed.findings.word)
    assert 'id="copies"' in collapsed.html and "data:image/png;base64" in collapsed.html.split('id="copies"')[1]
    assert "Copies: collapsed (" in collapsed.html and "Copies: kept" in kept.html
    diff = audit.diff(scans[0], scans[25], group_by="label", kind="concept")
    assert "new copies: collapsed (" in diff.text()


def test_verify_grounds_the_findings_the_statistics_counted(case):
    """With the copies kept, 'purple' with north is a finding and its images are verified; collapsed, it is not
    one, and the summary says how copies were counted."""
    scans, _ = case
    kw = dict(group_by="label", faithfulness_images=0, grounding_images=2, random_draws=2, min_count=3, quiet=True,
              device="cpu")
    kept = audit.verify(scans[25], copies="keep", **kw)
    assert "purple" in set(kept.grounding.word) and "Copies: kept" in kept.text()
    collapsed = audit.verify(scans[25], overwrite=True, **kw)
    assert "purple" not in set(collapsed.grounding.word)
    assert json.loads(collapsed.to_json())["copies"].startswith("copies: collapsed (")


def test_the_policy_rules_on_copies_and_leaks_fail_with_a_clear_message(photos, tmp_path):
    root, scans = photos
    policy = tmp_path / "p.toml"
    policy.write_text('group_by = "label"\n[duplicates]\nmax_share = 0.1\n'
                      '[leakage]\nsplit_by = "label"\nlevel = "warn"\n', encoding="utf-8")
    out = audit.check(scans["a"], policy)
    by_id = {r.rule.id: r for r in out.rules}
    assert by_id["duplicates"].status == "fail" and "2 of 5 images (40.0%) are copies" in by_id["duplicates"].summary
    assert by_id["leakage"].status == "warn" and "1 of test in train" in by_id["leakage"].summary
    other = tmp_path / "against.toml"
    other.write_text(f'[leakage]\nagainst = ["{scans["a"]}"]\n', encoding="utf-8")
    leak = audit.check(scans["b"], other).rules[0]
    assert leak.failed and leak.evidence[0]["other_image_id"] == "train/p2.png"
    for bad, message in (('[leakage]\nlevel = "fail"\n', "needs split_by"),
                         ('copies = "some"\n[duplicates]\nmax_share = 0.1\n', "copies is 'collapse' or 'keep'"),
                         ('[duplicates]\nmax_share = 2\n', "max_share is a share")):
        policy.write_text(bad, encoding="utf-8")
        with pytest.raises(AuditError, match=message):
            audit.check(scans["a"], policy)


def test_results_do_not_depend_on_the_order_images_come_in():
    rs = random.Random(0)
    base = [unit(a) for a in (0, 2, 4, 40, 41, 80, 120, 121, 122, 123)]
    hashes = [rs.getrandbits(63) for _ in base]
    want = clusters_of(find_copies(prints(base, hashes), CopySettings()))
    order = list(range(len(base)))
    for _ in range(3):
        rs.shuffle(order)
        p = prints([base[k] for k in order], [hashes[k] for k in order])
        p.ids = np.array([f"img{k}" for k in order], dtype=object)
        sort = np.argsort(p.ids.astype(str))
        p = Prints(p.ids[sort], p.sha[sort], p.phash[sort], p.mirror[sort], p.has_hash[sort], p.vectors[sort])
        assert clusters_of(find_copies(p, CopySettings())) == want


def test_an_older_scan_is_fingerprinted_again_from_its_files(photos, tmp_path):
    """A scan of schema 5 (no fingerprint columns): `audit duplicates` reads its images again into fingerprints/
    and finds the exact copy; report and check read those fingerprints too."""
    import shutil

    import pyarrow.parquet as pq

    root, scans = photos
    old = tmp_path / "old-scan"
    shutil.copytree(scans["a"], old, ignore=shutil.ignore_patterns("duplicates"))
    for part in (old / "images").glob("part-*.parquet"):
        pq.write_table(pq.read_table(part).drop_columns(["pixel_sha256", "phash", "phash_mirror"]), part)
    config = json.loads((old / "scan.json").read_text())
    (old / "scan.json").write_text(json.dumps({**config, "schema_version": 5}))
    found = audit.duplicates(old)
    assert (old / "fingerprints" / "fingerprints.parquet").exists() and not found.notes
    assert frozenset({"train/p0.png", "train/p0-again.webp"}) in clusters_of(found.copies)
    for part in (root / "a" / "train").glob("p0*"):  # gone: nothing to read again, and the output says so
        part.rename(part.with_suffix(part.suffix + ".moved"))
    try:
        shutil.rmtree(old / "fingerprints")
        assert any("no fingerprints" in n for n in audit.duplicates(old).notes)
    finally:
        for part in (root / "a" / "train").glob("*.moved"):
            part.rename(part.with_suffix(""))
