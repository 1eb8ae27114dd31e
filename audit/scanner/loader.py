"""torch Dataset/DataLoader over source records: decode in workers, never raise on a bad file."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from audit.scanner.decode import DecodeError, box_in_frame, decode
from audit.scanner.options import DEFAULT_MAX_PIXELS
from audit.scanner.sources import Record
from audit.store.schema import DECODE, INTERNAL, INTERNAL_REASON


def to_model_input(pixels: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] from decode.fit -> normalized float32 [3, H, W] as the model expects."""
    x = (pixels.astype(np.float32) / 255.0 - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


class ImageDataset(Dataset):
    def __init__(self, records: list[Record], preprocess: dict, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.records = records
        self.preprocess = preprocess
        self.max_pixels = max_pixels
        self.mean = np.asarray(preprocess["mean"], dtype=np.float32)
        self.std = np.asarray(preprocess["std"], dtype=np.float32)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        rec = self.records[i]
        try:
            d = decode(rec.path, self.preprocess, self.max_pixels)
        except DecodeError as e:
            return {"index": i, "error": str(e), "stage": DECODE}
        except Exception as e:  # noqa: BLE001 - a decoder bug on one file must not end the scan
            return {"index": i, "error": f"{INTERNAL_REASON}: {type(e).__name__}: {str(e)[:160]}", "stage": INTERNAL}
        return {
            "index": i,
            "error": None,
            "pixels": to_model_input(d.pixels, self.mean, self.std),
            "width": d.width,
            "height": d.height,
            "box": box_in_frame(rec.box, d.frame),
        }


@dataclass
class Batch:
    indices: list[int]  # dataset indices of decoded images, in batch order
    pixels: torch.Tensor  # [n, 3, H, W] normalized
    sizes: list[tuple[int, int]]
    boxes: np.ndarray  # [n, 4] fractions of the model input, NaN without box
    errors: list[tuple[int, str, str]]  # (dataset index, reason, stage: schema.DECODE or schema.INTERNAL)

    def split(self, size: int) -> list[Batch]:
        """Consecutive pieces of at most `size` decoded images; decode errors go with the first piece."""
        n = len(self.indices)
        if n <= size:
            return [self]
        return [Batch(self.indices[lo:lo + size], self.pixels[lo:lo + size], self.sizes[lo:lo + size],
                      self.boxes[lo:lo + size], self.errors if lo == 0 else [])
                for lo in range(0, n, size)]

    def pin_memory(self) -> Batch:  # called by DataLoader(pin_memory=True) on a custom batch type
        if self.pixels.numel():
            self.pixels = self.pixels.pin_memory()
        return self


def collate(items: list[dict]) -> Batch:
    ok = [it for it in items if it["error"] is None]
    errors = [(it["index"], it["error"], it["stage"]) for it in items if it["error"] is not None]
    pixels = torch.stack([it["pixels"] for it in ok]) if ok else torch.zeros(0)
    boxes = np.array([it["box"] for it in ok], dtype=np.float64).reshape(len(ok), 4)
    return Batch([it["index"] for it in ok], pixels, [(it["width"], it["height"]) for it in ok], boxes, errors)


def make_loader(dataset: ImageDataset, batch_size: int, workers: int, pin_memory: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
                      pin_memory=pin_memory, persistent_workers=False,
                      prefetch_factor=2 if workers > 0 else None)
