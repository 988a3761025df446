"""Images: every PIL mode becomes RGB (transparency on the mean color), EXIF orientation is respected, files that
are missing, corrupt or too large fail naming the file, and the two aspect modes (square crop, pad) behave."""

import io

import numpy as np
import pytest
from PIL import Image

from conftest import reference_path
from transformers_llava import ImageLoadError, LlavaImageProcessor
from transformers_llava.image_processing_llava import mean_color, open_image, to_rgb

MEAN = mean_color(LlavaImageProcessor.image_mean)  # (122, 116, 104)


def test_mean_color_matches_the_original_expand2square_fill():
    assert MEAN == (122, 116, 104)


@pytest.mark.parametrize("mode, make, expected", [
    ("L", lambda: Image.new("L", (4, 4), 200), (200, 200, 200)),
    ("P", lambda: Image.new("RGB", (4, 4), (10, 20, 30)).convert("P", palette=Image.Palette.ADAPTIVE), (10, 20, 30)),
    ("CMYK", lambda: Image.new("CMYK", (4, 4), (0, 0, 0, 0)), (255, 255, 255)),
    ("I;16", lambda: Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)), (255, 255, 255)),
    ("I;16 mid", lambda: Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16)), (128, 128, 128)),
    ("RGBA opaque", lambda: Image.new("RGBA", (4, 4), (1, 2, 3, 255)), (1, 2, 3)),
    ("RGBA clear", lambda: Image.new("RGBA", (4, 4), (0, 0, 0, 0)), MEAN),
    ("LA clear", lambda: Image.new("LA", (4, 4), (0, 0)), MEAN),
])
def test_modes_convert_to_rgb_with_alpha_on_the_mean_color(mode, make, expected):
    image = make()
    rgb = to_rgb(image, MEAN)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((1, 1)) == expected


def test_palette_with_transparency_composites_on_the_mean_color():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    image.info["transparency"] = 0
    assert to_rgb(image, MEAN).getpixel((0, 0)) == MEAN


def test_half_transparent_pixels_blend_with_the_mean_color():
    pixel = to_rgb(Image.new("RGBA", (2, 2), (255, 255, 255, 128)), MEAN).getpixel((0, 0))
    assert all(abs(p - (255 * 128 + m * 127) / 255) <= 1 for p, m in zip(pixel, MEAN))


def test_exif_orientation_is_respected(tmp_path):
    # A 40x20 image whose EXIF says "rotate 90": upright it is 20 wide, 40 tall, red on the (upright) top.
    image = Image.new("RGB", (40, 20), "blue")
    image.paste((255, 0, 0), (0, 0, 20, 20))  # left half red; after a 90 CW rotation (orientation 6) it is on top
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    upright = to_rgb(open_image(path), MEAN)
    assert upright.size == (20, 40)
    red, green, blue = upright.getpixel((10, 5))
    assert red > 200 and blue < 60


def test_missing_file_names_it(tmp_path):
    processor = LlavaImageProcessor()
    with pytest.raises(ImageLoadError, match=r"not found: .*nope\.jpg"):
        processor.fetch_images(str(tmp_path / "nope.jpg"))


def test_corrupt_and_truncated_files_name_them(tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image")
    with pytest.raises(ImageLoadError, match=r"garbage\.png is not a readable image"):
        open_image(garbage)
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, format="JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageLoadError, match=r"truncated\.jpg is corrupt or truncated"):
        open_image(truncated)


def test_pixel_limit_refuses_decompression_bombs(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(path)
    small = dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaImageProcessor(max_image_pixels=50_000, **small)
    with pytest.raises(ImageLoadError, match=r"big\.png has 300 x 200 = 60,000 pixels.*max_image_pixels=50,000"):
        processor(str(path))
    assert LlavaImageProcessor(max_image_pixels=60_000, **small)(str(path))["pixel_values"][0].shape == (3, 32, 32)


CLIP_336 = dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})


