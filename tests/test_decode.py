"""Every Pillow mode becomes correct 8-bit RGB; geometry follows open_clip's eval transform."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from audit.sources.decode import DecodeError, box_in_frame, fit, open_rgb, to_rgb


def px(img, xy=(0, 0)):
    return to_rgb(img).getpixel(xy)


def test_modes_convert_with_the_right_values():
    assert px(Image.new("L", (2, 2), 128)) == (128, 128, 128)
    assert px(Image.new("1", (2, 2), 1)) == (255, 255, 255)
    assert px(Image.new("I;16", (2, 2), 65535)) == (255, 255, 255)
    assert px(Image.new("I;16", (2, 2), 32896)) == (128, 128, 128)  # 128 * 257: scaled, not clipped to white
    assert px(Image.new("I", (2, 2), 32896)) == (128, 128, 128)  # 16-bit data in a 32-bit image
    assert px(Image.new("I", (2, 2), 100)) == (100, 100, 100)  # 8-bit range stays as it is
    assert px(Image.new("F", (2, 2), 0.5)) == (128, 128, 128)
    assert px(Image.new("F", (2, 2), 200.0)) == (200, 200, 200)
    assert px(Image.new("CMYK", (2, 2), (0, 0, 0, 0))) == (255, 255, 255)
    assert px(Image.new("CMYK", (2, 2), (0, 255, 255, 0))) == (255, 0, 0)


def test_alpha_is_composited_on_white():
    assert px(Image.new("RGBA", (2, 2), (255, 0, 0, 0))) == (255, 255, 255)
    assert px(Image.new("RGBA", (2, 2), (255, 0, 0, 255))) == (255, 0, 0)
    half = px(Image.new("RGBA", (2, 2), (0, 0, 0, 128)))
    assert all(126 <= c <= 128 for c in half)
    assert px(Image.new("LA", (2, 2), (0, 0))) == (255, 255, 255)


def test_palette_with_transparency():
    p = Image.new("P", (2, 2), 1)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    assert px(p) == (255, 0, 0)
    p.info["transparency"] = 1
    assert px(p) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    path = tmp_path / "o.jpg"
    img.save(path, exif=exif)
    assert open_rgb(str(path), None).size == (20, 40)


def test_animated_gif_takes_first_frame(tmp_path):
    frames = [Image.new("P", (8, 8), i) for i in (1, 2)]
    for f in frames:
        f.putpalette([0, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    path = tmp_path / "a.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert open_rgb(str(path), None).getpixel((0, 0)) == (0, 255, 0)


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"),
    (b"hello, not an image", "not an image"),
])
def test_unreadable_files_give_reasons(tmp_path, content, reason):
    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(DecodeError, match=reason):
        open_rgb(str(path), None)


def test_truncated_and_too_large(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    path = tmp_path / "t.png"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(DecodeError, match="truncated"):
        open_rgb(str(path), None)
    big = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(big)
    with pytest.raises(DecodeError, match="max-pixels"):
        open_rgb(str(big), 5000)
    assert open_rgb(str(big), 20000).size == (100, 100)


def test_missing_file(tmp_path):
    with pytest.raises(DecodeError, match="file not found"):
        open_rgb(str(tmp_path / "nope.png"), None)
    link = tmp_path / "dangling.png"
    link.symlink_to(tmp_path / "gone.png")
    with pytest.raises(DecodeError, match="broken symlink"):
        open_rgb(str(link), None)
    with pytest.raises(DecodeError, match="is a directory"):
        open_rgb(str(tmp_path), None)


def test_shortest_fit_matches_open_clip_transform():
    from open_clip import image_transform

    yy, xx = np.mgrid[0:90, 0:150]
    smooth = np.stack([xx * 255 / 150, yy * 255 / 90, 128 + 100 * np.sin(xx / 9.0)], -1)
    img = Image.fromarray(smooth.astype(np.uint8))
    mine, frame = fit(img, 64, "shortest", "bicubic")
    ref = image_transform(64, is_train=False, mean=(0, 0, 0), std=(1, 1, 1))(img)
    diff = np.abs(mine.astype(np.float64) / 255.0 - ref.permute(1, 2, 0).numpy())
    # Same crop and scale; open_clip rounds the crop to whole resized pixels, this crops exactly.
    assert diff.mean() < 0.01
    assert frame == pytest.approx((30.0, 0.0, 120.0, 90.0))


def test_squash_and_longest_frames():
    img = Image.new("RGB", (200, 100), (255, 0, 0))
    arr, frame = fit(img, 50, "squash")
    assert arr.shape == (50, 50, 3) and frame == (0.0, 0.0, 200.0, 100.0)
    arr, frame = fit(img, 50, "longest", fill=0)
    assert arr.shape == (50, 50, 3) and tuple(arr[0, 0]) == (0, 0, 0) and tuple(arr[25, 25]) == (255, 0, 0)
    assert frame == pytest.approx((0.0, -48.0, 200.0, 152.0))  # 25 rows pasted at row 12 of 50


def test_extreme_aspect_ratio_crops_inside_the_resize():
    img = Image.new("RGB", (20000, 20), (0, 0, 255))
    arr, frame = fit(img, 224)
    assert arr.shape == (224, 224, 3) and tuple(arr[100, 100]) == (0, 0, 255)
    assert frame == pytest.approx((9990.0, 0.0, 10010.0, 20.0))


def test_box_in_frame():
    frame = (30.0, 0.0, 120.0, 90.0)
    assert box_in_frame((30, 0, 75, 45), frame) == pytest.approx((0.0, 0.0, 0.5, 0.5))
    assert box_in_frame((0, 0, 60, 90), frame) == pytest.approx((0.0, 0.0, 1 / 3, 1.0))  # clipped at left
    assert all(np.isnan(box_in_frame((0, 0, 20, 20), frame)))  # outside the crop
    assert all(np.isnan(box_in_frame(None, frame)))


def test_loader_normalizes_with_model_mean_and_std(tmp_path, tiny):
    from audit.scanner.loader import ImageDataset
    from audit.sources import Record

    path = tmp_path / "grey.png"
    Image.new("RGB", (80, 60), (128, 128, 128)).save(path)
    ds = ImageDataset([Record("grey.png", str(path))], tiny.preprocess)
    item = ds[0]
    mean = torch.tensor(tiny.preprocess["mean"]).view(3, 1, 1)
    std = torch.tensor(tiny.preprocess["std"]).view(3, 1, 1)
    assert item["pixels"].shape == (3, 64, 64)
    assert torch.allclose(item["pixels"], (128 / 255 - mean) / std, atol=1e-5)
    assert (item["width"], item["height"]) == (80, 60)
