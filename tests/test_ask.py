"""Stored embeddings, prompt templates and `audit ask`: a question asked later gives the answer a scan gives."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

import audit
from audit.cli import main
from audit.errors import AuditError
from audit.scanner.templates import fill, parse_templates, text_vectors

from .helpers import FAST, save_noise

WORDS = "red,a blue car,dog"


@pytest.fixture
def odd_folder(tmp_path):
    """Seven photos of seven sizes in two labels."""
    root = tmp_path / "ds"
    for i in range(7):
        save_noise(root / ("cat" if i % 2 else "dog") / f"{i}.png", seed=i, size=(40 + 7 * i, 33 + 5 * i))
    return root


def by_pair(scan) -> "np.ndarray":
    t = scan.tokens()
    return t[t.kind == "probe"].set_index(["image_id", "word"]).word_cosine.sort_index()


def test_stored_embeddings_are_the_image_towers_features(odd_folder, tmp_path, tiny):
    """Recomputed from the scan's own preprocessing: float16 within its rounding, float32 within float noise;
    --embeddings none stores none."""
    from audit.scanner.device import autocast
    from audit.scanner.encoders import Towers
    from audit.scanner.loader import to_model_input
    from audit.sources.decode import decode

    towers = Towers(tiny)
    half = audit.scan(odd_folder, tmp_path / "half", opinion="probes", words="red", batch_size=3, **FAST)
    full = audit.scan(odd_folder, tmp_path / "full", opinion="probes", words="red", batch_size=2,
                      embeddings="float32", **FAST)
    none = audit.scan(odd_folder, tmp_path / "none", opinion="probes", words="red", embeddings="none", **FAST)
    pre = half.config["runs"][-1]["preprocess"]
    mean, std = np.asarray(pre["mean"], np.float32), np.asarray(pre["std"], np.float32)
    ids, stored16 = half.embeddings()
    paths = half.images().set_index("image_id").path
    pixels = torch.stack([to_model_input(decode(paths[i], pre, None).pixels, mean, std) for i in ids])
    with torch.no_grad(), autocast(towers.device, half.settings["precision"]):  # as the scan encoded them
        want = towers.embed_images(pixels).float().numpy()
    assert stored16.dtype == np.float32 and stored16.shape == want.shape == (7, want.shape[1])
    assert np.allclose(stored16, want, rtol=1e-3, atol=1e-3) and not np.array_equal(stored16, want)
    ids32, stored32 = full.embeddings()
    assert np.allclose(stored32[[ids32.index(i) for i in ids]], want, atol=1e-5)
    assert none.embeddings()[0] == [] and len(none.images()) == 7


def test_ask_gives_the_probe_scans_scores(odd_folder, tmp_path):
    """A concepts-free, probe-free first pass, then `audit ask`: the same rows as a probe-only scan of those
    words (float16 storage: within its rounding; float32: float noise), whatever the batch sizes."""
    scanned = audit.scan(odd_folder, tmp_path / "probes", opinion="probes", words=WORDS, batch_size=3, **FAST)
    audit.scan(odd_folder, tmp_path / "src", opinion="probes", words="zebra", batch_size=2, **FAST)
    asked = audit.ask(tmp_path / "src", tmp_path / "asked", words=WORDS, device="cpu", quiet=True)
    a, b = by_pair(asked), by_pair(scanned)
    assert list(a.index) == list(b.index) and len(a) == 21
    assert np.abs(a.to_numpy() - b.to_numpy()).max() < 2e-3
    assert asked.heatmaps().empty and len(asked.images()) == 7  # no maps: ask reads no image
    tokens = asked.tokens()
    want = scanned.tokens()
    assert (tokens.word_rank.groupby(tokens.word).first() == want.word_rank.groupby(want.word).first()).all()
    assert asked.config["settings"]["probe_templates"] == scanned.config["settings"]["probe_templates"] == "simple"
    assert asked.config["source"]["kind"] == "scan"
    # float32 embeddings: the same numbers to float noise.
    audit.scan(odd_folder, tmp_path / "src32", opinion="probes", words="zebra", embeddings="float32", **FAST)
    exact = by_pair(audit.ask(tmp_path / "src32", tmp_path / "asked32", words=WORDS, device="cpu", quiet=True))
    assert np.abs(exact.to_numpy() - b.to_numpy()).max() < 1e-5
    # Report and check read it like any scan.
    assert "a blue car" in audit.report(tmp_path / "asked", "label", min_count=1).html


def test_ask_resumes_and_refuses_a_source_that_changed(odd_folder, tmp_path, capsys):
    more = odd_folder / "cat" / "late.png"
    source = tmp_path / "src"
    audit.scan(odd_folder, source, opinion="probes", words="zebra", **FAST)
    assert main(["ask", str(source), "--out", str(tmp_path / "asked"), "-w", "red", "--device", "cpu", "-q"]) == 0
    first = by_pair(audit.Scan(tmp_path / "asked"))
    assert main(["ask", str(source), "--out", str(tmp_path / "asked"), "-w", "red", "--device", "cpu", "-q"]) == 0
    assert by_pair(audit.Scan(tmp_path / "asked")).equals(first)  # nothing to do, nothing doubled
    save_noise(more, seed=99)
    audit.scan(odd_folder, source, opinion="probes", words="zebra", **FAST)  # resumed: one image more
    capsys.readouterr()
    assert main(["ask", str(source), "--out", str(tmp_path / "asked"), "-w", "red", "--device", "cpu", "-q"]) == 2
    assert "changed since" in capsys.readouterr().err
    assert main(["ask", str(source), "--out", str(tmp_path / "asked"), "-w", "red", "--device", "cpu", "-q",
                 "--overwrite"]) == 0
    assert len(audit.Scan(tmp_path / "asked").images()) == 8


def test_ask_says_what_it_cannot_answer(odd_folder, tmp_path, capsys):
    audit.scan(odd_folder, tmp_path / "bare", opinion="probes", words="zebra", embeddings="none", **FAST)
    audit.scan(odd_folder, tmp_path / "src", opinion="probes", words="zebra", **FAST)
    audit.ask(tmp_path / "src", tmp_path / "asked", words="red", device="cpu", quiet=True)
    cases = [
        (["ask", str(tmp_path / "bare"), "-o", str(tmp_path / "a1"), "-w", "red"], "7 of 7 images"),
        (["ask", str(tmp_path / "src"), "-o", str(tmp_path / "a2")], "needs words"),
        (["ask", str(tmp_path / "asked"), "-o", str(tmp_path / "a3"), "-w", "red"], "made by `audit ask`"),
        (["ask", str(tmp_path / "src"), "-o", str(tmp_path / "src"), "-w", "red"], "source scan itself"),
        (["ask", str(tmp_path / "src"), "-o", str(tmp_path / "a4"), "-w", "red", "--templates", "nope.txt"],
         "neither openai, simple, none nor a file"),
    ]
    for argv, message in cases:
        assert main([*argv, "--device", "cpu", "-q"]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_the_template_ensemble(tiny, tmp_path):
    """The mean of the filled templates' unit embeddings, normalised again; one word's vector does not depend on
    the words asked with it; none is the bare word; a file's templates are checked."""
    from audit.scanner.encoders import Towers

    towers = Towers(tiny)
    simple = parse_templates("simple")
    assert len(simple) == 7 and len(parse_templates("openai")) == 80 and parse_templates("none") == ["{}"]
    assert all(t.count("{}") == 1 for t in parse_templates("openai"))
    together = text_vectors(towers, ["red", "a blue car"], simple)
    alone = text_vectors(towers, ["a blue car"], simple)
    ids, eot = towers.tokenize(fill(simple, "a blue car"))
    with torch.no_grad():
        by_hand = F.normalize(F.normalize(towers.encode_ids(ids, eot)[0].float(), dim=-1).mean(0), dim=0)
    assert torch.allclose(together[1], by_hand, atol=1e-6) and torch.allclose(alone[0], by_hand, atol=1e-6)
    bare = text_vectors(towers, ["red"], ["{}"])
    assert not torch.allclose(bare[0], together[0], atol=1e-3)  # the templates change the query
    mine = tmp_path / "templates.txt"
    mine.write_text("# mine\na sketch of a {}.\n\nthe {} again\n", encoding="utf-8")
    assert parse_templates(mine) == ["a sketch of a {}.", "the {} again"]
    for bad in ("a photo\n", "{} and {}\n", "a {x} {}\n"):
        mine.write_text(bad, encoding="utf-8")
        with pytest.raises(AuditError, match="holds {} once"):
            parse_templates(mine)


