"""Each image's fingerprints, taken from its decoded pixels while the scan reads it: what finds copies later.

- `pixel_sha256`: SHA-256 of the oriented 8-bit RGB pixels and their size. Two files hold an exact copy when
  their pixels are equal, whatever the container: a PNG and its lossless WebP re-encode share it, a JPEG
  re-encode does not (its pixels changed).
- `phash`: the 64-bit DCT perceptual hash, imagehash's pHash bit for bit (32×32 greyscale, the 8×8 lowest
  frequencies of its DCT against their median), stable under re-encoding, resizing and small colour changes.
- `phash_mirror`: the same hash of the image flipped left to right, so that a mirrored copy is found by
  comparing one image's `phash` with the other's `phash_mirror` (a pHash alone never matches a flip).

An image without structure (a flat colour, a blank frame: its 32×32 greyscale varies by less than one grey level)
has no pHash (None): its bits would be rounding noise, equal for every flat image whatever its colour, and flat
images of different colours are not copies of each other.

Hashes are stored as signed 64-bit integers (Parquet has no unsigned type that every reader shares): the same
bits (analysis.duplicates.hamming counts the bits two of them differ in).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import scipy.fft
from PIL import Image

HASH_SIDE = 32  # imagehash.phash's own working size (hash_size 8 × highfreq_factor 4)


@dataclass(frozen=True)
class Fingerprint:
    pixel_sha256: str
    phash: int | None  # signed 64-bit view of the hash's bits; None for an image without structure
    phash_mirror: int | None


FLAT = 1.0  # grey levels (of 255): below this standard deviation of the 32×32 greyscale, an image has no pHash


def fingerprint(img: Image.Image) -> Fingerprint:
    """The fingerprints of an oriented RGB image (decode.open_rgb's output)."""
    digest = hashlib.sha256(f"{img.width}x{img.height}:".encode())
    digest.update(img.tobytes())
    # Pillow's reducing_gap shrinks a large photo by whole factors first: a 12-megapixel image costs 3 ms here
    # instead of 34 (the hash came out the same on the photographs tried).
    small = np.asarray(img.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS,
                                               reducing_gap=3.0), dtype=np.float64)
    if small.std() < FLAT:
        return Fingerprint(digest.hexdigest(), None, None)
    return Fingerprint(digest.hexdigest(), phash(small), phash(small[:, ::-1]))


def phash(small: np.ndarray) -> int:
    """imagehash.phash of a 32×32 greyscale array, as a signed 64-bit integer (tests/test_duplicates.py holds it
    equal to the library's on random images). The library's own call costs 0.33 ms, mostly scipy.fftpack's
    per-call overhead; scipy.fft's DCT-II (the same unnormalised transform) takes 0.01 ms, which matters at a
    million images."""
    low = scipy.fft.dct(scipy.fft.dct(small, axis=0), axis=1)[:8, :8]
    bits = np.packbits((low > np.median(low)).ravel())
    return int(np.frombuffer(bits.tobytes(), dtype=">i8")[0])

