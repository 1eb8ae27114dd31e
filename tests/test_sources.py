"""Folder and manifest sources: ids, labels, metadata, boxes, and clear errors."""

import json
import os

import pandas as pd
import pytest

from audit.errors import AuditError
from audit.sources import open_source

from .helpers import save_noise


def _records(src):
    """A source's records in image-id order (sources stream them in their own order)."""
    return sorted(src.records(), key=lambda r: r.image_id)


def test_folder_labels_and_extensions(tmp_path):
    root = tmp_path / "ds"
    save_noise(root / "cats" / "a.PNG")
    save_noise(root / "cats" / "deep" / "b.jpeg")
    save_noise(root / "dogs" / "c.Jpg")
    save_noise(root / "root.webp")
    (root / "notes.txt").write_text("not an image")
    src = open_source(root)
    assert [(r.image_id, r.label) for r in _records(src)] == [
        ("cats/a.PNG", "cats"), ("cats/deep/b.jpeg", "cats"), ("dogs/c.Jpg", "dogs"), ("root.webp", None)]
    assert all(os.path.isabs(r.path) for r in _records(src))


def test_image_ids_are_stable_across_locations(tmp_path):
    for where in ("one", "two"):
        save_noise(tmp_path / where / "x" / "a.png")
    ids = [[r.image_id for r in _records(open_source(tmp_path / w))] for w in ("one", "two")]
    assert ids[0] == ids[1] == ["x/a.png"]


def test_broken_symlink_and_non_utf8_name_are_listed(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "dangling.png").symlink_to(root / "missing.png")
    bad = os.path.join(os.fsencode(root), b"caf\xe9.png")
    with open(bad, "wb") as f:
        f.write(b"x")
    ids = [r.image_id for r in _records(open_source(root))]
    assert ids == ["caf\\xe9.png", "dangling.png"]
    json.dumps(ids).encode("utf-8")  # storable as UTF-8


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_manifest_formats(tmp_path, fmt):
    save_noise(tmp_path / "imgs" / "a.png")
    df = pd.DataFrame({"file": ["imgs/a.png", "/elsewhere/b.png"], "label": ["x", "y"], "city": ["Oslo", None],
                       "x0": [1, None], "y0": [2, None], "x1": [10, None], "y1": [20, None]})
    path = tmp_path / f"m.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "parquet":
        df.to_parquet(path)
    else:
        df.to_json(path, orient="records", lines=True)
    src = open_source(path, path_column="file")
    b, a = _records(src)  # sorted by image_id
    assert a.image_id == "imgs/a.png" and a.path == str(tmp_path / "imgs" / "a.png")
    assert a.label == "x" and a.meta == {"city": "Oslo"} and a.box == (1.0, 2.0, 10.0, 20.0)
    assert b.path == "/elsewhere/b.png" and b.box is None and b.meta == {"city": None}
    assert src.meta_columns == ["city"]


def test_manifest_errors(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("file,label\na.png,x\n")
    with pytest.raises(AuditError, match="no column 'path'.*--path-column"):
        open_source(path)
    path.write_text("path,width\na.png,3\n")
    with pytest.raises(AuditError, match="clash"):
        open_source(path)
    path.write_text("path,x0,y0\na.png,1,2\n")
    with pytest.raises(AuditError, match="needs all of x0, y0, x1, y1"):
        open_source(path)
    path.write_text("path\na.png\na.png\n")
    with pytest.raises(AuditError, match="twice"):
        open_source(path)
    with pytest.raises(AuditError, match="does not exist"):
        open_source(tmp_path / "nope")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(AuditError, match="neither a folder nor a manifest"):
        open_source(tmp_path / "x.txt")
