"""The settings that change a row: one list derived from ScanOptions (and a short list of the options that do not),
recorded in scan.json, compared on resume, and named by `audit check --baseline` and `audit diff`."""

from __future__ import annotations

import dataclasses
import json

import pytest

from audit.cli import main
from audit.errors import AuditError
from audit.scanner.opinions import OPINIONS, opinion_class
from audit.scanner.options import RUN_OPTIONS, SHARED_SETTINGS, ScanOptions
from audit.scanner.pipeline import plan_scan
from audit.store import settings as stored_settings

from .helpers import save_noise
from .test_check import flat, policy

TINY = dict(model="audit-tiny", pretrained="none", device="cpu", quiet=True)


def test_every_scan_option_is_a_setting_or_named_as_not_changing_rows():
    fields = [f.name for f in dataclasses.fields(ScanOptions)]
    owners: dict[str, list[str]] = {}
    for group, names in [("run", RUN_OPTIONS), ("shared", SHARED_SETTINGS)] + \
            [(o, opinion_class(o).options) for o in OPINIONS]:
        for name in names:
            owners.setdefault(name, []).append(group)
    assert sorted(owners) == sorted(fields), set(fields) ^ set(owners)
    assert all(len(g) == 1 for g in owners.values()), {k: g for k, g in owners.items() if len(g) > 1}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("settings")
    for i in range(2):
        save_noise(root / "ds" / f"{i}.png", seed=i)
    return root


def _settings(folder, **options) -> dict:
    opts = ScanOptions(**{**TINY, "words": ("red",), **options})
    return plan_scan(str(folder / "ds"), str(folder / "out"), opts).settings


# A changed value for each option that shapes rows (model and pretrained are compared by the weights' identity).
CHANGED = {"seed": 1, "start_layer": 0, "start_layer_text": 0, "heatmap": "occlusion", "occlusion_window": 2,
           "steps": 7, "tokens_per_seq": 3, "candidates": 5, "lr": 1.0, "views": 3, "resample_views": True,
           "refine_rounds": 1, "refine_top": 8, "refine_words": False, "prompt": "a photo of", "kernel": "eager",
           "words": ("blue",), "concept_l1": 0.1, "concepts_per_image": 4, "concept_heatmaps": 1,
           "concept_mean": "none", "opinion": "ascent,concepts"}


def test_each_setting_changes_the_recorded_settings_and_run_options_do_not(folder, monkeypatch):
    base = _settings(folder, opinion="ascent,concepts", kernel="auto")
    for name, value in CHANGED.items():
        if name in ("opinion", "kernel", "occlusion_window"):
            continue
        assert _settings(folder, opinion="ascent,concepts", **{name: value}) != base, name
    # A relevancy method's settings are recorded where it draws the heatmaps, and only there.
    occlusion = _settings(folder, opinion="ascent,concepts", heatmap="occlusion")
    assert _settings(folder, opinion="ascent,concepts", heatmap="occlusion", occlusion_window=2) != occlusion
    assert "occlusion_window" not in base and "start_layer" not in occlusion and "legrad_layers" not in base
    assert _settings(folder, opinion="ascent,concepts", occlusion_window=2) == base
    assert _settings(folder, opinion="ascent") != base  # the concepts' settings go with them
    for name, value in {"workers": 0, "batch_size": 3, "engine": "ray", "retry_errors": True, "overwrite": True,
                        "max_pixels": 10_000, "quiet": False}.items():
        assert _settings(folder, opinion="ascent,concepts", **{name: value}) == base, name
    # The kernel is recorded as the implementation that runs: auto is eager on this CPU.
    assert base["kernel"] == "eager" and _settings(folder, opinion="ascent,concepts", kernel="eager") == base
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    triton = _settings(folder, opinion="ascent,concepts", kernel="triton", triton_tiles="16,128,32")
    assert (triton["kernel"], triton["triton_tiles"]) == ("triton", "16,128,32")


