"""recipes.data.images.to_rgb: every PIL mode a decoder returns becomes correct 8-bit RGB (16-bit scaled, alpha
composited, CMYK/palette converted), and the datasets use it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from recipes.data.images import to_rgb


def _reopen(im: Image.Image, fmt: str = "PNG") -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    buf.seek(0)
    return Image.open(buf)


def test_16bit_grey_png_is_scaled_not_clipped():
    """Regression: PIL's convert("RGB") clips 16-bit grey to 255 (a 16-bit photo became ~all white)."""
    a = np.array([[0, 257 * 64, 257 * 128], [257 * 200, 65535, 1000]], np.uint16)
    im = _reopen(Image.fromarray(a))
    assert im.mode in ("I;16", "I")  # what the file decodes to
    out = np.asarray(to_rgb(im))
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], [[0, 64, 128], [200, 255, 4]])
    assert (out[..., 0] == out[..., 2]).all()
    np.testing.assert_array_equal(np.asarray(to_rgb(Image.fromarray(a.astype(np.int32))))[..., 0], out[..., 0])
    np.testing.assert_array_equal(np.asarray(to_rgb(Image.fromarray(a.astype(np.float32) / 65535)))[..., 1],
                                  np.rint(a / 65535 * 255))
    with pytest.raises(ValueError, match="only 16-bit data"):
        to_rgb(Image.fromarray(np.array([[70000]], np.int32)))


def test_alpha_palette_cmyk_and_other_modes_convert_properly():
    # palette with a transparent index: transparent pixels take the background, not the palette colour
    p = Image.new("P", (2, 1))
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    p.putpixel((1, 0), 1)
    p.info["transparency"] = 0
    np.testing.assert_array_equal(np.asarray(to_rgb(_reopen(p))), [[[0, 0, 0], [0, 255, 0]]])
    assert np.asarray(to_rgb(_reopen(p), background=(255, 255, 255)))[0, 0].tolist() == [255, 255, 255]
    # RGBA: opaque keeps its colour, transparent becomes the background, half transparent blends
    rgba = Image.fromarray(np.array([[[200, 100, 50, 255], [200, 100, 50, 0], [200, 100, 50, 128]]], np.uint8))
    np.testing.assert_allclose(np.asarray(to_rgb(_reopen(rgba)), float),
                               [[[200, 100, 50], [0, 0, 0], [100, 50, 25]]], atol=1)
    # LA (grey + alpha)
    la = Image.fromarray(np.array([[[180, 255], [180, 0]]], np.uint8), "LA")
    np.testing.assert_array_equal(np.asarray(to_rgb(_reopen(la))), [[[180] * 3, [0] * 3]])
    # CMYK: pure cyan / black ink
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putpixel((0, 0), (255, 0, 0, 0))
    cmyk.putpixel((1, 0), (0, 0, 0, 255))
    np.testing.assert_array_equal(np.asarray(to_rgb(_reopen(cmyk, "JPEG"))).astype(int) // 16,
                                  [[[0, 15, 15], [0, 0, 0]]])
    # 1-bit, grey, YCbCr all become 3-channel uint8
    for im in (Image.new("1", (2, 2), 1), Image.new("L", (2, 2), 77), Image.new("RGB", (2, 2), (9, 8, 7))):
        out = to_rgb(_reopen(im))
        assert out.mode == "RGB" and out.size == (2, 2)
    assert np.asarray(to_rgb(Image.new("1", (1, 1), 1))).tolist() == [[[255, 255, 255]]]


def test_image_folder_reads_16bit_png_like_its_8bit_twin(tmp_path):
    from recipes.data import ImageFolderData

    v8 = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))
    for split in ("train", "val"):
        d = tmp_path / split / "a"
        d.mkdir(parents=True)
        Image.fromarray(v8).save(d / "8bit.png")
        Image.fromarray(v8.astype(np.uint16) * 257).save(d / "16bit.png")
    dm = ImageFolderData(root=str(tmp_path), img_size=16, batch_size=2, num_workers=0)
    dm.setup("fit")
    x, _ = next(iter(dm.val_dataloader()))
    names = [p.rsplit("/", 1)[-1] for p, _ in dm.val_set.items]
    i8, i16 = names.index("8bit.png"), names.index("16bit.png")
    assert float((x[i8] - x[i16]).abs().max()) < 1e-5 and float(x[i16].std()) > 0.5
    assert dm.skip_counter.value == 0
