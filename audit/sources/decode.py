"""Pillow decoding to the model's input: EXIF orientation, every mode to RGB, open_clip's geometry.

Kept free of torch DataLoader concerns so it can be tested (and reused by `explain`) on its own.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

from audit.sources.fingerprint import Fingerprint, fingerprint

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error row, not silently grey pixels

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}
_SRGB = ImageCms.createProfile("sRGB")
BACKGROUND = (255, 255, 255)  # transparent pixels are shown on white, as a browser would


class DecodeError(Exception):
    """The file cannot become an image; the message is the one-line reason stored in `errors`."""


@dataclass
class Decoded:
    pixels: np.ndarray  # [S, S, 3] uint8 model input before normalisation
    width: int  # oriented source size
    height: int
    frame: tuple[float, float, float, float]  # source rectangle (x0, y0, x1, y1) shown in the model input
    fingerprint: Fingerprint  # of the oriented RGB pixels, before they are fitted to the model's input


def open_rgb(path: str, max_pixels: int | None, data: bytes | None = None) -> Image.Image:
    """Open, orient and convert to 8-bit RGB; raises DecodeError with a readable reason. `data` holds the
    encoded image when the source carries bytes (a shard member, a Parquet cell); `path` then only names it."""
    if data is not None:
        if len(data) == 0:
            raise DecodeError("empty image (0 bytes)")
        return _open(io.BytesIO(data), max_pixels)
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        reason = "broken symlink" if os.path.islink(path) else "file not found"
        raise DecodeError(reason) from None
    except PermissionError:
        raise DecodeError("permission denied") from None
    except OSError as e:
        raise DecodeError(f"cannot stat file: {e.strerror or e}") from None
    if os.path.isdir(path):
        raise DecodeError("is a directory, not an image file")
    if size == 0:
        raise DecodeError("empty file (0 bytes)")
    try:
        f = open(path, "rb")
    except PermissionError:
        raise DecodeError("permission denied") from None
    except OSError as e:
        raise DecodeError(f"cannot open file: {e.strerror or e}") from None
    with f:
        return _open(f, max_pixels)


def _open(f, max_pixels: int | None) -> Image.Image:
    old_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(f)
            img.load()  # the first frame of an animation; decodes fully so truncation shows here
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DecodeError(f"image larger than --max-pixels {max_pixels} (decompression-bomb guard); "
                          "raise --max-pixels to scan it") from None
    except UnidentifiedImageError:
        raise DecodeError("not an image file Pillow can read") from None
    except PermissionError:
        raise DecodeError("permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DecodeError(f"corrupt or truncated image: {msg[:160]}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit


def _icc_to_srgb(img: Image.Image) -> Image.Image:
    icc = img.info.get("icc_profile")
    if not icc or img.mode not in ("RGB", "CMYK", "L"):
        return img.convert("RGB")
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(img, src, _SRGB, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        return img.convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit sRGB; alpha is composited on white, high bit depths are scaled, not clipped."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(img, dtype=np.float64)
        # 'I' holds 16-bit PNGs too; values above 255 can only mean a 16-bit range.
        scale = 257.0 if (mode != "I" or a.max(initial=0) > 255) else 1.0
        return Image.fromarray(np.clip(np.round(a / scale), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        a = np.nan_to_num(a)
        a = a * 255.0 if a.max(initial=0) <= 1.0 else a
        return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    elif mode == "1":
        img = img.convert("L")
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, BACKGROUND)
        background.paste(img.convert("RGB"), mask=img.getchannel("A"))
        return background
    if img.mode in ("RGB", "CMYK", "L"):
        return _icc_to_srgb(img)
    return img.convert("RGB")


def fit(img: Image.Image, size: int | tuple[int, int], resize_mode: str = "shortest",
        interpolation: str = "bicubic", fill: int = 0) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """open_clip's eval geometry: 'shortest' (resize + centre crop), 'longest' (resize + pad) or 'squash'.

    Returns the uint8 array and the source rectangle that the output shows (for mapping boxes). The crop
    happens inside the resize (Pillow's box=), so a 20000x20 strip never becomes a 224000x224 intermediate.
    """
    th, tw = (size, size) if isinstance(size, int) else tuple(size)
    w, h = img.size
    resample = _RESAMPLE.get(interpolation, Image.Resampling.BICUBIC)
    if resize_mode == "squash":
        out = img.resize((tw, th), resample)
        return np.asarray(out), (0.0, 0.0, float(w), float(h))
    if resize_mode == "longest":
        scale = min(tw / w, th / h)
        nw, nh = min(tw, max(1, round(w * scale))), min(th, max(1, round(h * scale)))
        canvas = Image.new("RGB", (tw, th), (fill, fill, fill))
        ox, oy = (tw - nw) // 2, (th - nh) // 2
        canvas.paste(img.resize((nw, nh), resample), (ox, oy))
        # The frame extends past the image where the canvas is padding. Each axis maps with the scale of
        # the rounded pasted size: a 5000x1 strip is pasted 1 pixel tall, 224 times its scale along x.
        sx, sy = nw / w, nh / h
        return np.asarray(canvas), (-ox / sx, -oy / sy, (tw - ox) / sx, (th - oy) / sy)
    frame = crop_frame(w, h, tw, th)
    return np.asarray(img.resize((tw, th), resample, box=frame)), frame


def crop_frame(w: int, h: int, tw: int, th: int) -> tuple[float, float, float, float]:
    """The centred source rectangle of aspect tw:th that 'shortest' shows, always inside the image.

    Which axis is cut is decided in integers, and the other axis is the whole side, exactly. The old frame
    computed that side as th / (th / h), which can land an ulp outside the image, and Pillow rejects such a
    box: 5.4% of photo sizes were dropped. The cut extent is below its side by at least 1/th of a pixel, far
    above rounding, and its ends are placed symmetrically.
    """
    if w * th == h * tw:
        return 0.0, 0.0, float(w), float(h)
    if w * th > h * tw:  # wider than the input: full height, cut the sides
        x0 = (w - h * tw / th) / 2
        return x0, 0.0, w - x0, float(h)
    y0 = (h - w * th / tw) / 2
    return 0.0, y0, float(w), h - y0


def decode(path: str, preprocess: dict, max_pixels: int | None, data: bytes | None = None) -> Decoded:
    img = open_rgb(path, max_pixels, data)
    pixels, frame = fit(img, preprocess["size"], preprocess.get("resize_mode", "shortest"),
                        preprocess.get("interpolation", "bicubic"), preprocess.get("fill_color", 0))
    return Decoded(pixels, img.width, img.height, frame, fingerprint(img))


def box_in_frame(box, frame) -> tuple[float, float, float, float]:
    """A source-pixel box as fractions of the model input, clipped to [0, 1]; NaNs when absent or outside."""
    nan = (float("nan"),) * 4
    if box is None:
        return nan
    fx0, fy0, fx1, fy1 = frame
    x0, y0, x1, y1 = box
    out = (
        min(max((x0 - fx0) / (fx1 - fx0), 0.0), 1.0), min(max((y0 - fy0) / (fy1 - fy0), 0.0), 1.0),
        min(max((x1 - fx0) / (fx1 - fx0), 0.0), 1.0), min(max((y1 - fy0) / (fy1 - fy0), 0.0), 1.0),
    )
    if out[2] <= out[0] or out[3] <= out[1]:
        return nan
    return out
