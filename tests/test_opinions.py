"""Opinion methods behind one interface (--opinion as a set, --no-ascent as a deprecated alias), and the defects
found when the project was tried as a new user would: each test here failed before its fix."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import audit
from audit.cli import main
from audit.errors import AuditError
from audit.scanner.opinions import OPINIONS, opinion_class, parse_opinions
from audit.scanner.options import ScanOptions

from .helpers import FAST, assert_same_rows, save_noise


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("opinions") / "ds"
    for i in range(4):
        save_noise(root / ("a" if i % 2 else "b") / f"{i}.png", size=(40 + 8 * i, 48), seed=i)
    return root


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("red\ngreen\nblue\ngrass\nsnow\nsky\ndog\ncat\n", encoding="utf-8")
    return path


def test_opinions_are_a_set_in_the_registrys_order():
    assert parse_opinions("concepts,ascent") == parse_opinions("both") == ("ascent", "concepts")
    assert parse_opinions("probes , ascent,ascent") == ("ascent", "probes")
    assert parse_opinions(["concepts"]) == ("concepts",)
    assert tuple(OPINIONS) == ("ascent", "probes", "concepts")
    for bad in ("asent", "", ",", "ascent,lime"):
        with pytest.raises(AuditError, match="--opinion"):
            parse_opinions(bad)
    assert ScanOptions(opinion="both", no_ascent=True).opinions == ("concepts",)
    for name in OPINIONS:  # every registered method keeps the contract
        cls = opinion_class(name)
        assert cls.name == name and cls.kind in ("ascent", "probe", "concept")


def test_an_unknown_opinion_is_one_line_and_exit_2(photos, tmp_path, capsys):
    code = main(["scan", str(photos), "--out", str(tmp_path / "s"), "--opinion", "ascent,lime"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown method 'lime'" in err and "Traceback" not in err, err


def test_no_ascent_is_a_deprecated_alias_of_opinion_probes(photos, tmp_path, caplog):
    with pytest.warns(DeprecationWarning, match="--opinion probes"):
        old = audit.scan(photos, tmp_path / "old", words="red,dog", no_ascent=True, **FAST)
    assert "--no-ascent is deprecated; write --opinion probes" in caplog.text
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new spelling says nothing
        new = audit.scan(photos, tmp_path / "new", words="red,dog", opinion="probes", **FAST)
    assert_same_rows(new, old)
    assert old.config["settings"] == new.config["settings"]


def test_opinion_sets_give_each_methods_rows(photos, vocab, tmp_path):
    """ascent,concepts is `both`; each method's rows are the same whether it runs alone or beside another."""
    kw = dict(**FAST, vocabulary=str(vocab), concept_mean="none", words="red")
    pair = audit.scan(photos, tmp_path / "pair", opinion="concepts,ascent", **kw)
    assert pair.config["settings"]["opinions"] == ["ascent", "probes", "concepts"]
    alone = audit.scan(photos, tmp_path / "alone", opinion="concepts", **kw)
    tokens = pair.tokens()
    assert set(tokens.kind) == {"ascent", "probe", "concept"}
    for kind in ("probe", "concept"):
        a = tokens[tokens.kind == kind].sort_values(["image_id", "word"]).reset_index(drop=True)
        b = alone.tokens()[lambda t, k=kind: t.kind == k].sort_values(["image_id", "word"]).reset_index(drop=True)
        assert list(a.word) == list(b.word) and np.allclose(a.word_cosine, b.word_cosine, atol=1e-6)


def test_a_concept_scan_without_heatmaps_or_probes(photos, vocab, tmp_path):
    """Defect 1: --opinion concepts --concept-heatmaps 0 with no probe words crashed (no pairs to map)."""
    scan = audit.scan(photos, tmp_path / "s", opinion="concepts", concept_heatmaps=0, vocabulary=str(vocab),
                      concept_mean="none", **FAST)
    assert len(scan.images()) == 4 and len(scan.heatmaps()) == 0
    tokens = scan.tokens()
    assert set(tokens.kind) == {"concept"} and tokens.word_cosine.notna().all()