def test_a_probe_scan_with_templates_none_scores_the_bare_word(odd_folder, tmp_path, tiny):
    """--templates none: the cosine of the image with the bare word; the default: with the simple ensemble."""
    from audit.scanner.encoders import Towers

    towers = Towers(tiny)
    bare = audit.scan(odd_folder, tmp_path / "bare", opinion="probes", words="red", templates="none",
                      embeddings="float32", **FAST)
    default = audit.scan(odd_folder, tmp_path / "default", opinion="probes", words="red", embeddings="float32",
                         **FAST)
    assert bare.config["settings"]["probe_templates"] == "none"
    for scan, templates in ((bare, ["{}"]), (default, parse_templates("simple"))):
        ids, emb = scan.embeddings()
        want = F.normalize(torch.from_numpy(emb), dim=-1) @ text_vectors(towers, ["red"], templates)[0]
        got = by_pair(scan).loc[[(i, "red") for i in ids]].to_numpy()
        assert np.allclose(got, want.numpy(), atol=1e-5)
    assert not np.allclose(by_pair(bare), by_pair(default), atol=1e-3)


def test_the_demos_two_pass_workflow_finds_the_planted_bias(tmp_path):
    """Concepts over everything (seconds), then `audit ask --words grass,snow,brick`: the report's probe
    section flags the north site with grass, from the stored embeddings alone."""
    from audit.demo import DEMO_SETTINGS, make_dataset

    manifest = make_dataset(tmp_path / "data", images=60)
    audit.scan(manifest, tmp_path / "scan", model="audit-demo", opinion="concepts", workers=0, device="cpu",
               quiet=True, **DEMO_SETTINGS)
    assert main(["ask", str(tmp_path / "scan"), "-o", str(tmp_path / "asked"), "-w", "grass,snow,brick",
                 "--device", "cpu", "-q"]) == 0
    html = audit.report(tmp_path / "asked", "label", min_count=3).html
    probes = html.split('id="probes"', 1)[1]
    row = probes.split("grass", 1)[1].split("</tr>", 1)[0]
    assert "north" in row and "▲" in row, row
    from audit.analysis.associations import probes as probe_stats
    from audit.store.query import ScanQuery

    flagged = probe_stats(ScanQuery.open(tmp_path / "asked"), "label", 0.05).flagged
    up = flagged[flagged.effect > 0]
    assert list(zip(up.word, up.grp, strict=True)) == [("grass", "north")], flagged
    assert json.loads((tmp_path / "asked" / "scan.json").read_text())["settings"]["probe_templates"] == "none"


