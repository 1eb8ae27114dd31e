"""Mutation testing of the modules that decide what a user is told: does the suite notice a realistic bug?

Each mutation is one small edit (a flipped sign, an off-by-one, a dropped tolerance) of a critical module. It
is applied to a copy of the working tree (never to the tree itself, so an interrupted run leaves nothing
behind), then only the test files that exercise that module run. A mutation that some test fails on is
killed; one the tests pass on survives: a gap in the suite, unless it is listed as equivalent (the
behaviour a user sees does not change) with the reason.

    .venv/bin/python bench/mutation.py            # every mutation (about 10 minutes on 2 cores)
    .venv/bin/python bench/mutation.py -k ascent  # those whose id contains 'ascent'

Prints one line per mutation, the kill rate and the survivors; exits 1 when a mutation that the suite
should catch survives, or when one no longer applies (the code it edits has changed: update the list).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    id: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    equivalent: str = ""  # why surviving is right: the behaviour a user sees does not change


STATS = ("tests/test_stats.py", "tests/test_report.py")
ASSOC = ("tests/test_report.py", "tests/test_check.py")
ASCENT = ("tests/test_ascent.py",)
DECODE = ("tests/test_decode.py", "tests/test_decode_geometry.py")
STORE = ("tests/test_retry_errors.py", "tests/test_resume.py::test_crash_inside_a_commit_then_resume")
CONCEPTS = ("tests/test_concepts.py",)
REGISTRIES = ("tests/test_opinions.py", "tests/test_settings.py")

MUTATIONS = [
    Mutation("stats.fisher-table-order", "audit/analysis/stats.py", "fisher_exact([[a, b], [c, d]], alternative",
             "fisher_exact([[a, b], [d, c]], alternative", STATS),
    Mutation("stats.chi-square-correction", "audit/analysis/stats.py", "[[a, b], [c, d]], correction=False)",
             "[[a, b], [c, d]], correction=True)", STATS),
    Mutation("stats.chi-square-zero-margin", "audit/analysis/stats.py", "(b + d) == 0:\n        return 1.0",
             "(b + d) < 0:\n        return 1.0", STATS),
    Mutation("stats.bh-method", "audit/analysis/stats.py", 'false_discovery_control(p, method="bh")',
             'false_discovery_control(p, method="by")', STATS),
    Mutation("stats.haldane-correction", "audit/analysis/stats.py", "a2, b2, c2, d2 = a + 0.5, b + 0.5, c + 0.5, d + 0.5",
             "a2, b2, c2, d2 = a + 1.0, b + 0.5, c + 0.5, d + 0.5", STATS),
    Mutation("stats.mann-whitney-exact", "audit/analysis/stats.py", 'alternative="two-sided", method="auto")',
             'alternative="two-sided", method="asymptotic")', STATS),
    Mutation("stats.jensen-shannon-bits", "audit/analysis/stats.py", "jensenshannon(p, q, base=2)", "jensenshannon(p, q)",
             ("tests/test_stats.py", "tests/test_check.py")),
    Mutation("analysis.flag-direction", "audit/analysis/associations.py",
             'direction = table.log_odds_lo > 0 if alternative == "two-sided"',
             'direction = table.log_odds_hi > 0 if alternative == "two-sided"', ASSOC),
    Mutation("tables.fisher-one-sided-tail", "audit/analysis/tables.py", "np.where(j > at[:, None], 1.0",
             "np.where(j < at[:, None], 1.0", ("tests/test_tables.py",)),
    Mutation("tables.mid-p-half", "audit/analysis/tables.py", "0.5 if mid else 1.0", "1.0 if mid else 1.0",
             ("tests/test_tables.py",)),
    Mutation("tables.chi-square-one-sided-direction", "audit/analysis/tables.py",
             "o[:, 0] * o[:, 3] > o[:, 1] * o[:, 2]", "o[:, 0] * o[:, 3] < o[:, 1] * o[:, 2]", ("tests/test_tables.py",)),
    Mutation("ranks.exact-cdf-sign", "audit/analysis/ranks.py", "count += term if k % 2 == 0 else -term",
             "count += term", ("tests/test_ranks.py",)),
    Mutation("ranks.rest-median-count", "audit/analysis/ranks.py", 'side="right") - cell_start[:-1]',
             'side="left") - cell_start[:-1]', ("tests/test_ranks.py",)),
    Mutation("ranks.tie-correction", "audit/analysis/ranks.py", "- tie_term[cw] / (big_n * (big_n - 1))",
             "- 0 * tie_term[cw]", ("tests/test_ranks.py",)),
    Mutation("ascent.gradient-sign", "audit/scanner/ascent.py", "(soft_emb - soft_emb.detach())",
             "(soft_emb.detach() - soft_emb)", ASCENT),
    Mutation("ascent.dedupe-self", "audit/scanner/ascent.py", "dup = (same & earlier).any(-1)",
             "dup = (same & ~earlier).any(-1)", ASCENT),
    Mutation("ascent.refine-keeps-worse", "audit/scanner/ascent.py", "better = live & (best > scores)",
             "better = live & (best < scores)", ASCENT),
    Mutation("ascent.loss-mean-over-images", "audit/scanner/ascent.py", "loss = -100.0 * cos.mean(1).sum()",
             "loss = -100.0 * cos.mean(1).mean()", ASCENT),  # Adam's eps makes the batch size matter
    Mutation("relevancy.no-clamp", "audit/scanner/relevancy/chefer.py",
             "cam = (g.float() * a.detach().float()).clamp(min=0).mean(dim=1)",
             "cam = (g.float() * a.detach().float()).mean(dim=1)", ("tests/test_relevancy.py",)),
    Mutation("heatmaps.entropy-norm", "audit/scanner/heatmap_stats.py", "entropy = -plogp.sum(1) / math.log(n)",
             "entropy = -plogp.sum(1) / math.log(n + 1)", ("tests/test_heatmaps.py",)),
    Mutation("heatmaps.border-ring", "audit/scanner/heatmap_stats.py", "border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True",
             "border[0, :] = border[-1, :] = True", ("tests/test_heatmaps.py",)),
    Mutation("decode.unclamped-crop-frame", "audit/sources/decode.py",  # the frame of the bug that dropped 5.4% of photos
             "    if w * th == h * tw:\n        return 0.0, 0.0, float(w), float(h)\n",
             "    scale = max(tw / w, th / h)\n    x0, y0 = (w - tw / scale) / 2, (h - th / scale) / 2\n"
             "    return x0, y0, x0 + tw / scale, y0 + th / scale\n", DECODE),
    Mutation("decode.letterbox-unrounded-scale", "audit/sources/decode.py", "sx, sy = nw / w, nh / h",
             "sx = sy = scale", DECODE),
    Mutation("decode.alpha-on-black", "audit/sources/decode.py", "BACKGROUND = (255, 255, 255)",
             "BACKGROUND = (0, 0, 0)", DECODE),
    Mutation("store.commit-marker-first", "audit/store/writer.py",
             'sorted(staged, key=lambda s: s[1].parent.name == "images")',
             'sorted(staged, key=lambda s: s[1].parent.name != "images")', STORE),
    Mutation("store.oldest-error-wins", "audit/store/reader.py",
             "latest = {image_id: row for row, image_id in enumerate(ids)}",
             "latest = {image_id: row for row, image_id in reversed(list(enumerate(ids)))}", STORE),
    Mutation("scan.retry-ignored", "audit/scanner/pipeline.py", "done = scanned if plan.opts.retry_errors else scanned | failed",
             "done = scanned | failed", STORE),
    Mutation("query.kept-view-kind", "audit/store/query.py", "{join} WHERE t.kind = '{kind}'\"",
             "{join} WHERE t.kind <> '{kind}'\"", ASSOC + ("tests/test_word_filters.py",)),
    Mutation("query.stop-words-kept", "audit/store/query.py", "CASE WHEN t.word IN (SELECT word FROM {stop})",
             "CASE WHEN t.word NOT IN (SELECT word FROM {stop})", ("tests/test_word_filters.py",)),
    Mutation("query.relative-cosine-off", "audit/store/query.py", "WHEN t.word_cosine < {relative!r} * b.best THEN",
             "WHEN t.word_cosine < {relative!r} * 0 THEN", ("tests/test_word_filters.py",)),
    Mutation("legrad.unrectified", "audit/scanner/relevancy/legrad.py", "g.float().clamp(min=0).mean(dim=(1, 2))",
             "g.float().mean(dim=(1, 2))", ("tests/test_relevancy.py",)),
    Mutation("legrad.cls-key-kept", "audit/scanner/relevancy/legrad.py", ".mean(dim=(1, 2))[:, 1:]",
             ".mean(dim=(1, 2))[:, :-1]", ("tests/test_relevancy.py",)),
    Mutation("verify.area-no-trapezoid", "audit/scanner/verify.py",
             "return (curve.sum(-1) - (curve[..., 0] + curve[..., -1]) / 2) / k", "return curve.mean(-1)",
             ("tests/test_verify.py",)),
    Mutation("verify.top-half-one-short", "audit/scanner/verify.py",
             "np.searchsorted(np.cumsum(flat[order]), total / 2) + 1)", "np.searchsorted(np.cumsum(flat[order]), total / 2))",
             ("tests/test_verify.py",)),
    Mutation("verify.insertion-is-deletion", "audit/scanner/verify.py",
             "masks = torch.stack([shown, ~shown], dim=1)", "masks = torch.stack([shown, shown], dim=1)",
             ("tests/test_verify.py",)),
    Mutation("verdict.enough-side-dropped", "audit/analysis/verification.py", "        d = needed + enough\n",
             "        d = needed\n",
             ("tests/test_verify.py",)),
    Mutation("verdict.rises-count", "audit/analysis/verification.py",
             "return np.clip(drops.to_numpy(dtype=float), 0, None)", "return drops.to_numpy(dtype=float)",
             ("tests/test_verify.py",)),
    Mutation("probes.unnormalised-image", "audit/scanner/opinions/probes.py",
             "T) / features.norm(dim=-1, keepdim=True).clamp_min(1e-12))", "T))", ("tests/test_ask.py",)),
    Mutation("templates.not-renormalised", "audit/scanner/templates.py", "return F.normalize(emb.mean(1), dim=-1)",
             "return emb.mean(1)", ("tests/test_ask.py",)),
    Mutation("ask.words-repeated-not-tiled", "audit/scanner/ask.py",
             '"word": pa.array(np.tile(np.arange(w, dtype=np.int32), n))',
             '"word": pa.array(np.repeat(np.arange(w, dtype=np.int32), n))', ("tests/test_ask.py",)),
    Mutation("ask.unit-cut-drops-rest", "audit/scanner/ask.py", "for lo in range(0, images.num_rows, per_unit):",
             "for lo in range(0, min(images.num_rows, per_unit), per_unit):", ("tests/test_ask.py",)),
    Mutation("store.held-batches-lost-on-error", "audit/scanner/pipeline.py",
             "        writer.flush()  # the batches held", "        pass  # the batches held",
             ("tests/test_resume.py::test_a_failing_batch_leaves_the_batches_before_it_committed",)),
    Mutation("store.commit-count-off-by-one", "audit/store/writer.py", "if self._held_images >= COMMIT_IMAGES",
             "if self._held_images > COMMIT_IMAGES",
             ("tests/test_resume.py::test_batches_are_committed_together_by_count_and_by_age",)),
    Mutation("store.float16-read-as-float32", "audit/store/schema.py",
             'get(b"dtype", b"").decode() or "float32"])', 'get(b"", b"").decode() or "float32"])',
             ("tests/test_ask.py",)),
    Mutation("drift.min-p-uncalibrated", "audit/analysis/embedding_drift.py",
             "p = float((1 + np.sum(smallest[1:] <= smallest[0] + 1e-12)) / (permutations + 1))",
             "p = float(smallest[0])", ("tests/test_embedding_drift.py",)),
    Mutation("drift.labels-not-shuffled", "audit/analysis/embedding_drift.py", "rs.shuffle(labels[:, j])", "pass",
             ("tests/test_embedding_drift.py",)),
    Mutation("drift.sample-in-part-order", "audit/analysis/embedding_drift.py",
             'kept = kept[np.argsort(keys, kind="stable")]', "kept = kept", ("tests/test_embedding_drift.py",)),
    Mutation("explain.left-out-first", "audit/outputs/explain.py",
             'rows.sort_values(["image_id", "left_out", "order", "word_rank"])',
             'rows.sort_values(["image_id", "order", "word_rank"])', ("tests/test_explain.py",)),
    Mutation("explain.probes-filtered", "audit/outputs/explain.py", 'rows.loc[rows.kind == PROBE, "filtered"] = None',
             "pass", ("tests/test_explain.py",)),
    Mutation("stats.tarone-selects-on-p", "audit/analysis/stats.py", "testable = floor <= fdr / K * (1 + 1e-12)",
             "testable = p <= fdr / K * (1 + 1e-12)", ("tests/test_word_filters.py",)),
    Mutation("stats.min-p-one-tail", "audit/analysis/stats.py", 'ends = (low, high) if', "ends = (low,) if",
             ("tests/test_word_filters.py",)),
    Mutation("stats.min-p-one-sided-end", "audit/analysis/stats.py", 'else (high,)', "else (low,)",
             ("tests/test_word_filters.py",)),
    Mutation("analysis.two-groups-counted-twice", "audit/analysis/associations.py",
             'paired = len(groups) == 2 and alternative == "two-sided"', "paired = False",
             ("tests/test_word_filters.py",)),
    Mutation("solver.kkt-sign", "audit/scanner/sparse_solve.py", "slack = residual @ atoms.float().T - l1",
             "slack = residual @ atoms.float().T + l1", CONCEPTS),
    Mutation("solver.polish-without-penalty", "audit/scanner/sparse_solve.py",
             "rhs = torch.where(on, b64 - l1, torch.zeros_like(b64))", "rhs = torch.where(on, b64, torch.zeros_like(b64))",
             CONCEPTS),
    Mutation("solver.fista-step", "audit/scanner/sparse_solve.py", "w_new = (y - (grad + l1) / lipschitz).clamp(min=0)",
             "w_new = (y - (grad - l1) / lipschitz).clamp(min=0)", CONCEPTS),
    Mutation("concepts.image-mean-sign", "audit/scanner/concepts.py", "x = x - self.image_mean[None]",
             "x = x + self.image_mean[None]", CONCEPTS),
    Mutation("concepts.text-uncentred", "audit/scanner/concepts.py",
             "self.atoms = F.normalize(embeddings - text_mean.float()[None], dim=-1)", "self.atoms = embeddings",
             CONCEPTS),
    Mutation("fused.adam-bias-correction", "audit/scanner/fused_step.py", "self.lr / (1 - b1 ** t)", "self.lr",
             ("tests/test_fused_step.py",)),
    Mutation("fused.softmax-backward-reduction", "audit/scanner/fused_step.py", "grad = p * (ue - us[:, None]) / tau",
             "grad = p * ue / tau", ("tests/test_fused_step.py",)),
    Mutation("query.internal-stage", "audit/store/query.py", 'WHERE stage = ?", [INTERNAL]',
             'WHERE stage <> ?", [INTERNAL]', ("tests/test_retry_errors.py",)),
    Mutation("drift.permutation-p", "audit/analysis/drift.py", "p = (1 + int(np.sum(null >= observed - 1e-12))) / (rounds + 1)",
             "p = int(np.sum(null >= observed - 1e-12)) / (rounds + 1)", ("tests/test_check.py",)),
    Mutation("policy.watch-bound", "audit/policy/kinds/watch.py", 'bound = t.get("min_odds_ratio", float, 1.0)',
             'bound = t.get("min_odds_ratio", float, 2.0)', ("tests/test_check.py",)),
    Mutation("check.warn-is-fail", "audit/policy/rules.py",
             'status = ("fail" if rule.level == "fail" else "warn") if broken else "pass"',
             'status = "fail" if broken else "pass"', ("tests/test_check.py",)),
    # The registries: opinions, their settings, sources, rule kinds.
    Mutation("opinions.both-alias", "audit/scanner/opinions/__init__.py", 'ALIASES: dict[str, tuple[str, ...]] = {"both": ("ascent", "concepts")}',
             'ALIASES: dict[str, tuple[str, ...]] = {"both": ("ascent",)}', REGISTRIES),
    Mutation("opinions.every-word-a-heatmap", "audit/scanner/pipeline.py",
             'shown = [[w for f in found for w in f.words[i][:f.heatmaps[i]]] for i in range(len(recs))]',
             'shown = [[w for f in found for w in f.words[i]] for i in range(len(recs))]', CONCEPTS),
    Mutation("settings.kernel-unrecorded", "audit/scanner/opinions/ascent.py",
             'settings = {**dataclasses.asdict(opts.ascent()), "kernel": opts.kernel}',
             'settings = {**dataclasses.asdict(opts.ascent())}', REGISTRIES),
    Mutation("settings.old-kernel-guess", "audit/store/settings.py", 's["kernel"] = "compile" if on_gpu else "eager"',
             's["kernel"] = "eager" if on_gpu else "compile"', REGISTRIES),
    Mutation("sources.parquet-before-manifest", "audit/sources/__init__.py",
             '    "manifest": "audit.sources.manifest",\n    "parquet": "audit.sources.parquet",',
             '    "parquet": "audit.sources.parquet",\n    "manifest": "audit.sources.manifest",',
             ("tests/test_dataset_sources.py", "tests/test_sources.py")),
    Mutation("tables.fisher-ties-left-out", "audit/analysis/tables.py", "TIE = 1 + 1e-9", "TIE = 1 - 1e-9",
             ("tests/test_tables.py",)),
    Mutation("tables.fisher-pmf-step", "audit/analysis/tables.py",
             "- np.log(np.where(inside, x + 1, 1))", "- np.log(np.where(inside, x + 2, 1))", ("tests/test_tables.py",)),
    Mutation("tables.test-choice", "audit/analysis/tables.py", "fisher = expected_min(a, b, c, d) < 5",
             "fisher = expected_min(a, b, c, d) <= 5", ("tests/test_tables.py",)),
    Mutation("tables.min-p-one-end", "audit/analysis/tables.py", "for x in (low, high) if", "for x in (high, high) if",
             ("tests/test_tables.py",)),
    Mutation("policy.drift-kind-unregistered", "audit/policy/kinds/drift.py", 'kinds = (*BOUNDS, "drift.new_associations")',
             "kinds = (*BOUNDS,)", ("tests/test_check.py",)),
]


def _copy_tree(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def _pytest(tree: Path, tests: tuple[str, ...], timeout: float) -> tuple[bool, float]:
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    try:
        rc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                            cwd=tree, env=env, capture_output=True, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        rc = -1  # a mutation that hangs the tests is caught too
    return rc == 0, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", default="", help="only mutations whose id contains this")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per test run")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTATIONS if args.k in m.id]
    with tempfile.TemporaryDirectory(prefix="audit-mutation-") as tmp:
        tree = Path(tmp)
        _copy_tree(tree)
        where = subprocess.run([sys.executable, "-c", "import audit; print(audit.__file__)"], cwd=tree,
                               env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True).stdout
        if not where.startswith(str(tree)):  # mutants must be what the tests import
            print(f"the tests would import audit from {where.strip()}, not from the mutated copy", file=sys.stderr)
            return 2
        for tests in dict.fromkeys(m.tests for m in chosen):  # the unmutated suite must pass first
            ok, seconds = _pytest(tree, tests, args.timeout)
            if not ok:
                print(f"the tests fail without any mutation: {' '.join(tests)}", file=sys.stderr)
                return 2
        killed, survivors, stale, equivalent = 0, [], [], []
        for m in chosen:
            path = tree / m.path
            original = path.read_text(encoding="utf-8")
            if original.count(m.old) != 1:
                stale.append(m)
                print(f"STALE     {m.id:34s} the code it edits is not in {m.path} exactly once", flush=True)
                continue
            path.write_text(original.replace(m.old, m.new), encoding="utf-8")
            try:
                passed, seconds = _pytest(tree, m.tests, args.timeout)
            finally:
                path.write_text(original, encoding="utf-8")
            if not passed:
                killed += 1
                verdict = "killed"
            elif m.equivalent:
                equivalent.append(m)
                verdict = "survived (equivalent)"
            else:
                survivors.append(m)
                verdict = "SURVIVED"
            print(f"{verdict:22s} {m.id:34s} {seconds:6.1f} s  {' '.join(m.tests)}", flush=True)
    counted = len(chosen) - len(stale) - len(equivalent)
    print(f"\nmutations: {len(chosen)}; killed {killed} of the {counted} the suite should catch "
          f"({killed / counted:.0%} kill rate)" if counted else "\nno mutation ran")
    for m in equivalent:
        print(f"equivalent (not counted): {m.id}: {m.equivalent}")
    for m in survivors:
        print(f"SURVIVOR: {m.id} ({m.path}: {m.old!r} -> {m.new!r})")
    return 1 if survivors or stale else 0


if __name__ == "__main__":
    sys.exit(main())
