import numpy as np
import pandas as pd
from PIL import Image

import audit
from audit.store.schema import TABLES

# Small ascent settings: enough steps to exercise tracking of the best sequences, seconds on a CPU. In float32,
# so that the mechanics tests compare values to float noise on any CPU (bfloat16 has tests of its own:
# test_precision.py; the demo's scans run at the default, auto).
FAST = dict(model="audit-tiny", pretrained="none", steps=3, candidates=4, views=4, workers=0, quiet=True,
            precision="float32")


def save_noise(path, size=(48, 40), seed=0, mode="RGB"):
    rs = np.random.RandomState(seed)
    arr = rs.randint(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


# A word is unique per (image, kind): "grass" may be an ascent word, a concept and a probe of one image.
KEYS = {"images": ["image_id"], "tokens": ["image_id", "kind", "word"], "heatmaps": ["image_id", "kind", "word"],
        "errors": ["image_id"], "embeddings": ["image_id"]}


def assert_same_rows(got: audit.Scan, want: audit.Scan, exact: bool = False):
    """The same rows in every table; `exact`: every value bit for bit but the heatmaps' (the model's forward and
    backward over a batch's pairs), which stay within float noise."""
    for t in TABLES:
        a, b = got.df(t), want.df(t)
        assert not a.duplicated(KEYS[t]).any(), f"{t}: rows stored twice"
        a = a.sort_values(KEYS[t]).reset_index(drop=True)
        b = b.sort_values(KEYS[t]).reset_index(drop=True)
        assert len(a) == len(b), t
        for col in a.columns:
            if col in ("grid", "text_relevance"):
                assert np.allclose(np.concatenate(a[col].to_list()), np.concatenate(b[col].to_list()), atol=1e-5)
            elif exact and (col == "embedding" or a[col].dtype.kind == "f"):
                values = (np.stack(a[col]), np.stack(b[col])) if col == "embedding" else (a[col], b[col])
                assert np.array_equal(*values, equal_nan=True), (t, col)
            elif col == "embedding":  # float16: another batch's float noise may round the last bit the other way
                assert np.allclose(np.stack(a[col]), np.stack(b[col]), rtol=2e-3, atol=1e-3), t
            elif a[col].dtype.kind == "f":
                assert np.allclose(a[col], b[col], atol=1e-5, equal_nan=True), (t, col)
            else:
                pd.testing.assert_series_equal(a[col], b[col], check_names=False, obj=f"{t}.{col}")


def count_parts(out):
    folder = out / "images"
    return len(list(folder.glob("part-*.parquet"))) if folder.is_dir() else 0