def test_a_scan_stores_only_the_settings_of_the_opinions_it_ran(folder):
    concepts = _settings(folder, opinion="concepts", words=())
    assert concepts["opinions"] == ["concepts"]
    assert not {"steps", "kernel", "views", "probe_words"} & set(concepts)
    probes = _settings(folder, opinion="probes")
    assert probes["opinions"] == ["probes"] and probes["probe_words"] == ["red"]
    assert not {"steps", "vocabulary"} & set(probes)
    # Probe words join any opinion.
    assert _settings(folder, opinion="ascent")["opinions"] == ["ascent", "probes"]


def test_changing_an_unused_opinions_option_resumes_a_scan(folder, tmp_path):
    """A concepts-only scan is not refused because --steps changed: it ran no ascent."""
    import audit

    kw = dict(**TINY, opinion="concepts", vocabulary=str(_vocab(tmp_path)), workers=0, concept_mean="none")
    audit.scan(folder / "ds", tmp_path / "scan", steps=3, **kw)
    scan = audit.scan(folder / "ds", tmp_path / "scan", steps=50, **kw)
    assert len(scan.config["runs"]) == 2
    with pytest.raises(AuditError, match="concept_l1"):
        audit.scan(folder / "ds", tmp_path / "scan", steps=50, concept_l1=0.05, **kw)


def _vocab(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("red\ngreen\nblue\ngrass\nsnow\nsky\n", encoding="utf-8")
    return path


def test_settings_of_audit_0_2_are_read_in_this_form():
    """0.2 kept every opinion's settings and an `ascent` flag; the upgrade keeps only what ran, names the
    opinions and the kernel the default gave (compile on CUDA, eager on a CPU)."""
    ascent = {"tokens_per_seq": 4, "candidates": 16, "steps": 200, "lr": 5.0, "tau": 1000.0, "views": 64,
              "resample_views": False, "prompt": "", "keep": 5, "refine_rounds": 3, "refine_top": 64,
              "refine_words": True, "degrees": 10.0, "translate": 0.1, "p_affine": 0.8}
    concepts = {"vocabulary": "default:abc", "concept_l1": 0.2, "concepts_per_image": 10, "concept_heatmaps": 3,
                "concept_mean": "dataset"}
    shared = {"model": "ViT-B-32", "pretrained": "openai", "weights_sha256": None, "seed": 0}
    only_concepts = {**shared, **ascent, **concepts, "ascent": True, "opinion": "concepts", "probe_words": []}
    # The tokenizer's words were the default vocabulary, named "default"; they are "tokens" now.
    assert stored_settings.upgrade(only_concepts) == {**shared, **concepts, "vocabulary": "tokens:abc",
                                                      "opinions": ["concepts"]}
    probes = {**shared, **ascent, "ascent": False, "opinion": "ascent", "probe_words": ["doctor"]}
    # Probe words were scored bare before templates.
    assert stored_settings.upgrade(probes) == {**shared, "probe_words": ["doctor"], "probe_templates": "none",
                                               "opinions": ["probes"]}
    both = {**shared, **ascent, **concepts, "ascent": True, "opinion": "both", "probe_words": []}
    on_gpu = stored_settings.upgrade(both, [{"device": "cuda:0"}])
    # And the precision: bfloat16 autocast on CUDA, float32 elsewhere, before --precision existed.
    assert on_gpu == {**shared, **ascent, **concepts, "vocabulary": "tokens:abc", "kernel": "compile",
                      "opinions": ["ascent", "concepts"], "precision": "bfloat16"}
    on_cpu = stored_settings.upgrade(both, [{"device": "cpu"}])
    assert on_cpu["kernel"] == "eager" and on_cpu["precision"] == "float32"
    assert "precision" not in stored_settings.upgrade(both)  # no run recorded: unknown
    # Version 1 knew neither opinion nor refine_words: an ascent with the swaps to any token.
    v1 = {**shared, **{k: v for k, v in ascent.items() if k != "refine_words"}, "ascent": True, "probe_words": []}
    assert stored_settings.upgrade(v1)["refine_words"] is False
    assert stored_settings.upgrade(on_gpu) == on_gpu  # this form is left as it is


@pytest.mark.parametrize("key,old,new", [("resample_views", False, True), ("refine_words", True, False),
                                         ("probe_words", ["a"], ["b"]), ("kernel", "eager", "triton")])
def test_check_and_diff_name_a_setting_the_scans_differ_in(tmp_path, capsys, key, old, new):
    """Each in one line; these four were missing from the hand-kept list check compared before."""
    base, other = flat(tmp_path, "base"), flat(tmp_path, "other")
    for scan, value in ((base, old), (other, new)):
        config = json.loads((scan / "scan.json").read_text())
        config["settings"] = {**stored_settings.upgrade(config["settings"]), key: value}
        (scan / "scan.json").write_text(json.dumps(config))
    pol = policy(tmp_path, 'group_by = "label"\n[drift]\nmax_jsd = 0.9\n')
    main(["check", str(other), "--policy", str(pol), "--baseline", str(base)])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "other settings" in line]
    assert len(lines) == 1 and f"{key} {old!r} -> {new!r}" in lines[0], out
    assert main(["diff", str(base), str(other)]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "other settings" in line]
    assert len(lines) == 1 and f"{key} {old!r} -> {new!r}" in lines[0], out
    # And nothing is said when they agree.
    main(["diff", str(base), str(base)])
    assert "other settings" not in capsys.readouterr().out


