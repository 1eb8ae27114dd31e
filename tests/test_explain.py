"""Probe words (scan --words, --opinion probes, the report's section) and `audit explain` (tiles and mosaics)."""

import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import audit
from audit.analysis.associations import probes
from audit.api import explain
from audit.cli import main
from audit.demo.scenes import SHAPES, make_scene
from audit.demo.train import EVAL_SEED_BASE
from audit.outputs.explain import LABEL_H, caption, safe_name
from audit.outputs.report import build_report
from audit.scanner.models import load_model
from audit.scanner.probes import parse_probe_words
from audit.sources.decode import fit
from audit.store.query import ScanQuery

from .helpers import FAST
from .scanfactory import write_scan

SHAPE_TILE_FLOOR = 0.8  # v1, --heatmap occlusion: all 60 tiles (Chefer's, the default: 71.7%); chance is half
HOSTILE = ["a/b", "../../etc/passwd", 'quo"te\'s', "emoji 🐱 cat", "<script>alert(1)</script>", "CON", ".",
           "back\\slash", "tab\tand  spaces", "x" * 200]


def test_probe_words_parse_like_the_docs_say(tmp_path):
    f = tmp_path / "words.txt"
    f.write_text("# occupations\nFire   Fighter\n\nnurse, with a comma\ndoctor\n", encoding="utf-8")
    assert parse_probe_words(["doctor, Nurse", "nurse"], f) == ("doctor", "nurse", "fire fighter",
                                                                "nurse, with a comma")
    assert parse_probe_words("a,,b") == ("a", "b")


def test_probe_words_are_stored_marked_and_scored_as_whole_phrases(small_folder, tmp_path, tiny):
    out = tmp_path / "scan"
    scan = audit.scan(str(small_folder), str(out), words=("red circle", "dog"), **FAST)
    tokens, heat = scan.tokens(), scan.heatmaps()
    probe = tokens[tokens.kind == "probe"]
    assert set(probe.word) == {"red circle", "dog"} and len(probe) == 2 * len(scan.images())
    assert (probe.seq_rank == -1).all() and (probe.seq_cosine == probe.word_cosine).all()
    assert set(tokens[tokens.kind == "ascent"].word).isdisjoint({"red circle"})
    phrase = heat[(heat.kind == "probe") & (heat.word == "red circle")]
    assert all(len(t) == 2 for t in phrase.text_relevance)  # one relevance per token of the phrase
    # The stored cosine is CLIP's zero-shot score computed with open_clip's own encode_text and encode_image:
    # the whole phrase in each of the default (simple) templates, the unit embeddings averaged and normalised.
    from audit.scanner.templates import fill, parse_templates

    model = tiny.model
    images = scan.images().set_index("image_id")
    row = probe[probe.word == "red circle"].iloc[0]
    arr, _ = fit(Image.open(images.loc[row.image_id, "path"]).convert("RGB"), tiny.preprocess["size"],
                 tiny.preprocess.get("resize_mode", "shortest"), "bicubic")
    mean = torch.tensor(tiny.preprocess["mean"]).view(3, 1, 1)
    std = torch.tensor(tiny.preprocess["std"]).view(3, 1, 1)
    x = ((torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255 - mean) / std)[None]
    with torch.no_grad():
        img = model.encode_image(x)
        txt = model.encode_text(tiny.tokenizer(fill(parse_templates("simple"), "red circle")))
    txt = torch.nn.functional.normalize(torch.nn.functional.normalize(txt, dim=-1).mean(0, keepdim=True), dim=-1)
    ref = torch.nn.functional.cosine_similarity(img, txt).item()
    assert math.isclose(row.word_cosine, ref, abs_tol=1e-4)


def test_probe_only_scan_and_its_errors(small_folder, tmp_path, capsys):
    out = tmp_path / "p"
    opts = {**FAST, "steps": 3}
    scan = audit.scan(str(small_folder), str(out), words="cat,dog", opinion="probes", **opts)
    assert set(scan.tokens().kind) == {"probe"} and len(scan.tokens()) == 2 * len(scan.images())
    cases = [
        (["scan", str(small_folder), "--out", str(tmp_path / "q"), "--opinion", "probes", "--model", "audit-tiny",
          "--pretrained", "none"], "--opinion probes scores probe words: pass --words"),
        (["scan", str(small_folder), "--out", str(tmp_path / "q"), "--no-ascent", "--model", "audit-tiny",
          "--pretrained", "none"], "--no-ascent scores only probe words"),
        (["scan", str(small_folder), "--out", str(tmp_path / "q"), "--words", "a " * 80, "--model", "audit-tiny",
          "--pretrained", "none"], "tokens; this model's text context holds"),
        (["scan", str(small_folder), "--out", str(tmp_path / "q"), "--words-file", str(tmp_path / "none.txt")],
         "does not exist"),
        (["scan", str(small_folder), "--out", str(out), "--words", "cat,bird", "--opinion", "probes", "--model",
          "audit-tiny", "--pretrained", "none", "--steps", "3", "--candidates", "4", "--views", "4"],
         "probe_words"),  # resuming with other probe words is refused
    ]
    for args, message in cases:
        code = main(args)
        err = capsys.readouterr().err
        assert code == 2 and message in err, (args, err)