def test_ask_concepts_gives_the_rows_of_a_scan_with_those_settings(odd_folder, tmp_path):
    """A concept scan, then the decomposition asked again with another vocabulary, penalty and count: the rows a
    scan with those settings gives (centred by the same image mean: the source's own, --concept-mean SOURCE)."""
    first = tmp_path / "first.txt"
    first.write_text("red\nblue\ndog\ncat\n", encoding="utf-8")
    other = tmp_path / "other.txt"
    other.write_text("green\na blue car\ngrass\nsnow\nbrick\nperson\ntree\nsky\n", encoding="utf-8")
    source = tmp_path / "src"
    audit.scan(odd_folder, source, opinion="concepts", vocabulary=str(first), embeddings="float32",
               batch_size=3, **FAST)
    kw = dict(vocabulary=str(other), concept_l1=0.02, concepts_per_image=4)
    scanned = audit.scan(odd_folder, tmp_path / "scanned", opinion="concepts", concept_mean=str(source),
                         concept_heatmaps=0, batch_size=2, **kw, **FAST)
    asked = audit.ask(source, tmp_path / "asked", opinion="concepts", device="cpu", quiet=True, **kw)
    a = asked.tokens().sort_values(["image_id", "word_rank"]).reset_index(drop=True)
    b = scanned.tokens().sort_values(["image_id", "word_rank"]).reset_index(drop=True)
    assert len(a) > 7 and (a.kind == "concept").all()
    assert a[["image_id", "word", "word_rank"]].equals(b[["image_id", "word", "word_rank"]])
    for col in ("weight", "word_cosine", "seq_cosine"):
        assert np.allclose(a[col], b[col], atol=1e-5), col
    fit_a = asked.images().set_index("image_id").concept_cosine.sort_index()
    fit_b = scanned.images().set_index("image_id").concept_cosine.sort_index()
    assert np.allclose(fit_a, fit_b, atol=1e-5) and fit_a.notna().all()
    settings = asked.config["settings"]
    assert {k: settings[k] for k in ("vocabulary", "concept_l1", "concepts_per_image", "concept_mean")} == \
        {k: scanned.config["settings"][k] for k in ("vocabulary", "concept_l1", "concepts_per_image", "concept_mean")}
    with pytest.raises(AuditError, match="ask probe words"):
        audit.ask(source, tmp_path / "mixed", opinion="concepts", words="red", device="cpu", quiet=True)