def test_the_upgrade_knows_each_opinions_settings_as_the_opinions_record_them():
    """store/settings.py cannot import the scanner, so it lists the ascent's and the concepts' settings itself:
    held here to what the opinions record, so the two lists cannot drift apart."""
    from audit.scanner.ascent import AscentConfig

    ascent = opinion_class("ascent").settings(ScanOptions(kernel="eager"), None)
    assert set(stored_settings.ASCENT_SETTINGS) == {f.name for f in dataclasses.fields(AscentConfig)}
    assert set(ascent) == set(stored_settings.ASCENT_SETTINGS) | {"kernel"}
    assert set(stored_settings.CONCEPT_SETTINGS) == set(opinion_class("concepts").options)


def test_legrad_layers_are_a_setting_only_where_legrad_runs(folder):
    """Scans made before LeGrad existed (or with another method) resume as they were: no new setting appears."""
    chefer = _settings(folder, opinion="ascent")
    assert "legrad_layers" not in chefer and _settings(folder, opinion="ascent", legrad_layers=1) == chefer
    legrad = _settings(folder, opinion="ascent", heatmap="legrad")
    assert legrad["legrad_layers"] == 2  # the model's default: its authors' 2 layers
    assert _settings(folder, opinion="ascent", heatmap="legrad", legrad_layers=1) != legrad


def test_a_scan_that_stored_every_methods_settings_resumes_and_reads_in_this_form(folder, tmp_path):
    """Scans before this audit stored Chefer's and occlusion's settings whichever drew the heatmaps: they read as
    if they had stored the drawing method's alone, and resume."""
    import audit

    kw = dict(**TINY, opinion="probes", words="red", workers=0, precision="float32")
    audit.scan(folder / "ds", tmp_path / "scan", **kw)
    config_path = tmp_path / "scan" / "scan.json"
    config = json.loads(config_path.read_text())
    assert "occlusion_window" not in config["settings"] and config["settings"]["start_layer"] == -1
    config["settings"]["occlusion_window"] = 3  # as an older audit wrote it
    config_path.write_text(json.dumps(config))
    assert "occlusion_window" not in audit.Scan(tmp_path / "scan").settings
    save_noise(folder / "ds" / "late.png", seed=7)
    try:
        again = audit.scan(folder / "ds", tmp_path / "scan", **kw)
    finally:
        (folder / "ds" / "late.png").unlink()
    assert len(again.config["runs"]) == 2 and "occlusion_window" not in again.config["settings"]
    assert stored_settings.upgrade({"heatmap": "occlusion", "occlusion_window": 3, "start_layer": -1,
                                    "start_layer_text": -1}) == {"heatmap": "occlusion", "occlusion_window": 3}


def test_the_store_knows_each_relevancy_methods_settings_as_the_registry_names_them():
    from audit.scanner.relevancy import METHODS

    assert {m: tuple(method.options.values()) for m, method in METHODS.items()} == \
        stored_settings.RELEVANCY_SETTINGS