@pytest.mark.parametrize("mode, width, step", [
    ("square", 3000, r"resized to a shortest edge of 336 it would be 1,008,000 x 336 = 338,688,000 pixels"),
    ("pad", 20000, r"padded to a square it would be 20,000 x 20,000 = 400,000,000 pixels"),
])
def test_thin_images_are_refused_for_the_work_their_resize_would_do(tmp_path, mode, width, step):
    # A few hundred bytes on disk; at CLIP-336 the shortest-edge resize (or the square canvas) takes gigabytes.
    path = tmp_path / "thin.png"
    Image.new("RGB", (width, 1)).save(path)
    processor = LlavaImageProcessor(image_aspect_ratio=mode, **CLIP_336)
    with pytest.raises(ImageLoadError, match=rf"thin\.png is {width} x 1 pixels, but {step}, more than "
                                             r"max_image_pixels=89,478,485.*pass max_image_pixels="):
        processor(str(path))
    with pytest.raises(ImageLoadError, match=rf"Image 0 of the batch is {width} x 1 pixels, but {step}"):
        processor(Image.new("RGB", (width, 1)))  # an image already in memory: same guard, no file name to give


def test_max_image_pixels_in_the_call_is_honoured(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (64, 48)).save(path)
    processor = LlavaImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    with pytest.raises(ImageLoadError, match=r"photo\.png has 64 x 48 = 3,072 pixels, more than max_image_pixels=1,000"):
        processor(str(path), max_image_pixels=1_000)
    with pytest.raises(ImageLoadError, match=r"Image 0 of the batch has 64 x 48"):
        processor(Image.new("RGB", (64, 48)), max_image_pixels=1_000)
    tight = LlavaImageProcessor(max_image_pixels=1_000, size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    assert tight(str(path), max_image_pixels=4_000)["pixel_values"][0].shape == (3, 32, 32)  # raised for one call


def test_raising_the_limit_admits_images_over_pils_own_bomb_limit(tmp_path, monkeypatch):
    path = tmp_path / "large.png"
    Image.new("RGB", (100, 100), (9, 9, 9)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # PIL refuses > 2x this: 10,000 pixels is a "bomb" to it
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)
    small = dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    with pytest.raises(ImageLoadError, match=r"large\.png has 100 x 100 = 10,000 pixels.*max_image_pixels=5,000"):
        LlavaImageProcessor(max_image_pixels=5_000, **small)(str(path))
    out = LlavaImageProcessor(max_image_pixels=20_000, do_normalize=False, **small)(str(path), return_tensors="np")
    assert np.allclose(out["pixel_values"][0] * 255, 9, atol=0.5)
    assert Image.MAX_IMAGE_PIXELS == 1_000  # PIL's setting is left as it was


def test_pad_to_square_centers_the_image():
    image = np.zeros((3, 2, 4), dtype=np.uint8)
    padded = LlavaImageProcessor().pad_to_square(image, MEAN)
    assert padded.shape == (3, 4, 4)
    assert tuple(padded[:, 0, 0]) == MEAN and tuple(padded[:, 3, 3]) == MEAN
    assert not padded[:, 1:3, :].any()


def test_square_crops_and_pad_keeps_the_whole_image():
    # A wide image with red edges: center crop cuts the red away, pad keeps it (and adds mean-colored bands).
    image = Image.new("RGB", (96, 32), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 8, 32))
    kwargs = dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_normalize=False)
    square = LlavaImageProcessor(**kwargs)(image, return_tensors="np")["pixel_values"][0]
    padded = LlavaImageProcessor(image_aspect_ratio="pad", **kwargs)(image, return_tensors="np")["pixel_values"][0]
    assert square.shape == padded.shape == (3, 32, 32)
    assert square[0].max() < 0.1  # no red left after the center crop
    assert padded[0, 16, 0] > 0.8  # red stays at the left edge
    np.testing.assert_allclose(padded[:, 0, 16] * 255, MEAN, atol=2)  # top band is the mean color


def test_unknown_aspect_mode_is_refused():
    with pytest.raises(ValueError, match="image_aspect_ratio='stretch'"):
        LlavaImageProcessor(image_aspect_ratio="stretch")


def test_real_photo_through_the_processor():
    path = reference_path("llava", "images", "extreme_ironing.jpg")
    out = LlavaImageProcessor(image_aspect_ratio="pad")(str(path), return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, 224, 224)


@pytest.mark.parametrize("mode", ["square", "pad"])
def test_photos_preprocess_exactly_as_transformers_llava_image_processor(mode):
    from transformers import LlavaImageProcessorPil

    builtin = LlavaImageProcessorPil(do_pad=mode == "pad", **CLIP_336)
    ours = LlavaImageProcessor(image_aspect_ratio=mode, **CLIP_336)
    for name in ("extreme_ironing.jpg", "waterview.jpg"):
        image = Image.open(reference_path("llava", "images", name))
        np.testing.assert_array_equal(ours(image, return_tensors="np")["pixel_values"],
                                      builtin(image, return_tensors="np")["pixel_values"])