def test_ask_heatmaps_are_the_scans_maps(odd_folder, tmp_path, caplog):
    """--heatmaps reads the images again and draws the maps a probe scan of those words draws (its method and
    settings, the bare word); an image gone since the scan gets none, said once."""
    scanned = audit.scan(odd_folder, tmp_path / "probes", opinion="probes", words=WORDS, batch_size=3, **FAST)
    audit.scan(odd_folder, tmp_path / "src", opinion="probes", words="zebra", **FAST)
    asked = audit.ask(tmp_path / "src", tmp_path / "asked", words=WORDS, heatmaps=True, device="cpu", quiet=True)
    key = ["image_id", "word"]
    a = asked.heatmaps().sort_values(key).reset_index(drop=True)
    b = scanned.heatmaps().sort_values(key).reset_index(drop=True)
    assert a[key].equals(b[key]) and len(a) == 21 and (a.kind == "probe").all()
    assert np.allclose(np.stack(a.grid), np.stack(b.grid), atol=1e-5)
    assert np.allclose(a.entropy, b.entropy, atol=1e-5) and asked.config["settings"]["probe_heatmaps"] is True
    gone = asked.images().path.iloc[0]
    Path(gone).rename(tmp_path / "moved.png")
    with caplog.at_level("WARNING", logger="audit.ask"):
        again = audit.ask(tmp_path / "src", tmp_path / "again", words="red", heatmaps=True, device="cpu", quiet=True)
    assert len(again.heatmaps()) == 6 and "1 image(s) could not be read again" in caplog.text
    assert len(again.tokens()) == 7  # its score needs no image


