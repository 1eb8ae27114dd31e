"""Dataset-scale sources: WebDataset shards, a Hugging Face `save_to_disk` dataset and a Parquet file of image
bytes, built here from the same images, give the same rows as the image folder they came from; plus their
metadata, their bad members, fsspec's memory:// and the choice of source."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import audit
from audit.errors import AuditError
from audit.sources import detect, open_source

PROBE = dict(model="audit-tiny", pretrained="none", words="red,circle,grass", opinion="probes", workers=0,
             quiet=True, device="cpu")
N = 8


def _images() -> list[tuple[str, str, bytes, str]]:
    """(stem, label, encoded bytes, extension): PNG and JPEG, odd sizes."""
    rs = np.random.RandomState(0)
    out = []
    for i in range(N):
        w, h = 40 + 7 * i, 90 - 5 * i
        arr = rs.randint(0, 255, (h, w, 3), dtype=np.uint8)
        buf = io.BytesIO()
        fmt, ext = ("PNG", "png") if i % 2 else ("JPEG", "jpg")
        Image.fromarray(arr).save(buf, fmt)
        out.append((f"img{i:02d}", "north" if i < 4 else "south", buf.getvalue(), ext))
    return out


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(root: Path, images, per_shard: int = 4) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(0, len(images), per_shard):
        path = root / f"{s // per_shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for stem, label, data, ext in images[s:s + per_shard]:
                _add(tar, f"{stem}.{ext}", data)
                _add(tar, f"{stem}.json", json.dumps({"city": f"c{stem[-1]}", "tags": ["a", "b"]}).encode())
                _add(tar, f"{stem}.cls", label.encode())
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    images = _images()
    for stem, label, data, ext in images:
        (root / "folder" / label).mkdir(parents=True, exist_ok=True)
        (root / "folder" / label / f"{stem}.{ext}").write_bytes(data)
    write_shards(root / "shards", images)
    pq.write_table(pa.table({"key": [s for s, *_ in images], "image": [d for _, _, d, _ in images],
                             "label": [lab for _, lab, _, _ in images], "city": [f"c{s[-1]}" for s, *_ in images]}),
                   root / "bytes.parquet")
    import datasets

    ds = datasets.Dataset.from_dict({"name": [s for s, *_ in images], "image": [{"bytes": d, "path": None}
                                                                              for _, _, d, _ in images],
                                     "label": [lab for _, lab, _, _ in images]},
                                    features=datasets.Features({"name": datasets.Value("string"),
                                                                "image": datasets.Image(),
                                                                "label": datasets.Value("string")}))
    ds.save_to_disk(str(root / "hf"))
    return root


def _by_stem(scan: audit.Scan, table: str) -> pd.DataFrame:
    df = scan.df(table)
    df["stem"] = df.image_id.map(lambda i: Path(i.split("/")[-1]).stem.split("#")[0])
    return df


def test_every_source_gives_the_folder_rows(sources, tmp_path):
    want = audit.scan(sources / "folder", tmp_path / "folder", **PROBE)
    w_tok = _by_stem(want, "tokens").sort_values(["stem", "word"]).reset_index(drop=True)
    w_heat = _by_stem(want, "heatmaps").sort_values(["stem", "word"]).reset_index(drop=True)
    for kind, location, extra in (("webdataset", sources / "shards", {}), ("parquet", sources / "bytes.parquet", {}),
                                  ("hf", sources / "hf", {"id_column": "name"})):
        got = audit.scan(location, tmp_path / kind, **PROBE, **extra)
        assert got.config["source"]["kind"] == kind  # auto found it
        images = got.images()
        assert len(images) == N and got.errors().empty, kind
        tok = _by_stem(got, "tokens").sort_values(["stem", "word"]).reset_index(drop=True)
        heat = _by_stem(got, "heatmaps").sort_values(["stem", "word"]).reset_index(drop=True)
        assert list(tok.stem) == list(w_tok.stem) and list(tok.word) == list(w_tok.word), kind
        assert np.allclose(tok.word_cosine, w_tok.word_cosine, atol=1e-6), kind
        assert np.allclose(np.stack(heat.grid), np.stack(w_heat.grid), atol=1e-6), kind
        sizes = images.set_index(images.image_id.map(lambda i: Path(i.split("/")[-1]).stem))[["width", "height"]]
        want_sizes = want.images().set_index(want.images().image_id.map(lambda i: Path(i).stem))[["width", "height"]]
        assert sizes.sort_index().equals(want_sizes.sort_index()), kind
        labels = images.set_index(images.image_id.map(lambda i: Path(i.split("/")[-1]).stem)).label
        assert (labels.sort_index() == want.images().set_index(want.images().image_id.map(
            lambda i: Path(i).stem)).label.sort_index()).all(), kind


def test_image_ids_and_metadata_of_each_source(sources):
    wds = sorted(open_source(sources / "shards").records(), key=lambda r: r.image_id)
    assert [r.image_id for r in wds[:2]] == ["00000.tar/img00", "00000.tar/img01"]
    assert wds[0].label == "north" and wds[0].meta == {"city": "c0", "tags": '["a", "b"]'}  # nested JSON as JSON
    pq_src = open_source(sources / "bytes.parquet")
    assert pq_src.kind == "parquet" and pq_src.options["id_column"] == "key"  # img2dataset's key column
    first = next(iter(pq_src.records()))
    assert first.image_id == "img00" and first.label == "north" and first.meta == {"city": "c0"}
    hf = open_source(sources / "hf", id_column="name")
    assert hf.kind == "hf" and hf.count == N and hf.options["image_column"] == "image"
    assert next(iter(hf.records())).image_id == "img00"
    no_id = open_source(sources / "hf")
    assert next(iter(no_id.records())).image_id == "train/0" and "not re-ordered" in no_id.options["image_id"]


def test_scan_stores_webdataset_metadata_columns(sources, tmp_path):
    scan = audit.scan(sources / "shards" / "00001.tar", tmp_path / "one", **PROBE)
    images = scan.images().set_index("image_id")
    assert list(images.index) == [f"00001.tar/img0{i}" for i in range(4, 8)]
    assert images.loc["00001.tar/img05", "city"] == "c5" and images.loc["00001.tar/img05", "label"] == "south"


def test_bad_members_become_error_rows_and_the_scan_goes_on(tmp_path):
    images = _images()[:4]
    root = tmp_path / "bad"
    root.mkdir()
    with tarfile.open(root / "00000.tar", "w") as tar:
        _add(tar, "good.png", images[1][2])
        _add(tar, "corrupt.jpg", b"\xff\xd8 this is not a jpeg")
        _add(tar, "nopicture.json", b'{"city": "x"}')
        _add(tar, "also-good.jpg", images[0][2])
    whole = (root / "00000.tar").read_bytes()
    with tarfile.open(root / "00001.tar", "w") as tar:
        for stem, _, data, ext in images:
            _add(tar, f"{stem}.{ext}", data)
    with tarfile.open(root / "00001.tar") as tar:
        second = tar.getmembers()[1]
    cut = (root / "00001.tar").read_bytes()
    (root / "00001.tar").write_bytes(cut[: second.offset_data + second.size // 2])  # cut off inside a member
    assert len(whole) > 0
    scan = audit.scan(f"{root}/{{00000..00002}}.tar", tmp_path / "scan", **PROBE)  # 00002 does not exist
    errors = scan.errors().set_index("image_id")
    assert "not an image" in errors.loc["00000.tar/corrupt", "reason"] or "corrupt" in errors.loc[
        "00000.tar/corrupt", "reason"]
    assert "no image member" in errors.loc["00000.tar/nopicture", "reason"]
    assert "cut off" in errors.loc["00001.tar#damaged", "reason"]
    assert "00002.tar#damaged" in errors.index and "unreadable" in errors.loc["00002.tar#damaged", "reason"]
    assert errors.loc["00000.tar/nopicture", "path"].endswith("00000.tar#nopicture")
    scanned = set(scan.images().image_id)
    assert {"00000.tar/good", "00000.tar/also-good"} <= scanned
    assert "00001.tar/img00" in scanned  # the sample before the cut is kept, the one it cut is an error
    assert "cut off" in errors.loc["00001.tar/img01", "reason"]
    again = audit.scan(f"{root}/{{00000..00002}}.tar", tmp_path / "scan", **PROBE)  # resume: nothing new
    assert len(again.images()) == len(scan.images()) and again.config["runs"][-1]["images"] == 0
    first, rerun = again.config["runs"]
    assert rerun["dataset_fingerprint"] == first["dataset_fingerprint"] is not None  # a run with nothing to do too
    assert rerun["dataset_images"] == first["dataset_images"] == rerun["skipped"]


def test_memory_filesystem_shards_and_manifest(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    images = _images()
    write_shards(tmp_path / "local", images)
    for p in sorted((tmp_path / "local").glob("*.tar")):
        fs.pipe(f"/audit-test/shards/{p.name}", p.read_bytes())
    for stem, _, data, ext in images[:3]:
        fs.pipe(f"/audit-test/photos/{stem}.{ext}", data)
    fs.pipe("/audit-test/m.csv", ("path,label\n" + "".join(f"photos/{s}.{e},{lab}\n" for s, lab, _, e in images[:3])
                                  + "photos/missing.png,x\n").encode())
    scan = audit.scan("memory://audit-test/shards/{00000..00001}.tar", tmp_path / "mem", **PROBE)
    assert len(scan.images()) == N and scan.errors().empty
    assert scan.config["source"]["location"] == "memory://audit-test/shards/{00000..00001}.tar"
    from_manifest = audit.scan("memory://audit-test/m.csv", tmp_path / "mem-manifest", **PROBE)
    assert sorted(from_manifest.images().image_id) == [f"photos/{s}.{e}" for s, _, _, e in images[:3]]
    (reason,) = from_manifest.errors().reason
    assert "cannot read remote object" in reason


def test_images_are_read_again_by_key_from_the_containers_that_hold_them(sources, tmp_path, monkeypatch):
    """audit.sources.access: a scan's images from every kind, remote shards and a dataset without an id column
    included; only the shards that hold wanted members are opened, and a key that is gone is a reason, not a
    crash."""
    import tarfile

    import fsspec

    from audit.sources import access

    want = {stem: data for stem, _, data, _ in _images()}

    def read_back(scan, ids=None):
        images = scan.images()
        if ids is not None:
            images = images[images.image_id.isin(ids)]
        got = access.SourceImages(scan.config["source"]).fetch(zip(images.image_id, images.path, strict=True))
        return {Path(i.split("/")[-1]).stem.split("#")[0]: f for i, f in got.items()}

    hf = audit.scan(sources / "hf", tmp_path / "hf", **PROBE)  # ids: split/row index
    assert sorted(hf.images().image_id)[0] == "train/0"
    rows = read_back(hf)
    assert {int(k): f.data for k, f in rows.items()} == {i: want[f"img{i:02d}"] for i in range(N)}
    parquet = audit.scan(sources / "bytes.parquet", tmp_path / "parquet", **PROBE)
    assert {k: f.data for k, f in read_back(parquet).items()} == want

    shards = audit.scan(sources / "shards", tmp_path / "shards", **PROBE)
    opened = []
    real_open = tarfile.open
    monkeypatch.setattr(access.tarfile, "open", lambda name=None, *a, **k: opened.append(name) or
                        real_open(name, *a, **k))
    one = read_back(shards, ["00001.tar/img05"])
    assert one["img05"].data == want["img05"] and [Path(o).name for o in opened] == ["00001.tar"]
    monkeypatch.setattr(access.tarfile, "open", real_open)

    fs = fsspec.filesystem("memory")
    for path in sorted((sources / "shards").glob("*.tar")):
        fs.pipe(f"/audit-access/{path.name}", path.read_bytes())
    remote = audit.scan("memory://audit-access/{00000..00001}.tar", tmp_path / "remote", **PROBE)
    assert {k: f.data for k, f in read_back(remote).items()} == want

    lost = access.SourceImages(shards.config["source"]).fetch([("x", f"{sources / 'shards' / '00000.tar'}#gone.jpg"),
                                                               ("y", str(sources / "shards" / "nope.tar") + "#a.jpg"),
                                                               ("z", "no-key")])
    assert "no such member" in lost["x"].error and "shard unreadable" in lost["y"].error
    assert "names no member" in lost["z"].error
    with pytest.raises(Exception, match="no such member"):
        access.open_fetched(lost["x"])


def test_source_choice(tmp_path, sources):
    assert detect(str(sources / "shards")) == "webdataset" and detect(str(sources / "hf")) == "hf"
    assert detect(str(sources / "bytes.parquet")) == "parquet" and detect(str(sources / "folder")) == "folder"
    assert detect("s3://bucket/shards/{000..009}.tar") == "webdataset"
    with pytest.raises(AuditError, match="pass --source webdataset, manifest, parquet, hf or folder"):
        detect("s3://bucket/data")
    with pytest.raises(AuditError, match="--image-column 'nope'"):
        open_source(sources / "bytes.parquet", kind="parquet", image_column="nope")
    with pytest.raises(AuditError, match="--source must be one of"):
        open_source(sources / "folder", kind="tfrecord")


def test_a_missing_extra_is_one_line_naming_the_install(monkeypatch, capsys, tmp_path):
    import builtins

    from audit.cli import main

    real = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *args, **kwargs)

    (tmp_path / "d").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "d" / "a.png")
    monkeypatch.setattr(builtins, "__import__", no_ray)
    code = main(["scan", str(tmp_path / "d"), "--out", str(tmp_path / "s"), "--engine", "ray", "--model",
                 "audit-tiny", "--pretrained", "none", "--words", "x", "--opinion", "probes", "-q"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and line == "audit: error: --engine ray needs the optional package ray: pip install 'clip-audit[ray]'"