def test_the_cpu_batch_size_follows_the_models_vocabulary(photos, tmp_path, monkeypatch):
    """Defect 3: the CPU auto batch size counted CLIP's 49,408 tokens whatever the tokenizer."""
    from audit.scanner import pipeline
    from audit.scanner.models import vocab_size

    cpu = torch.device("cpu")
    opts = ScanOptions(candidates=16, tokens_per_seq=4)
    assert opts.resolved_batch_size(cpu, 49408) == (32 << 20) // (16 * 4 * 49408 * 4)
    assert opts.resolved_batch_size(cpu, 4096) == (32 << 20) // (16 * 4 * 4096 * 4) > 10
    assert vocab_size("ViT-B-32") == 49408
    monkeypatch.setattr(pipeline, "vocab_size", lambda name: 4096)  # a model with another tokenizer
    plan = pipeline.plan_scan(str(photos), str(tmp_path / "x"), ScanOptions(model="audit-tiny", pretrained="none",
                                                                           device="cpu"))
    assert plan.batch_size == (32 << 20) // (16 * 4 * 4096 * 4)


def test_concept_embeddings_are_cached_by_the_weights_not_their_name(tmp_path, vocab, monkeypatch):
    """Defect 4: the cache was keyed by the pretrained tag or file name; a checkpoint replaced in place (or two
    models under one name) gave the first one's embeddings."""
    from audit.scanner.encoders import Towers
    from audit.scanner.models import load_model
    from audit.scanner.opinions.concepts import ConceptOpinion

    monkeypatch.setenv("AUDIT_CACHE_DIR", str(tmp_path / "cache"))
    opts = ScanOptions(model="audit-tiny", pretrained="none", opinion="concepts", vocabulary=str(vocab),
                       concept_mean="none", device="cpu")
    planned = ConceptOpinion.plan(opts)
    built = []
    for seed in (0, 1):  # the same model name and tag, other weights
        towers = Towers(load_model("audit-tiny", "none", device="cpu", seed=seed))
        built.append(ConceptOpinion.build(opts, towers, planned).decomposition.embeddings)
    fresh = ConceptOpinion.build(opts, towers, planned).decomposition.embeddings  # from the cache now
    assert not torch.allclose(built[0], built[1]) and torch.equal(built[1], fresh)
    assert len(list((tmp_path / "cache" / "concepts").glob("*.npy"))) == 4  # embeddings and text mean, per model


def test_kernel_is_recorded_in_every_run_and_a_resume_with_another_is_refused(photos, tmp_path, monkeypatch):
    scan = audit.scan(photos, tmp_path / "s", **FAST)
    assert scan.config["settings"]["kernel"] == "eager" and scan.config["runs"][-1]["kernel"] == "eager"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(AuditError, match="kernel: stored 'eager', now 'triton'"):
        audit.scan(photos, tmp_path / "s", kernel="triton", **FAST)
    # The environment is read at the API's edge as the default, and refused the same way.
    monkeypatch.setenv("AUDIT_KERNEL", "triton")
    with pytest.raises(AuditError, match="kernel: stored 'eager', now 'triton'"):
        audit.scan(photos, tmp_path / "s", **FAST)
    probes = audit.scan(photos, tmp_path / "p", words="red", opinion="probes", **FAST)
    assert probes.config["runs"][-1]["kernel"] is None  # no ascent ran


def test_a_webdataset_json_label_is_the_label(tmp_path):
    """Defect 7: a sample's json {"label": ...} became meta_label, so --group-by label found no groups; .cls wins
    when both are there, and the json's label stays beside it."""
    import io
    import json
    import tarfile

    from PIL import Image

    from audit.sources import open_source

    def png() -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, "PNG")
        return buf.getvalue()

    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in (("a.png", png()), ("a.json", json.dumps({"label": "north", "site": 3}).encode()),
                           ("b.png", png()), ("b.json", json.dumps({"label": "json-label"}).encode()),
                           ("b.cls", b"south")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    recs = {r.image_id: r for r in open_source(shard).records()}
    a, b = recs["shard.tar/a"], recs["shard.tar/b"]
    assert a.label == "north" and a.meta == {"site": "3"}
    assert b.label == "south" and b.meta == {"label": "json-label"}
    scan = audit.scan(shard, tmp_path / "scan", words="red", opinion="probes", **FAST)
    images = scan.images().set_index("image_id")
    assert images.loc["shard.tar/a", "label"] == "north" and images.loc["shard.tar/b", "meta_label"] == "json-label"
