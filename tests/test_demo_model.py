"""The committed audit-demo weights (v2) and the demo built on them.

A smaller run of `audit demo evaluate` at the demo-model issue's floors: zero-shot >= 90%, word recall and
pointing >= 80%. The comments give what v2 measures on the same scenes (see audit/demo/weights/MODEL_CARD.md).
"""

import pandas as pd
import pytest

import audit
from audit.demo import make_dataset
from audit.demo.evaluate import RECALL_CANDIDATES, RECALL_STEPS, pointing_game, word_recall, zero_shot
from audit.demo.scenes import make_scene
from audit.demo.train import EVAL_SEED_BASE
from audit.scanner.encoders import Towers
from audit.scanner.models import load_model, resolve_weights
from audit.scanner.profiles import profile

from .browser import open_page


def test_bundled_weights_ship_and_are_the_default():
    assert profile("audit-demo").bundled_weights.is_file()
    assert profile("audit-demo").bundled_weights.stat().st_size <= 20 * 1024 * 1024
    weights, sha = resolve_weights("audit-demo", "auto")
    assert weights == str(profile("audit-demo").bundled_weights) and len(sha) == 64


@pytest.fixture(scope="module")
def demo_model():
    loaded = load_model("audit-demo", "auto", device="cpu")
    return loaded, Towers(loaded)


def test_it_knows_colours_shapes_and_backgrounds(demo_model):
    loaded, towers = demo_model
    scenes = [make_scene(EVAL_SEED_BASE + i, size=64, n_objects=1) for i in range(100)]
    acc = zero_shot(towers, loaded.preprocess, scenes)
    assert acc["colour"] >= 0.95 and acc["background"] >= 0.95, acc  # v2: 100% and 100% on these scenes
    assert acc["shape"] >= 0.9, acc  # v2: 100% on these 100 scenes (v1 98%, v0 48.5% on 200); chance is 12.5%


def test_the_scan_finds_colour_and_shape_words(tmp_path):
    """Word recall with the scan's own ascent settings on 20 single-object scenes (2 minutes on 2 CPU cores).
    With the token swaps after the ascent (ascent.refine), v2 finds the colour word in 18 and the shape word in
    20 (19 and 20 with the compiled step and bfloat16); without them 15 and 20, the best sequences saying
    "thing" where the colour belongs (v1: 10 and 13). The step runs compiled, as on CUDA: its draws and tokens
    are the eager step's (test_ascent.py), and it is a third faster here."""
    scenes = [make_scene(EVAL_SEED_BASE + i, size=64, n_objects=1) for i in range(20)]
    recall = word_recall(scenes, "audit-demo", "auto", RECALL_STEPS, RECALL_CANDIDATES, "cpu", seed=0,
                         kernel="compile")
    assert recall["colour"] >= 0.8 and recall["shape"] >= 0.8, recall


@pytest.fixture(scope="module")
def two_object_scenes():
    return [make_scene(EVAL_SEED_BASE + 500_000 + i, size=64, n_objects=2) for i in range(60)]


def test_shape_word_heatmaps_land_on_their_object(demo_model, two_object_scenes):
    """The issue's pointing game with occlusion heatmaps (--heatmap occlusion), at its 80% target."""
    loaded, towers = demo_model
    hits, box_mass = pointing_game(towers, loaded.preprocess, two_object_scenes, "occlusion")
    # A box covers about 7% of a 64 px scene; either object's box would hold about half the peaks by chance.
    assert hits >= 0.8 and box_mass >= 0.28, (hits, box_mass)  # v2: 93.3% and 35.6% on these 60 scenes
    hits, box_mass = pointing_game(towers, loaded.preprocess, two_object_scenes, "occlusion", kind="colour")
    assert hits >= 0.8 and box_mass >= 0.35, (hits, box_mass)  # v2: 98.3% and 44.2%


def test_legrad_heatmaps_find_colours_with_all_of_the_demos_layers(demo_model, two_object_scenes):
    """LeGrad on the same scenes: with the demo's 4 layers (its profile's default) colour words land on their
    object; with its authors' 2, which suit 12-layer models, far less often. Guards the profile's choice and the
    method's gradient path."""
    loaded, towers = demo_model
    hits, _ = pointing_game(towers, loaded.preprocess, two_object_scenes, "legrad", kind="colour")
    assert hits >= 0.85, hits  # v2: 98.3% on these 60 scenes (96.5% on 200)
    last_two, _ = pointing_game(towers, loaded.preprocess, two_object_scenes, "legrad", kind="colour", layers=2)
    assert last_two < hits - 0.15, (last_two, hits)  # v2: 71.7%


def test_every_method_is_more_faithful_than_random_for_object_words(demo_model):
    """audit verify's deletion and insertion on 32 held-out scenes. Deleting cells in any method's order lowers
    an object's colour and shape words sooner than random orders (v2: colour 0.371-0.405 against 0.444, shape
    0.254-0.303 against 0.312); inserting them brings shape words back sooner for every method (0.365-0.438
    against 0.312), colour words only for the gradient methods (0.465 against 0.448; occlusion 0.445). For
    background words no order does much better than random (deletion 0.421-0.439 against 0.441): a background is
    everywhere, so the order of its cells hardly matters."""
    from audit.demo.evaluate import faithfulness

    loaded, towers = demo_model
    scenes = [make_scene(EVAL_SEED_BASE + i, size=64, n_objects=1) for i in range(32)]
    faith = faithfulness(towers, loaded.preprocess, scenes)
    rand = faith["random"]
    for method in ("chefer", "occlusion", "legrad"):
        for kind in ("colour", "shape"):
            assert faith[method][kind][0] < rand[kind][0] - 0.005, (method, kind, faith)
        assert faith[method]["shape"][1] > rand["shape"][1] + 0.03, (method, faith)
    for method in ("chefer", "legrad"):
        assert faith[method]["colour"][1] > rand["colour"][1], (method, faith)