def test_probe_results_do_not_depend_on_the_batch(small_folder, tmp_path):
    a = audit.scan(str(small_folder), str(tmp_path / "a"), words="cat", opinion="probes", batch_size=1, **FAST)
    b = audit.scan(str(small_folder), str(tmp_path / "b"), words="cat", opinion="probes", batch_size=4, **FAST)
    ta, tb = (s.tokens().sort_values("image_id").reset_index(drop=True) for s in (a, b))
    assert np.allclose(ta.word_cosine, tb.word_cosine, atol=1e-5)


def probe_scan(tmp_path, word="doctor"):
    """12 images: the probe word scores 0.30-0.35 on A and 0.20-0.25 on B; 'sky' is the same everywhere."""
    images = [{"image_id": f"{g}{i}", "label": g} for g in "AB" for i in range(6)]
    cos = {f"A{i}": 0.30 + 0.01 * i for i in range(6)} | {f"B{i}": 0.20 + 0.01 * i for i in range(6)}
    probe_rows = {k: [(word, v), ("sky", 0.5)] for k, v in cos.items()}
    return write_scan(tmp_path / "scan", images, {k: ["grass"] for k in cos}, probes=probe_rows)


def test_probe_statistics_per_group(tmp_path):
    p = probes(ScanQuery.open(probe_scan(tmp_path)), "label", fdr=0.05)
    t = p.cosines.set_index(["word", "grp"])
    a = t.loc[("doctor", "A")]
    x = np.array([0.30 + 0.01 * i for i in range(6)])
    half = 1.959963984540054 * x.std(ddof=1) / math.sqrt(6)
    assert a.n == 6 and math.isclose(a["mean"], x.mean(), abs_tol=1e-6)
    assert math.isclose(a.ci_lo, x.mean() - half, abs_tol=1e-6) and math.isclose(a.difference, 0.1, abs_tol=1e-6)
    assert bool(a.flagged) and bool(t.loc[("doctor", "B")].flagged) and not t.loc[("sky", "A")].flagged
    assert p.words == ["doctor", "sky"]
    # Probe words stay out of the ascent's statistics.
    q = ScanQuery.open(tmp_path / "scan")
    assert set(q.df("SELECT DISTINCT word FROM tokens").word) == {"grass"}


def test_report_shows_probe_words_escaped(tmp_path):
    scan = probe_scan(tmp_path, word="<script>alert(1)</script>")
    html = build_report(scan, ["label"], tmp_path / "r.html", min_count=3).read_text()
    section = html[html.index('id="probes"'):]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in section and "<script>alert" not in html
    assert "▲" in section and "▼" in section


def scene_file(tmp_path, seed, **kw):
    scene = make_scene(seed, size=64, **kw)
    path = tmp_path / f"scene-{seed}.png"
    scene.image.save(path)
    return scene, path


def test_explain_writes_one_tile_per_word_and_a_mosaic(tmp_path, capsys):
    _, path = scene_file(tmp_path, EVAL_SEED_BASE + 3, n_objects=1)
    out = tmp_path / "ex"
    code = main(["explain", str(path), "--out", str(out), "--model", "audit-demo", "--steps", "4", "--candidates",
                 "2", "--views", "2", "--words", "red, blue circle", "--quiet", "--tile", "128"])
    assert code == 0
    (e,) = explain([path], out, model="audit-demo", steps=4, candidates=2, views=2, words="red, blue circle",
                   quiet=True, tile=128)  # the second call resumes: nothing is scanned again
    tokens = audit.Scan(out / "scan").tokens()
    assert len(e.tiles) == len(tokens) and len(tokens) >= 3 and {"red", "blue circle"} <= set(tokens.word)
    counted = sum(w.counted for w in e.words)  # the probes close the counted words; left-out ones follow
    assert [p.name for p in e.tiles][counted - 2:counted] == [f"{counted - 1:02d}-probe-red.png",
                                                             f"{counted:02d}-probe-blue-circle.png"]
    tile = Image.open(e.tiles[0])
    assert tile.size == (128, 128 + LABEL_H)
    n = len(e.tiles) + 1
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    assert Image.open(e.mosaic).size == (cols * 128 + (cols + 1) * 6, rows * (128 + LABEL_H) + (rows + 1) * 6)
    assert str(e.mosaic) in capsys.readouterr().out


