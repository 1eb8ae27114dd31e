"""`audit verify`: the deletion and insertion curves on a score whose answer is known, the seeded baselines,
the stored rows (resume, re-run, refusals), and the demo's planted finding."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

import audit
from audit.cli import main
from audit.errors import AuditError
from audit.scanner.verify import area, blank, curves, random_orders, sample, step_counts, top_half
from audit.store.schema import VERIFICATION

from .helpers import FAST

GRID = (4, 4)


def one_cell_score(cell: int):
    """A score that depends on one cell only: the mean of the image's pixels in that cell (of a 32 x 32 image
    on a 4 x 4 grid), so blanking it (to 0) is all that changes the score."""
    def score(images):
        y, x = divmod(cell, GRID[1])
        return images[:, :, y * 8:(y + 1) * 8, x * 8:(x + 1) * 8].mean(dim=(1, 2, 3))
    return score


def test_deletion_in_relevance_order_drops_at_the_first_step():
    image = torch.rand(3, 32, 32) + 0.5
    score = one_cell_score(5)
    relevant_first = torch.tensor([[5, *[c for c in range(16) if c != 5]]])
    dele, ins = curves(score, image, relevant_first, GRID, 16)
    full = float(score(image[None]))
    assert dele[0, 0] == pytest.approx(full) and (dele[0, 1:] == 0).all()  # gone at the first step
    assert ins[0, 0] == 0 and (ins[0, 1:] == pytest.approx(full))  # back at the first step
    assert float(area(dele[0])) == pytest.approx(full / 32)  # half a step of 1/16 at full height
    last = torch.tensor([[*[c for c in range(16) if c != 5], 5]])
    late, _ = curves(score, image, last, GRID, 16)
    assert (late[0, :-1] == pytest.approx(full)) and late[0, -1] == 0  # the worst order drops at the end
    randoms = random_orders(16, 50, "image", 0)
    rdel, rins = curves(score, image, randoms, GRID, 16)
    assert float(area(dele[0])) < float(area(rdel).mean()) < float(area(late[0]))
    assert float(area(ins[0])) > float(area(rins).mean())


def test_steps_blank_whole_cells_from_none_to_all():
    assert step_counts(16, 4) == [0, 4, 8, 12, 16] and step_counts(49, 8)[-1] == 49
    image = torch.ones(1, 3, 32, 32)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, 6] = True  # row 1, column 2
    out = blank(image, mask, GRID)
    assert out[0, :, 8:16, 16:24].abs().sum() == 0 and out.sum() == 3 * (32 * 32 - 64)


def test_areas_of_known_curves():
    assert float(area(torch.linspace(1, 0, 9))) == pytest.approx(0.5)
    assert float(area(torch.full((5,), 0.3))) == pytest.approx(0.3)


def test_random_baselines_and_samples_are_seeded_and_order_free():
    a = random_orders(49, 3, "img/1.png", 0)
    assert torch.equal(a, random_orders(49, 3, "img/1.png", 0))
    assert not torch.equal(a, random_orders(49, 3, "img/2.png", 0))
    assert not torch.equal(a, random_orders(49, 3, "img/1.png", 1))
    assert sorted(a[0].tolist()) == list(range(49))
    ids = [f"{i:03d}.png" for i in range(100)]
    picked = sample(ids, 10, 0)
    assert len(picked) == 10 and picked == sample(list(reversed(ids)), 10, 0) and picked != sample(ids, 10, 1)
    assert sample(ids[:5], 10, 0) == ids[:5]


def test_top_half_takes_the_fewest_cells_holding_half_the_relevance():
    grid = np.array([0.1, 0.5, 0.2, -1.0, 0.2])  # positive total 1.0
    assert top_half(grid).tolist() == [False, True, False, False, False]
    assert top_half(np.array([0.3, 0.3, 0.4])).tolist() == [True, False, True]  # ties: the first cell first
    assert top_half(np.zeros(4)).sum() == 1


def test_verdicts_need_the_words_cells_to_carry_it_beyond_random_cells():
    """grounded: its cells are needed (blanking them costs more than blanking as many random cells) or enough
    (keeping only them keeps more than keeping random cells), in most images. not localised: neither, or a
    difference in favour of its cells where no blanking makes the cosine fall (a rise is no evidence)."""
    import pandas as pd

    from audit.analysis.verification import grounding_summary

    rs = np.random.RandomState(0)
    rows = []
    # word: (drop_own, drop_random, drop_complement, drop_keep_random)
    for word, own, rand, comp, keep in (("dog", 0.10, 0.02, 0.30, 0.30),      # needed, not enough
                                        ("grass", -0.01, -0.01, 0.02, 0.06),  # spread out: enough, not needed
                                        ("sky", 0.02, 0.02, 0.30, 0.30),      # neither
                                        ("cat", -0.02, -0.06, 0.30, 0.30)):   # its cells "cost" a smaller rise only
        for i in range(12):
            noise = rs.normal(0, 0.01, 4)
            rows.append({"part": "grounding", "image_id": f"{i}.png", "kind": "ascent", "word": word,
                         "method": "chefer", "column": "label", "grp": "north", "drop_own": own + noise[0],
                         "drop_random": rand + noise[1], "drop_complement": comp + noise[2],
                         "drop_keep_random": keep + noise[3], "drop_box": np.nan, "drop_outside_box": np.nan})
    verdicts = grounding_summary(pd.DataFrame(rows)).set_index("word")
    assert verdicts.at["dog", "verdict"] == "grounded" and verdicts.at["dog", "q"] < 0.01
    assert abs(verdicts.at["dog", "needed"] - 0.08) < 0.02 and abs(verdicts.at["dog", "enough"]) < 0.02
    assert verdicts.at["grass", "verdict"] == "grounded" and abs(verdicts.at["grass", "enough"] - 0.04) < 0.02
    assert verdicts.at["sky", "verdict"] == "not localised"
    assert verdicts.at["cat", "verdict"] == "not localised" and abs(verdicts.at["cat", "effect"]) < 0.01
    lo, hi = verdicts.at["dog", "effect_lo"], verdicts.at["dog", "effect_hi"]
    assert lo < verdicts.at["dog", "effect"] < hi and lo > 0.05
    # Rows from before the second side was measured count it as nothing.
    old = grounding_summary(pd.DataFrame(rows).drop(columns="drop_keep_random")).set_index("word")
    assert old.at["grass", "verdict"] == "not localised" and old.at["dog", "verdict"] == "grounded"


def test_verdicts_keep_their_level_when_no_cells_carry_the_word():
    """Own and random cells exchangeable (no grounding): p < 0.05 in about 5% of findings, and BH's q almost
    never below 0.05 (the whole null: any discovery at all happens with probability at most 0.05)."""
    import pandas as pd

    from audit.analysis.verification import grounding_summary

    rs = np.random.RandomState(1)
    n, images = 400, 16
    drops = rs.normal(0, 0.03, (4, n * images))  # own, random, complement, keep random: one distribution
    rows = pd.DataFrame({"part": "grounding", "image_id": np.tile(np.arange(images).astype(str), n),
                         "kind": "ascent", "word": np.repeat([f"w{i}" for i in range(n)], images),
                         "method": "chefer", "column": "label", "grp": "g", "drop_own": drops[0],
                         "drop_random": drops[1], "drop_complement": drops[2], "drop_keep_random": drops[3],
                         "drop_box": np.nan, "drop_outside_box": np.nan})
    table = grounding_summary(rows)
    assert 0.02 < (table.p < 0.05).mean() < 0.08
    assert (table.verdict == "grounded").sum() <= 1


@pytest.fixture
def tiny_scan(small_folder, tmp_path):
    return audit.scan(small_folder, tmp_path / "scan", **FAST, words=("red", "blue")).root


def test_verify_writes_resumes_and_refuses_other_settings(tiny_scan, tmp_path, capsys):
    own_tables = sorted(str(p.relative_to(tiny_scan)) for p in tiny_scan.rglob("*") if p.is_file())
    code = main(["verify", str(tiny_scan), "--faithfulness-images", "3", "--device", "cpu", "-q",
                 "--json", str(tmp_path / "v.json")])
    assert code == 0, capsys.readouterr().err
    first = json.loads((tmp_path / "v.json").read_text())
    rows = audit.Scan(tiny_scan).verification()
    assert set(rows.part) == {"faithfulness"} and rows.image_id.nunique() == 3
    methods = {m["method"] for m in first["faithfulness"]}
    assert methods == {"chefer", "occlusion", "legrad", "random"}
    assert {m["kind"] for m in first["faithfulness"]} >= {"probe"}
    assert all(len(c) == 9 for c in rows.deletion_curve)  # 8 steps after the whole image
    # An interrupted run (its last part never renamed into place) resumes to the same rows.
    parts = sorted((tiny_scan / "verification").glob("part-*.parquet"))
    assert len(parts) == 1
    parts[-1].unlink()
    again = audit.verify(tiny_scan, faithfulness_images=3, device="cpu", quiet=True)
    assert json.loads(again.to_json()) == first
    before = sorted(p.name for p in (tiny_scan / "verification").iterdir())
    audit.verify(tiny_scan, faithfulness_images=3, device="cpu", quiet=True)  # nothing left to do
    assert sorted(p.name for p in (tiny_scan / "verification").iterdir()) == before
    with pytest.raises(AuditError, match="other settings .*faithfulness_images"):
        audit.verify(tiny_scan, faithfulness_images=4, device="cpu", quiet=True)
    assert len(audit.verify(tiny_scan, faithfulness_images=2, device="cpu", quiet=True, overwrite=True)
               .faithfulness.iloc[0:1]) == 1
    assert audit.Scan(tiny_scan).verification().image_id.nunique() == 2
    after = sorted(str(p.relative_to(tiny_scan)) for p in tiny_scan.rglob("*") if p.is_file())
    # The scan's own files untouched (the copies it counted once are a folder of their own beside them).
    assert [f for f in after if not f.startswith(("verification/", "duplicates/"))] == own_tables


def test_the_demos_planted_finding_and_the_maps_faithfulness(demo_run, tmp_path):
    """On the demo: every relevancy method beats random orders (deletion lower, insertion higher), and the grass
    finding is carried by the background (the cosine falls far more when the cells outside the object's box go
    than when the box's go). It is grounded in the cells of the scan's own (Chefer) map, on the side of keeping
    them: grass is spread over the background, so blanking its top cells leaves enough grass elsewhere (measured:
    needed 0.003), while keeping only them keeps "grass" better than as many random cells (enough 0.037)."""
    scan = tmp_path / "scan"
    shutil.copytree(demo_run[0] / "scan", scan)
    summary = audit.verify(scan, group_by="label", faithfulness_images=16, min_count=3, device="cpu", quiet=True)
    faith = summary.faithfulness.set_index("method")
    for method in ("chefer", "occlusion", "legrad"):
        assert faith.at[method, "deletion"] < faith.at["random", "deletion"], summary.text()
        assert faith.at[method, "insertion"] > faith.at["random", "insertion"], summary.text()
    (grass,) = summary.grounding.itertuples()
    assert (grass.grp, grass.word, grass.images) == ("north", "grass", 18)
    assert grass.drop_outside_box > grass.drop_box + 0.1, summary.text()  # 0.160 against 0.008
    assert grass.verdict == "grounded" and grass.q < 0.05, summary.text()
    assert grass.enough > 0.02 and abs(grass.needed) < 0.02, summary.text()
    finding = json.loads(summary.to_json())["findings"][0]
    assert {"column", "group", "kind", "word", "verdict", "effect", "effect_lo", "effect_hi", "q"} <= set(finding)
    # The report shows both: the maps' faithfulness with its curves, and the verdict beside the finding.
    html = audit.report(scan, "label", min_count=3).html
    trust = html.split('<h2 id="trust">', 1)[1].split("<h2", 1)[0]
    assert trust.count("<svg") == 2 and trust.count("<polyline") == 8  # deletion and insertion, 4 orders each
    assert f"{faith.at['chefer', 'deletion']:.2f}" in trust
    row = html.split('id="findings-table"', 1)[1].split("</table>", 1)[0]
    assert "grounded in the image?" in row and "<b>grounded</b>" in row
    shutil.rmtree(scan / "verification")
    assert 'id="trust"' not in audit.report(scan, "label", min_count=3).html


def test_policies_read_the_verdicts(demo_run, tmp_path, capsys):
    """[grounding] is skipped before `audit verify` ran and passes on the demo's grounded finding, which a
    [[watch]] with grounded_only still fails on; once the finding reads as not localised, [grounding] fails and
    grounded_only lets it off, where a plain [[watch]] still fails."""
    import pyarrow.parquet as pq

    scan = tmp_path / "scan"
    shutil.copytree(demo_run[0] / "scan", scan)
    policy = tmp_path / "policy.toml"
    policy.write_text('group_by = "label"\nmin_count = 3\n[grounding]\nlevel = "fail"\n'
                      '[[watch]]\nname = "plain"\nwords = ["grass"]\n'
                      '[[watch]]\nname = "grounded"\nwords = ["grass"]\ngrounded_only = true\n', encoding="utf-8")
    assert main(["check", str(scan), "--policy", str(policy)]) == 1
    out = capsys.readouterr().out
    assert "SKIP  grounding" in out and "FAIL  watch:plain" in out and "FAIL  watch:grounded" in out
    assert main(["verify", str(scan), "--policy", str(policy), "--faithfulness-images", "0", "--device", "cpu",
                 "-q"]) == 0  # group_by and min_count from the policy
    assert "label=north 'grass'" in capsys.readouterr().out
    assert main(["check", str(scan), "--policy", str(policy)]) == 1
    out = capsys.readouterr().out
    assert "PASS  grounding" in out and "FAIL  watch:plain" in out and "FAIL  watch:grounded" in out, out
    # The same finding with rows saying its cells carry nothing that random cells do not.
    (part,) = (scan / "verification").glob("part-*.parquet")
    rows = pq.read_table(part).to_pandas()
    rows["drop_own"], rows["drop_keep_random"] = rows.drop_random, rows.drop_complement
    pq.write_table(pa.Table.from_pandas(rows, schema=VERIFICATION, preserve_index=False), part)
    assert main(["check", str(scan), "--policy", str(policy)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  grounding" in out and "'grass' with label=north" in out, out
    assert "FAIL  watch:plain" in out and "PASS  watch:grounded" in out, out


def test_an_image_gone_since_the_scan_is_skipped_and_said(tiny_scan, caplog):
    images = audit.Scan(tiny_scan).images()
    gone = images.path.iloc[0]
    Path(gone).rename(Path(gone).with_suffix(".moved"))
    with caplog.at_level("WARNING", logger="audit.verify"):
        audit.verify(tiny_scan, faithfulness_images=len(images), device="cpu", quiet=True)
    rows = audit.Scan(tiny_scan).verification()
    assert images.image_id.iloc[0] not in set(rows.image_id) and rows.image_id.nunique() == len(images) - 1
    assert f"cannot read {gone}" in caplog.text
