"""The same images stored as each source kind audit reads: an image folder, a manifest, WebDataset shards, a
Parquet file of image bytes and a Hugging Face dataset saved to disk; each with the label and the box."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pandas as pd

BOX = ("x0", "y0", "x1", "y1")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def stem(image_id: str) -> str:
    """The file's stem in any kind's image id (label/0001.png, 00000.tar/0001, 0001)."""
    return Path(image_id.split("/")[-1]).stem


def _read(manifest: Path):
    rows = pd.read_csv(manifest)
    return rows, [(stem(p), (manifest.parent / p).read_bytes(), p.rsplit(".", 1)[-1]) for p in rows.path]


def write_shards(manifest: Path, out: Path, per_shard: int = 16) -> Path:
    """The manifest's images as WebDataset shards in `out`: image, json (the box) and cls (the label) members."""
    rows, files = _read(manifest)
    out.mkdir(parents=True)
    for s in range(0, len(rows), per_shard):
        with tarfile.open(out / f"{s // per_shard:05d}.tar", "w") as tar:
            for k in range(s, min(s + per_shard, len(rows))):
                name, data, ext = files[k]
                _add(tar, f"{name}.{ext}", data)
                _add(tar, f"{name}.json", json.dumps({c: float(rows[c][k]) for c in BOX}).encode())
                _add(tar, f"{name}.cls", str(rows.label[k]).encode())
    return out


def write_kinds(manifest: Path, root: Path, per_shard: int = 16) -> dict[str, tuple[Path, dict]]:
    """kind -> (location, scan options) for the manifest's images (columns path, label and the box)."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows, files = _read(manifest)
    root.mkdir(parents=True, exist_ok=True)
    shards = write_shards(manifest, root / "shards", per_shard)
    columns = {"key": [f[0] for f in files], "image": [f[1] for f in files], "label": list(rows.label),
               **{c: list(rows[c]) for c in BOX}}
    pq.write_table(pa.table(columns), root / "images.parquet", row_group_size=max(1, len(rows) // 3))
    features = datasets.Features({"key": datasets.Value("string"), "image": datasets.Image(),
                                  "label": datasets.Value("string"), **{c: datasets.Value("float64") for c in BOX}})
    ds = datasets.Dataset.from_dict({**columns, "image": [{"bytes": f[1], "path": None} for f in files]},
                                    features=features)
    ds.save_to_disk(str(root / "hf"))
    return {"folder": (manifest.parent, {}), "manifest": (manifest, {}), "webdataset": (shards, {}),
            "parquet": (root / "images.parquet", {}), "hf": (root / "hf", {"id_column": "key"})}