def test_explain_counts_words_as_the_statistics_do_and_writes_the_opinion(tmp_path, capsys):
    """Counted words first, then the ones the statistics leave out, each with its reason, by the same rule the
    report applies (recomputed here from the stored rows); opinion.txt and --json say the same."""
    _, path = scene_file(tmp_path, EVAL_SEED_BASE + 5, n_objects=1)
    out = tmp_path / "ex"
    run = dict(model="audit-demo", steps=6, candidates=4, views=2, words="red, the", quiet=True, tile=64)
    explain([path], out, min_relative_cosine=0, stop_words="none", **run)
    tokens = audit.Scan(out / "scan").tokens()
    ascent = tokens[tokens.kind == "ascent"]
    best = ascent.seq_cosine.max()
    ratios = np.sort(ascent.word_cosine.to_numpy() / best)
    assert len(ratios) >= 3 and ratios[-2] > 0
    relative = float((max(ratios[-3], 0) + ratios[-2]) / 2)  # the two strongest words stay, the rest fall
    stopped = ascent.sort_values("word_cosine").word.iloc[-1]  # and the strongest one is made a stop word
    (tmp_path / "stop.txt").write_text(f"{stopped}\nthe\n", encoding="utf-8")
    code = main(["explain", str(path), "--out", str(out), "--model", "audit-demo", "--steps", "6", "--candidates",
                 "4", "--views", "2", "--words", "red, the", "--quiet", "--tile", "64", "--stop-words",
                 str(tmp_path / "stop.txt"), "--min-relative-cosine", str(relative), "--json", "-"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    shown = json.loads(printed.out)["images"][0]  # JSON only: nothing else on standard output
    (e,) = explain([path], out, min_relative_cosine=relative, stop_words=tmp_path / "stop.txt", **run)
    assert shown == json.loads(json.dumps(e.as_dict()))

    expected = {}
    for r in tokens.itertuples():
        if r.kind == "probe":
            expected[r.kind, r.word] = None  # probes are compared by cosine over every image: never filtered
        elif r.word in (stopped, "the"):
            expected[r.kind, r.word] = "stop word"
        else:
            expected[r.kind, r.word] = None if r.word_cosine >= relative * best else "cosine"
    assert {(w.kind, w.word): w.filtered for w in e.words} == expected
    assert "stop word" in expected.values() and "cosine" in expected.values()
    counted = [w.counted for w in e.words]
    assert counted == sorted(counted, reverse=True)  # every counted word before every left-out one
    for w in e.words:
        assert ("not-counted-" in w.tile.name) != w.counted
        assert w.reason == ("" if w.counted else "stop word" if w.filtered == "stop word"
                            else f"cosine {w.cosine:.3f} < {relative:g} × best {best:.3f}")

    text = e.opinion.read_text(encoding="utf-8")
    sequences = ascent.drop_duplicates("seq_rank").sort_values("seq_rank")
    assert [s.text for s in e.sequences] == list(sequences.seq_text) and len(e.sequences) >= 1
    # Numbered by rank: a sequence none of whose tokens is a word stores no row, and its number is skipped (the
    # ascent's float sums differ in the last bits with the threads' split, so which one that is can vary).
    assert [s.rank for s in e.sequences] == sorted({s.rank for s in e.sequences})
    for s in e.sequences:
        assert f"{s.rank + 1:>3}. {s.cosine:.3f}  {s.text}" in text
    for w in e.words:
        assert re.search(rf"^  {re.escape(w.word)} +{w.cosine:.3f}.*  "
                         + ("counted$" if w.counted else f"not counted: {re.escape(w.reason)}$"), text, re.M), w
    assert f"{stopped} (not counted)" in text


def test_tile_captions():
    assert caption("ascent", 0.5123, np.ones((2, 2))) == "cosine 0.512"
    assert caption("ascent", 0.01, np.ones((2, 2)), reason="stop word") == "not counted: stop word"
    assert caption("probe", 0.2, np.zeros((2, 2))) == "probe · cosine 0.200 · no positive relevance"


def heat_inside(tile: Image.Image, frame: Image.Image, mask: np.ndarray, alpha=0.55) -> float:
    """Mean brightness of the heat layer inside a mask: tile = frame * (1 - alpha) + heat * alpha."""
    t = np.asarray(tile.convert("RGB"), dtype=np.float64)[: frame.height]
    f = np.asarray(frame, dtype=np.float64)
    heat = (t - f * (1 - alpha)) / alpha
    m = np.asarray(Image.fromarray(mask).resize(frame.size, Image.Resampling.NEAREST))
    return float(heat.mean(-1)[m].mean())


def brighter_over(tile_path, scene, obj, other, size, tile: int) -> bool:
    """Is the tile's heat brighter inside obj's mask than inside other's?"""
    arr, _ = fit(scene.image, size, "shortest", "bicubic")
    frame = Image.fromarray(arr).resize((tile, tile), Image.Resampling.BICUBIC)
    heat = Image.open(tile_path)
    return heat_inside(heat, frame, obj.mask) > heat_inside(heat, frame, other.mask)


def test_a_word_tile_is_brighter_over_its_own_object(tmp_path):
    """Two-object scenes, each with one object of the probed colour: the tile must be brighter over that
    object than over the other."""
    wins = []
    size = load_model("audit-demo", "auto", device="cpu").preprocess["size"]
    for k, colour in enumerate(["green", "blue", "purple", "black"] * 2):
        scene, path = scene_file(tmp_path, EVAL_SEED_BASE + 900_000 + k, n_objects=2, colour=colour)
        (e,) = explain([path], tmp_path / f"ex{k}", model="audit-demo", words=colour, opinion="probes", quiet=True)
        wins.append(brighter_over(e.tiles[0], scene, *scene.objects, size, 256))
    assert sum(wins) >= 7, wins


def test_a_shape_word_tile_is_brighter_over_its_own_object(tmp_path):
    """Two-object scenes probed with every shape word: the tile of each shape in the scene must be brighter
    over the object of that shape than over the other object, in most tiles (chance: half)."""
    folder = tmp_path / "scenes"
    folder.mkdir()
    scenes = {}
    for k in range(30):
        scene, path = scene_file(folder, EVAL_SEED_BASE + 910_000 + k, n_objects=2)
        scenes[path.name] = scene
    results = explain([folder], tmp_path / "ex", model="audit-demo", words=",".join(SHAPES), opinion="probes",
                      quiet=True, tile=128, heatmap="occlusion")
    size = load_model("audit-demo", "auto", device="cpu").preprocess["size"]
    wins = []
    for e in results:
        scene = scenes[Path(e.image_id).name]
        tiles = {w.word: w.tile for w in e.words}
        for obj, other in itertools.permutations(scene.objects):
            wins.append(brighter_over(tiles[obj.shape], scene, obj, other, size, 128))
    assert len(wins) == 60 and np.mean(wins) >= SHAPE_TILE_FLOOR, np.mean(wins)


def test_hostile_words_give_safe_file_names(tmp_path):
    words = tmp_path / "w.txt"
    words.write_text("\n".join(HOSTILE), encoding="utf-8")
    _, path = scene_file(tmp_path, 5, n_objects=1)
    (e,) = explain([path], tmp_path / "ex", words_file=words, opinion="probes", model="audit-tiny",
                   pretrained="none", quiet=True)
    assert len(e.tiles) == len(HOSTILE)
    for p in e.tiles:
        assert p.parent == e.folder and re.fullmatch(r"\d\d-probe-[A-Za-z0-9_-]{1,48}\.png", p.name), p.name
        tile = np.asarray(Image.open(p).convert("RGB"))
        assert tile.shape[1] == 256 and tile.shape[0] > 256  # the image as the model sees it, the label below
        assert tile[:256].std() > 5  # a heatmap blended over a scene, not a blank canvas
    assert len({p.name for p in e.tiles}) == len(e.tiles)
    assert safe_name("") and safe_name("..") not in ("", ".", "..") and "/" not in safe_name("a/b")


@pytest.mark.parametrize("args, message", [
    (["explain", "/nonexistent/x.png", "--out", "OUT"], "does not exist"),
])
def test_explain_errors(tmp_path, capsys, args, message):
    code = main([a.replace("OUT", str(tmp_path / "o")) for a in args])
    assert code == 2 and message in capsys.readouterr().err
