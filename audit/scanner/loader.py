"""torch Datasets over source records: decode in workers, never raise on a bad file.

`StreamDataset` is what a scan uses: it streams a source shard by shard (worker k of n takes shards k, k+n, ...,
or every n-th record when there are fewer shards than workers), skips the ids already done, and decodes
the rest, so no process holds the dataset's records. Batches carry their own records and the ids they skipped.
`ImageDataset` decodes a list of records by index (tests, benchmarks).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from audit.scanner.options import DEFAULT_MAX_PIXELS
from audit.sources import Record, Source
from audit.sources.decode import DecodeError, box_in_frame, decode
from audit.sources.fingerprint import Fingerprint
from audit.sources.remote import is_url, read_bytes
from audit.store.schema import DECODE, INTERNAL, INTERNAL_REASON

SKIPPED_PER_ITEM = 4096  # skipped ids travel to the main process in lists of this many


def to_model_input(pixels: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] from decode.fit -> normalized float32 [3, H, W] as the model expects."""
    x = (pixels.astype(np.float32) / 255.0 - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


class Decoder:
    """One record -> one loader item: pixels, or the reason it cannot be read (stage decode or internal)."""

    def __init__(self, preprocess: dict, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.preprocess = preprocess
        self.max_pixels = max_pixels
        self.mean = np.asarray(preprocess["mean"], dtype=np.float32)
        self.std = np.asarray(preprocess["std"], dtype=np.float32)

    def __call__(self, rec: Record, index: int) -> dict:
        item = {"index": index, "record": rec.without_data(), "error": None, "stage": None}
        if rec.error is not None:
            return {**item, "error": rec.error, "stage": DECODE}
        try:
            data = rec.data
            if data is None and is_url(rec.path):
                try:
                    data = read_bytes(rec.path)
                except Exception as e:  # noqa: BLE001 - any failure of a remote read is the object's
                    raise DecodeError(f"cannot read remote object: {type(e).__name__}: {str(e)[:160]}") from None
            d = decode(rec.path, self.preprocess, self.max_pixels, data)
        except DecodeError as e:
            return {**item, "error": str(e), "stage": DECODE}
        except Exception as e:  # noqa: BLE001 - a decoder bug on one file must not end the scan
            return {**item, "error": f"{INTERNAL_REASON}: {type(e).__name__}: {str(e)[:160]}", "stage": INTERNAL}
        return {**item, "pixels": to_model_input(d.pixels, self.mean, self.std), "width": d.width,
                "height": d.height, "box": box_in_frame(rec.box, d.frame), "fingerprint": d.fingerprint}


class ImageDataset(Dataset):
    def __init__(self, records: list[Record], preprocess: dict, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.records = records
        self.decoder = Decoder(preprocess, max_pixels)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        return self.decoder(self.records[i], i)


class StreamDataset(IterableDataset):
    def __init__(self, source: Source, done: set[str], preprocess: dict,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, taken: frozenset[str] = frozenset()):
        self.source = source
        self.done = done
        self.taken = taken  # ids the scan read before the stream (its first pass): passed over, not "skipped"
        self.decoder = Decoder(preprocess, max_pixels)

    def _mine(self) -> Iterator[Record]:
        info = get_worker_info()
        k, n = (info.id, info.num_workers) if info is not None else (0, 1)
        shards = self.source.shards
        if len(shards) >= n:
            for shard in shards[k::n]:
                yield from shard.records()
        else:
            for i, rec in enumerate(self.source.records()):
                if i % n == k:
                    yield rec

    def __iter__(self) -> Iterator[dict]:
        skipped: list[str] = []
        index = 0
        for rec in self._mine():
            if rec.image_id in self.taken:
                continue
            if rec.image_id in self.done:
                skipped.append(rec.image_id)
                if len(skipped) >= SKIPPED_PER_ITEM:
                    yield {"skipped": skipped}
                    skipped = []
                continue
            yield self.decoder(rec, index)
            index += 1
        if skipped:
            yield {"skipped": skipped}


@dataclass
class Batch:
    indices: list[int]  # positions of the decoded images in their worker's stream, in batch order
    pixels: torch.Tensor  # [n, 3, H, W] normalized
    sizes: list[tuple[int, int]]
    boxes: np.ndarray  # [n, 4] fractions of the model input, NaN without box
    errors: list[tuple[int, str, str]]  # (index, reason, stage: schema.DECODE or schema.INTERNAL)
    records: list[Record] = field(default_factory=list)  # of the decoded images, as indices
    error_records: list[Record] = field(default_factory=list)  # of the errors, as errors
    skipped: list[str] = field(default_factory=list)  # ids already done, seen by the stream and passed over
    fingerprints: list[Fingerprint] = field(default_factory=list)  # of the decoded images, as indices

    def split(self, size: int) -> list[Batch]:
        """Consecutive pieces of at most `size` decoded images; decode errors go with the first piece."""
        n = len(self.indices)
        if n <= size:
            return [self]
        return [Batch(self.indices[lo:lo + size], self.pixels[lo:lo + size], self.sizes[lo:lo + size],
                      self.boxes[lo:lo + size], self.errors if lo == 0 else [], self.records[lo:lo + size],
                      self.error_records if lo == 0 else [], self.skipped if lo == 0 else [],
                      self.fingerprints[lo:lo + size])
                for lo in range(0, n, size)]

    def pin_memory(self) -> Batch:  # called by DataLoader(pin_memory=True) on a custom batch type
        if self.pixels.numel():
            self.pixels = self.pixels.pin_memory()
        return self


def collate(items: list[dict]) -> Batch:
    skipped = [i for it in items if "skipped" in it for i in it["skipped"]]
    items = [it for it in items if "skipped" not in it]
    ok = [it for it in items if it["error"] is None]
    bad = [it for it in items if it["error"] is not None]
    pixels = torch.stack([it["pixels"] for it in ok]) if ok else torch.zeros(0)
    boxes = np.array([it["box"] for it in ok], dtype=np.float64).reshape(len(ok), 4)
    return Batch([it["index"] for it in ok], pixels, [(it["width"], it["height"]) for it in ok], boxes,
                 [(it["index"], it["error"], it["stage"]) for it in bad], [it["record"] for it in ok],
                 [it["record"] for it in bad], skipped, [it["fingerprint"] for it in ok])


def make_loader(dataset: Dataset, batch_size: int, workers: int, pin_memory: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
                      pin_memory=pin_memory, persistent_workers=False,
                      prefetch_factor=2 if workers > 0 else None)