def test_chefer_heatmaps_find_colours_but_not_shapes(demo_model, two_object_scenes):
    """Chefer's method (the default) on the same scenes: colour words land on their object, shape words barely
    better than either object. Guards the gradient path (a broken rollout loses the colour figure)."""
    loaded, towers = demo_model
    start = profile("audit-demo").start_layer
    hits, box_mass = pointing_game(towers, loaded.preprocess, two_object_scenes, "chefer", start, kind="colour")
    assert hits >= 0.85 and box_mass >= 0.6, (hits, box_mass)  # v2: 95.8% and 75.7% on these 60 scenes
    hits, box_mass = pointing_game(towers, loaded.preprocess, two_object_scenes, "chefer", start)
    assert hits >= 0.45 and box_mass >= 0.28, (hits, box_mass)  # v2: 59.2% and 38.1%


def test_demo_report_makes_the_planted_bias_the_top_finding(demo_run, tmp_path):
    root, report, out = demo_run
    assert "Top finding: CLIP links 'grass' to label=north" in out, out
    scan = audit.Scan(root / "scan")
    assert len(scan.images()) == 60 and scan.errors().empty
    assert scan.config["settings"]["start_layer"] == 0  # audit-demo's own relevancy start (profiles.PROFILES)
    assert scan.config["settings"]["heatmap"] == "chefer"  # occlusion would put 'grass' on the object
    run = open_page(report, tmp_path / "chromium")
    assert run.console == [] and run.requests == []
    from audit.analysis.associations import associations
    from audit.outputs.report import EXAMPLES, FLAGGED_WITH_EXAMPLES
    from audit.store.query import ScanQuery

    flagged = associations(ScanQuery.open(root / "scan"), "label", 5, 0.05).flagged
    want = sum(min(EXAMPLES, int(a)) for a in flagged.a[:FLAGGED_WITH_EXAMPLES])
    assert "grass" in run.dom and want >= EXAMPLES and run.dom.count("data:image/png;base64,") == want


def test_planted_and_unbiased_datasets(tmp_path):
    biased = pd.read_csv(make_dataset(tmp_path / "b", images=60))
    share = (biased.background == "grass").groupby(biased.label).mean()
    assert share.to_dict() == {"north": 0.9, "south": 0.1, "west": 0.1}
    flat = pd.read_csv(make_dataset(tmp_path / "u", images=60, bias=None))
    assert (flat.groupby("label").background.value_counts() == 4).all()  # 4 of each of 5 backgrounds per site
    for data in (biased, flat):  # every site shows the same objects, so only the background tells sites apart
        objects = data.groupby("label")[["shape", "colour"]].apply(lambda g: sorted(map(tuple, g.values)))
        assert all(o == objects["north"] for o in objects) and len(set(objects["north"])) == 20


def test_concepts_name_the_colour_shape_and_background():
    """Concept recall (audit demo evaluate's) on 60 held-out scenes at the scan's defaults: v2 names the colour,
    shape and background of 100%, 98% and 100% of 200 scenes, with about 3 concepts an image."""
    from audit.demo.evaluate import concept_recall

    scenes = [make_scene(EVAL_SEED_BASE + i, size=64, n_objects=1) for i in range(60)]
    recall, per_image = concept_recall(scenes, "audit-demo", "auto", "cpu")
    assert min(recall.values()) >= 0.9, recall
    assert 2 <= per_image <= 6, per_image  # sparse: about the scene's three words, not the vocabulary


def test_the_planted_bias_is_found_with_concepts_too(tmp_path, unbiased_demo_scan):
    """`audit demo --opinion concepts`: the same planted bias, found by the concept decomposition in seconds,
    flagged by the report, failed by the policy's concept watch list; an unbiased dataset flags nothing."""
    import contextlib
    import io

    from audit.analysis.associations import associations
    from audit.demo import run_demo
    from audit.store.query import ScanQuery

    printed = io.StringIO()
    with contextlib.redirect_stderr(printed):
        report = run_demo(tmp_path / "demo", images=60, quiet=True, device="cpu", opinion="concepts")
    out = printed.getvalue()
    assert "Top finding: CLIP links the concept 'grass' to label=north" in out, out
    # Both watch lists read the concepts: one names kind = "concept", the other names no kind, so it reads the
    # words the scan holds (a concepts scan holds no ascent words).
    assert "exit 1, failed: watch:backgrounds, watch:backgrounds-concepts" in out, out
    scan = audit.Scan(tmp_path / "demo" / "scan")
    assert set(scan.tokens().kind) == {"concept"} and len(scan.images()) == 60
    html = report.read_text()
    assert "Grouped by “label”: concepts of the decomposition" in html and "Mean concept weight per group" in html
    # The overview counts the concepts (the ascent did not run: neither its count nor its settings are shown).
    assert f"<b>{len(scan.tokens())}</b>(image, concept) pairs" in html and "from the ascent" not in html
    assert "<td>concept_l1</td>" in html and "<td>steps</td>" not in html
    found = associations(ScanQuery.open(scan.root), "label", min_count=3, kind="concept").findings
    assert (found.iloc[0].grp, found.iloc[0].word) == ("north", "grass")
    weights = found.iloc[0]
    assert weights.share_group >= 0.8 and weights.share_rest <= 0.2
    unbiased = tmp_path / "unbiased"
    audit.scan(unbiased_demo_scan.parent / "dataset" / "manifest.csv", unbiased, model="audit-demo",
               opinion="concepts", workers=0, device="cpu", quiet=True)
    assert associations(ScanQuery.open(unbiased), "label", min_count=3, kind="concept").findings.empty
