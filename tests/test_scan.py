"""End to end on the tiny model: tables, bad input, resume, invariance, clear errors."""

import io
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

import audit
from audit.cli import main
from audit.store.schema import SCHEMAS, TABLES, embeddings_schema

from .helpers import FAST, save_noise


def sorted_df(df, keys):
    return df.sort_values(keys).reset_index(drop=True)


def test_scan_writes_all_tables_with_their_schemas(small_folder, tmp_path):
    out = tmp_path / "scan"
    scan = audit.scan(small_folder, out, **FAST)
    assert isinstance(scan, audit.Scan)
    images = scan.images()
    assert sorted(images.image_id) == ["cat/1.png", "cat/3.png", "dog/0.png", "dog/2.png", "dog/4.png", "top.png"]
    assert pd.isna(images.set_index("image_id").label["top.png"])  # null label at the root
    for t in TABLES:
        files = sorted((out / t).glob("part-*.parquet"))
        assert files, t
        for f in files:
            stored = pq.read_schema(f)
            want = SCHEMAS[t]
            if t == "embeddings":  # the default --embeddings, as many bytes as the model's embedding
                want = embeddings_schema("float16", stored.field("embedding").type.byte_width // 2)
                assert stored.field("embedding").metadata == {b"dtype": b"float16"}
            assert stored.remove_metadata().equals(want.remove_metadata()), (t, f)
    tokens, heat = scan.tokens(), scan.heatmaps()
    assert len(tokens) > 0 and len(tokens) == len(heat)
    assert set(tokens.image_id) == set(images.image_id)
    assert (tokens.groupby("image_id").word.nunique() == tokens.groupby("image_id").size()).all()
    assert tokens.word.str.fullmatch(r"\w+").all()
    merged = tokens.merge(heat, on=["image_id", "word"])
    assert len(merged) == len(tokens)
    assert (heat.grid.map(len) == 16).all() and (heat.grid_h == 4).all()
    assert heat.entropy.between(0, 1).all() and heat.peak_x.between(0, 1).all()
    assert scan.errors().empty
    assert scan.config["settings"]["model"] == "audit-tiny"
    assert scan.config["settings"]["start_layer"] == -1  # Chefer's last-layer start for models without one of their own
    assert scan.config["settings"]["heatmap"] == "chefer"  # occlusion is audit-demo's own default only
    assert scan.table("tokens").num_rows == len(tokens)


def test_word_cosine_is_the_words_own_cosine(small_folder, tmp_path, tiny):
    """word_cosine = cos(encode_image(image), encode_text(tokenize(word))) with open_clip's own calls."""
    import torch

    from audit.sources.decode import decode

    scan = audit.scan(small_folder, tmp_path / "scan", **FAST)
    tokens = scan.tokens().head(6)
    pre = tiny.preprocess
    for row in tokens.itertuples():
        d = decode(str(small_folder / row.image_id), pre, None)
        x = (torch.tensor(d.pixels, dtype=torch.float32).permute(2, 0, 1) / 255
             - torch.tensor(pre["mean"]).view(3, 1, 1)) / torch.tensor(pre["std"]).view(3, 1, 1)
        with torch.no_grad():
            img = tiny.model.encode_image(x[None], normalize=True)
            txt = tiny.model.encode_text(tiny.tokenizer([row.word]), normalize=True)
        assert abs(float((img * txt).sum()) - row.word_cosine) < 1e-5


def make_bad_inputs(root):
    ok = {}
    save_noise(root / "good" / "a.png", seed=1)
    (root / "bad").mkdir(parents=True)
    (root / "bad" / "empty.png").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    (root / "bad" / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "bad" / "text.jpg").write_text("this is not an image")
    (root / "bad" / "dangling.png").symlink_to(root / "nowhere.png")
    save_noise(root / "bad" / "locked.png")
    ok["odd/wrong-ext.jpg"] = save_noise(root / "odd" / "wrong-ext.jpg.tmp.png")
    os.rename(ok["odd/wrong-ext.jpg"], root / "odd" / "wrong-ext.jpg")  # PNG bytes behind a .jpg name
    Image.new("RGB", (1, 1), (255, 0, 0)).save(root / "odd" / "one.png")
    Image.new("RGB", (20000, 20), (0, 0, 255)).save(root / "odd" / "wide.png")
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(root / "odd" / "gray16.png")
    pal = Image.new("P", (30, 30), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.save(root / "odd" / "palette.png", transparency=0)
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(root / "odd" / "cmyk.jpg")
    frames = [Image.new("L", (20, 20), v) for v in (0, 255)]
    frames[0].save(root / "odd" / "anim.gif", save_all=True, append_images=frames[1:])
    save_noise(root / "odd" / ("x" * 240 + ".png"))
    with open(os.path.join(os.fsencode(root / "odd"), b"caf\xe9.png"), "wb") as f:
        Image.new("RGB", (10, 10)).save(f, "PNG")
    os.chmod(root / "bad" / "locked.png", 0)


def test_bad_input_becomes_error_rows_and_the_scan_goes_on(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    make_bad_inputs(root)
    locked = str(root / "bad" / "locked.png")
    real_open = open

    def guarded_open(path, *args, **kwargs):  # root ignores chmod 0: refuse like the OS would for a user
        if str(path) == locked:
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("audit.sources.decode.open", guarded_open, raising=False)
    scan = audit.scan(root, tmp_path / "scan", **FAST)
    errors = scan.errors().set_index("image_id").reason.to_dict()
    assert errors == {
        "bad/dangling.png": "broken symlink",
        "bad/empty.png": "empty file (0 bytes)",
        "bad/locked.png": "permission denied",
        "bad/text.jpg": "not an image file Pillow can read",
        "bad/truncated.png": errors["bad/truncated.png"],
    }
    assert errors["bad/truncated.png"].startswith("corrupt or truncated image")
    images = scan.images().set_index("image_id")
    assert len(images) == 10
    assert "odd/caf\\xe9.png" in images.index and ("odd/" + "x" * 240 + ".png") in images.index
    assert (images.loc["odd/wide.png", "width"], images.loc["odd/wide.png", "height"]) == (20000, 20)
    assert set(scan.tokens().image_id) == set(images.index)


def test_manifest_with_missing_and_outside_paths(tmp_path):
    save_noise(tmp_path / "data" / "a.png")
    save_noise(tmp_path / "data" / "b.png", size=(80, 60))
    manifest = tmp_path / "data" / "m.csv"
    manifest.write_text("path,label,source,x0,y0,x1,y1\n"
                        "a.png,cat,web,,,,\n"
                        "b.png,dog,<b>scrape</b>,10,0,40,30\n"
                        "missing.png,cat,web,,,,\n"
                        "../../elsewhere/nope.png,dog,web,,,,\n")
    scan = audit.scan(manifest, tmp_path / "scan", **FAST)
    assert scan.errors().set_index("image_id").reason.to_dict() == {
        "missing.png": "file not found", "../../elsewhere/nope.png": "file not found"}
    images = scan.images().set_index("image_id")
    assert images.loc["b.png", "source"] == "<b>scrape</b>" and images.loc["b.png", "x1"] == 40
    heat = scan.heatmaps()
    b, a = heat[heat.image_id == "b.png"], heat[heat.image_id == "a.png"]
    assert b.box_mass.notna().all() and b.box_mass.between(0, 1).all() and b.peak_in_box.notna().all()
    assert a.box_mass.isna().all() and a.peak_in_box.isna().all()


def test_results_do_not_depend_on_batch_size_or_workers(small_folder, tmp_path):
    a = audit.scan(small_folder, tmp_path / "a", **{**FAST, "batch_size": 1})
    b = audit.scan(small_folder, tmp_path / "b", **{**FAST, "batch_size": 4, "workers": 2})
    ta, tb = (sorted_df(s.tokens(), ["image_id", "word"]) for s in (a, b))
    pd.testing.assert_frame_equal(ta.drop(columns=["seq_cosine", "word_cosine"]),
                                  tb.drop(columns=["seq_cosine", "word_cosine"]))
    assert np.allclose(ta.seq_cosine, tb.seq_cosine, atol=1e-5)
    assert np.allclose(ta.word_cosine, tb.word_cosine, atol=1e-5)
    ha, hb = (sorted_df(s.heatmaps(), ["image_id", "word"]) for s in (a, b))
    assert np.allclose(np.stack(ha.grid), np.stack(hb.grid), atol=1e-5)


def test_resume_skips_done_images_and_refuses_other_settings(small_folder, tmp_path, capsys):
    out = tmp_path / "scan"
    first = audit.scan(small_folder, out, **FAST).tokens()
    save_noise(small_folder / "cat" / "new.png", seed=42)
    again = audit.scan(small_folder, out, **{**FAST, "quiet": False})
    assert "1 images to scan (6 already done)" in capsys.readouterr().err
    assert len(again.images()) == 7 and len(again.config["runs"]) == 2
    old = again.tokens()[lambda d: d.image_id != "cat/new.png"]
    pd.testing.assert_frame_equal(sorted_df(old, ["image_id", "word"]), sorted_df(first, ["image_id", "word"]))
    audit.scan(small_folder, out, **{**FAST, "quiet": False})
    assert "nothing to do" in capsys.readouterr().err
    with pytest.raises(audit.errors.AuditError, match="other settings.*steps"):
        audit.scan(small_folder, out, **{**FAST, "steps": 4})
    redone = audit.scan(small_folder, out, **{**FAST, "steps": 4, "overwrite": True})
    assert len(redone.images()) == 7 and redone.config["settings"]["steps"] == 4


def test_cli_user_errors_are_one_line_and_exit_2(tmp_path, capsys, small_folder):
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("x")
    (tmp_path / "notscan").mkdir()
    (tmp_path / "notscan" / "precious.txt").write_text("keep me")
    base = ["--model", "audit-tiny", "--pretrained", "none", "--steps", "1", "-q"]
    cases = [
        (["scan", str(tmp_path / "empty"), "--out", str(tmp_path / "o1"), *base], "no images found"),
        (["scan", str(small_folder), "--out", str(tmp_path / "afile"), *base], "is a file"),
        (["scan", str(small_folder), "--out", str(tmp_path / "notscan"), *base], "not empty and holds no audit scan"),
        (["scan", str(small_folder), "--out", str(tmp_path / "o2"), "--model", "nope-net"], "unknown model"),
        (["scan", str(small_folder), "--out", str(tmp_path / "o3"), "--model", "audit-tiny", "--pretrained",
          "missing.pt"], "neither an open_clip tag"),
        (["scan", str(small_folder), "--out", str(tmp_path / "o4"), "--model", "ViT-B-32", "--pretrained",
          "openai", "-q"], "could not load weights for ViT-B-32"),
        (["scan", str(small_folder), "--out", str(tmp_path / "o5"), *base, "--batch-size", "many"], "--batch-size"),
        (["scan", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o6"), *base], "does not exist"),
        (["scan", str(small_folder), "--out", str(tmp_path / "o7"), *base, "--heatmap", "lime"],
         "'--heatmap': Value error, 'lime' is not one of 'chefer', 'occlusion', 'legrad'"),
        (["scan", str(small_folder), "--out", str(tmp_path / "o8"), *base, "--occlusion-window", "0"],
         "'--occlusion-window': Input should be greater than or equal to 1"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("audit: error: ") and needle in err[0], (argv, err)
    assert (tmp_path / "notscan" / "precious.txt").read_text() == "keep me"
    assert not (tmp_path / "o4").exists()  # a failed model load leaves no half-made scan behind


def test_cli_scan_prints_progress_and_summary(small_folder, tmp_path, capsys):
    argv = ["scan", str(small_folder), "--out", str(tmp_path / "s"), "--model", "audit-tiny", "--pretrained",
            "none", "--steps", "2", "--candidates", "2", "--views", "2", "--workers", "0"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "scan 6/6 (100%)" in err and "images/s" in err
    assert "6 images scanned, 0 errors" in err
    assert main([*argv, "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_a_scan_records_where_its_time_went_and_says_when_decoding_starves_the_model(small_folder, tmp_path,
                                                                                     monkeypatch, capsys):
    import time

    from audit.scanner import loader, pipeline
    from audit.scanner.pipeline import ScanCounts, starved_hint

    scan = audit.scan(small_folder, tmp_path / "a", **{**FAST, "batch_size": 2})
    run = scan.config["runs"][-1]
    phases = run["phases"]
    assert set(phases) == {"waiting_for_images", "model", "writing"} and min(phases.values()) >= 0
    assert phases["model"] > 0 and sum(phases.values()) <= run["seconds"]
    # Decoding made slower by 0.4 s an image: all of that is counted as waiting, and the summary passes on
    # what starved_hint makes of the phases.
    decode = loader.decode
    monkeypatch.setattr(loader, "decode", lambda *a, **k: (time.sleep(0.4), decode(*a, **k))[1])
    seen = []
    monkeypatch.setattr(pipeline, "starved_hint", lambda counts, scanned, workers: seen.append(
        (dict(counts.phases), scanned, workers)) or "HINT")
    slow = audit.scan(small_folder, tmp_path / "b", **{**FAST, "batch_size": 1, "quiet": False})
    phases = slow.config["runs"][-1]["phases"]
    assert phases["waiting_for_images"] >= 6 * 0.4 and phases["model"] > 0, phases
    assert seen[0][1:] == (6, 0) and "audit scan: HINT" in capsys.readouterr().err
    # No hint for a short scan (its wait is the workers' start-up) or a busy model.
    counts = ScanCounts(batch_size=2, phases={"waiting_for_images": 3.0, "model": 1.0, "writing": 0.0})
    assert starved_hint(counts, 8, 4).startswith("75% of the scan's time") and starved_hint(counts, 7, 4) is None
    counts.phases = {"waiting_for_images": 1.0, "model": 3.5, "writing": 0.5}
    assert starved_hint(counts, 100, 4) is None
    assert starved_hint(ScanCounts(batch_size=2), 100, 4) is None  # Ray: no phases


def test_memory_estimates_match_what_was_measured():
    """The ascent estimate for ViT-B/32 (16 candidates, 4 tokens, the 49,408-token vocabulary) against the
    8.4 GB that a batched prototype measured at 64 images on an H100 (issue 7): within a factor of 1.5."""
    from audit.scanner.memory import ascent_bytes_per_image, fit_count

    per_image = ascent_bytes_per_image(16, 4, 49408, text_width=512, text_layers=12, seq_len=6)
    assert 8.4e9 / 64 / 1.5 < per_image < 8.4e9 / 64 * 1.5
    assert fit_count(80e9, per_image) > fit_count(40e9, per_image) > fit_count(8e9, per_image) >= 1
    assert fit_count(10, per_image) == 1 and fit_count(1e15, 1) == 1024
    fused = ascent_bytes_per_image(16, 4, 49408, text_width=512, text_layers=12, seq_len=6, kernel="triton")
    assert fused < per_image * 0.6


def test_auto_batch_on_a_gpu_follows_free_memory(tiny, monkeypatch):
    import torch

    from audit.scanner import memory
    from audit.scanner.encoders import Towers
    from audit.scanner.options import ScanOptions

    towers = Towers(tiny)
    cuda = torch.device("cuda")
    sizes = []
    for free in (2e9, 8e9, 32e9):
        monkeypatch.setattr(memory, "free_bytes", lambda device, free=free: int(free))
        sizes.append(memory.cuda_batch_size(ScanOptions(), towers, cuda))
    assert 1 <= sizes[0] < sizes[1] < sizes[2] <= 1024, sizes
    fewer = memory.cuda_batch_size(ScanOptions(candidates=64), towers, cuda)
    assert fewer < sizes[2]
    # The fused kernels keep 12 of the separate passes' 40 bytes per logit: more images fit the same memory.
    monkeypatch.setattr(memory, "free_bytes", lambda device: int(8e9))
    assert memory.cuda_batch_size(ScanOptions(kernel="triton"), towers, cuda) > sizes[1]
    assert memory.relevancy_chunk(towers, torch.device("cpu")) == 256
    assert 1 <= memory.relevancy_chunk(towers, cuda, free=int(1e9)) <= 256


def test_legrad_heatmaps_are_stored_scaled_and_without_text_relevance(small_folder, tmp_path, capsys):
    """--heatmap legrad: the same rows, each grid scaled to 0-1, no text relevance (LeGrad explains the image);
    a layer count the model does not have is refused in one line before any image is scanned."""
    scan = audit.scan(small_folder, tmp_path / "l", **FAST, heatmap="legrad", legrad_layers=1)
    assert scan.config["settings"]["heatmap"] == "legrad" and scan.config["settings"]["legrad_layers"] == 1
    heat = scan.heatmaps()
    assert len(heat) == len(scan.tokens()) > 0
    assert (heat.grid.map(min) == 0).all() and heat.grid.map(max).max() <= 1 and (heat.grid.map(max) > 0.999).all()
    assert (heat.text_relevance.map(len) == 0).all()
    code = main(["scan", str(small_folder), "--out", str(tmp_path / "bad"), "--model", "audit-tiny", "--pretrained",
                 "none", "--heatmap", "legrad", "--legrad-layers", "3", "--workers", "0", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "--legrad-layers 3: this model's image tower has 2 layers" in err, err
    assert not (tmp_path / "bad" / "scan.json").exists()  # refused before a scan was started


def test_occlusion_heatmaps_are_stored_like_chefer_ones(small_folder, tmp_path):
    """--heatmap occlusion changes the grids, not the tables: same rows, same statistics, settings say which."""
    chefer = audit.scan(small_folder, tmp_path / "c", **FAST)
    occl = audit.scan(small_folder, tmp_path / "o", **FAST, heatmap="occlusion", occlusion_window=2)
    assert occl.config["settings"]["heatmap"] == "occlusion" and occl.config["settings"]["occlusion_window"] == 2
    a, b = chefer.heatmaps(), occl.heatmaps()
    assert list(a.columns) == list(b.columns)
    assert a[["image_id", "word"]].equals(b[["image_id", "word"]])
    assert (b.grid.map(len) == 16).all() and b.grid.map(min).min() >= 0
    assert not all(x == pytest.approx(y) for x, y in zip(a.grid, b.grid, strict=True))
    assert (b.text_relevance.map(len) == a.text_relevance.map(len)).all()
    assert chefer.tokens().word_cosine.tolist() == pytest.approx(occl.tokens().word_cosine.tolist(), abs=1e-5)