def test_ask_reads_a_bounded_number_of_images_at_a_time(odd_folder, tmp_path, monkeypatch):
    """Units of at most IMAGES_PER_UNIT images (and ROWS_PER_UNIT rows) whatever the source's parts (a unit of
    every part once held a million images); the answers do not depend on how the images are grouped."""
    import audit.scanner.ask as ask_mod

    audit.scan(odd_folder, tmp_path / "src", opinion="probes", words="zebra", batch_size=3, commit_every=0,
               **FAST)  # parts 3,3,1
    whole = by_pair(audit.ask(tmp_path / "src", tmp_path / "whole", words=WORDS, device="cpu", quiet=True))
    monkeypatch.setattr(ask_mod, "IMAGES_PER_UNIT", 4)
    small = audit.ask(tmp_path / "src", tmp_path / "small", words=WORDS, device="cpu", quiet=True)
    def sizes(scan):
        return [len(pq.read_table(p)) for p in sorted((scan.root / "images").glob("part-*"))]

    got = by_pair(small)
    # Parts 3 and 3 read together and cut at 4.
    assert sizes(small) == [4, 2, 1] and got.index.equals(whole.index) and np.allclose(got, whole, atol=1e-6)
    monkeypatch.setattr(ask_mod, "ROWS_PER_UNIT", 2 * len(WORDS.split(",")))  # 2 images' rows
    rows = audit.ask(tmp_path / "src", tmp_path / "rows", words=WORDS, device="cpu", quiet=True)
    assert sizes(rows) == [2, 1, 2, 1, 1] and np.allclose(by_pair(rows), whole, atol=1e-6)


def test_ask_takes_the_whole_vocabulary_without_heatmaps(demo_run, tmp_path, capsys):
    """Without --heatmaps an asked word costs a row of a matrix product: the built-in vocabulary's 13,000 words
    are asked of the demo scan at once. With --heatmaps each costs a relevancy pass per image: more than 1,000 are
    refused, and the message says why and what the limit is without them."""
    from audit.scanner.vocabulary import WORDS_FILE as BUILTIN

    asked = audit.ask(demo_run[0] / "scan", tmp_path / "all", words_file=BUILTIN, device="cpu", quiet=True)
    tokens = asked.tokens()
    assert tokens.word.nunique() == 13_000 and len(tokens) == 13_000 * len(asked.images())
    code = main(["ask", str(demo_run[0] / "scan"), "-o", str(tmp_path / "maps"), "--words-file", str(BUILTIN),
                 "--heatmaps", "--device", "cpu", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "at most 1000 with --heatmaps" in err and "without --heatmaps" in err, err


def test_an_asked_scan_refers_to_its_sources_images(odd_folder, tmp_path):
    """ask stores of each image only what the store requires (id, path, size): labels, boxes, metadata and
    fingerprints are read from the source scan, and a source that is gone is said in one line."""
    import shutil

    source = audit.scan(odd_folder, tmp_path / "src", opinion="concepts", **FAST)
    asked = audit.ask(tmp_path / "src", tmp_path / "asked", words="red", device="cpu", quiet=True)
    stored = pq.read_table(asked.files("images")[0])
    assert stored.column("label").null_count == stored.num_rows  # nothing copied
    assert stored.column("pixel_sha256").null_count == stored.num_rows
    want = source.images().sort_values("image_id").reset_index(drop=True)
    got = asked.images().sort_values("image_id").reset_index(drop=True)
    assert got.equals(want)  # the source's rows, its concept fit included
    concepts = audit.ask(tmp_path / "src", tmp_path / "asked-c", opinion="concepts", concepts_per_image=3,
                         device="cpu", quiet=True).images().sort_values("image_id")
    assert list(concepts.label) == list(want.label) and concepts.concept_cosine.notna().all()
    assert not np.array_equal(concepts.concept_cosine, want.concept_cosine)  # the asked decomposition's own fit
    assert "Groups" in audit.report(tmp_path / "asked", "label", min_count=1).html  # grouped by the source's labels
    shutil.move(tmp_path / "src", tmp_path / "moved")
    with pytest.raises(AuditError, match="whose images it reads, and that scan is not there"):
        audit.Scan(tmp_path / "asked").images()
