"""A scan's rows do not depend on how the work was cut: the same images scanned in batches of 1, 7 and 64 give
the same embeddings, probe scores, concepts, weights and fits, bit for bit; heatmaps (the model's own forward and
backward over each batch's (image, word) pairs) within float noise."""

from __future__ import annotations

import numpy as np
import pytest

import audit
from audit.scanner.device import native_bfloat16

from .helpers import KEYS, save_noise

PRECISIONS = ["float32", pytest.param("bfloat16", marks=pytest.mark.skipif(
    not native_bfloat16(__import__("torch").device("cpu")), reason="this CPU has no native bfloat16"))]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from audit.demo import make_dataset

    root = tmp_path_factory.mktemp("identity")
    make_dataset(root / "ds", images=15, size=64)
    for i in range(6):  # and noise of odd sizes
        save_noise(root / "ds" / "noise" / f"{i}.png", size=(30 + 11 * i, 70 - 7 * i), seed=i)
    return root / "ds"


def _rows(scan: audit.Scan, table: str):
    return scan.df(table).sort_values(KEYS[table]).reset_index(drop=True)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_rows_do_not_depend_on_the_batch_size(images, tmp_path, precision):
    kw = dict(model="audit-tiny", pretrained="none", opinion="concepts", words="red,grass,a circle", workers=0,
              quiet=True, device="cpu", embeddings="float32", precision=precision)
    scans = {b: audit.scan(images, tmp_path / f"b{b}", batch_size=b, **kw) for b in (1, 7, 64)}
    want = scans[64]
    assert len(want.images()) == 21 and set(want.tokens().kind) == {"concept", "probe"}
    for b, got in scans.items():
        for table in ("images", "tokens", "embeddings"):
            a, w = _rows(got, table), _rows(want, table)
            for col in a.columns:
                values = np.stack(a[col]) if col == "embedding" else a[col].to_numpy()
                expect = np.stack(w[col]) if col == "embedding" else w[col].to_numpy()
                same = np.array_equal(values, expect, equal_nan=a[col].dtype.kind == "f")
                assert same, f"batch {b}: {table}.{col} differs"
        heat, w_heat = _rows(got, "heatmaps"), _rows(want, "heatmaps")
        assert list(heat.word) == list(w_heat.word)
        gap = np.abs(np.stack(heat.grid) - np.stack(w_heat.grid)).max()
        assert gap < (1e-5 if precision == "float32" else 2e-2), (b, gap)
