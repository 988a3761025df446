"""LLaVA image processor: CLIP's preprocessing plus what LLaVA needs around it.

- `image_aspect_ratio="square"`: CLIP's resize of the shortest edge + center crop (the paper).
- `image_aspect_ratio="pad"`: LLaVA-1.5's pad to a square with the mean color first, so nothing is cropped away.
- Safe loading of image files: a clear error naming the file when it is missing, corrupt, or larger than
  `max_image_pixels` (decompression bombs); EXIF orientation respected; every PIL mode converted to RGB with
  transparency composited on the mean color (not black).

This file is also shipped inside saved checkpoints as remote code, so it imports only from transformers and PIL.
"""

import io
import os
from typing import Literal

import numpy as np
from PIL import Image, ImageOps
from transformers.image_processing_utils import BatchFeature
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.processing_utils import ImagesKwargs

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # PIL's own warning threshold (~ 9459 x 9459)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")


class ImageLoadError(ValueError):
    """An image file that is missing, unreadable or too large; the message names the file."""


class LlavaImagesKwargs(ImagesKwargs, total=False):
    image_aspect_ratio: Literal["square", "pad"]
    max_image_pixels: int | None


def mean_color(image_mean) -> tuple[int, int, int]:
    """The normalisation mean as an 8-bit RGB color (the original's `tuple(int(x * 255) for x in mean)`)."""
    return tuple(int(x * 255) for x in image_mean)


def open_image(source, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Open and fully decode an image file (path or bytes), or fail with a message naming it."""
    name = "<bytes>" if isinstance(source, bytes) else os.fspath(source)
    if not isinstance(source, bytes) and not os.path.isfile(name):
        raise ImageLoadError(f"Image file not found: {name}")
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else name)
    except Image.DecompressionBombError as err:
        raise ImageLoadError(f"Image {name} is too large to open safely: {err}") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"Image {name} is not a readable image: {err}") from err
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageLoadError(
            f"Image {name} has {width} x {height} = {width * height:,} pixels, more than max_image_pixels="
            f"{max_pixels:,} (a guard against decompression bombs); raise max_image_pixels to accept it."
        )
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"Image {name} is corrupt or truncated: {err}") from err
    return image


def _is_local_path(source) -> bool:
    """A path-like, an existing file, or a string naming an image file (so a missing one is reported as such)."""
    if isinstance(source, os.PathLike):
        return True
    if not isinstance(source, str) or source.startswith(("http://", "https://", "data:")):
        return False
    return os.path.isfile(source) or source.lower().endswith(IMAGE_EXTENSIONS)


def to_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Upright RGB: EXIF orientation applied, 16-bit scaled to 8-bit, transparency composited on `background`."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values / 257.0  # 0..65535 -> 0..255
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        canvas = Image.new("RGB", image.size, background)
        canvas.paste(image, mask=image.getchannel("A"))
        return canvas
    return image.convert("RGB")


def pad_to_square(image: np.ndarray, background: tuple[int, ...]) -> np.ndarray:
    """Center `image [C, H, W]` on a square canvas of the background color (the original's `expand2square`)."""
    channels, height, width = image.shape
    if height == width:
        return image
    side = max(height, width)
    canvas = np.empty((channels, side, side), dtype=image.dtype)
    canvas[:] = np.asarray(background[:channels], dtype=image.dtype).reshape(channels, 1, 1)
    top, left = (side - height) // 2, (side - width) // 2
    canvas[:, top : top + height, left : left + width] = image
    return canvas


class TransformersLlavaImageProcessor(CLIPImageProcessorPil):
    """`CLIPImageProcessor` (PIL backend) + pad-to-square mode + safe file loading and color conversion."""

    valid_kwargs = LlavaImagesKwargs
    image_aspect_ratio = "square"
    max_image_pixels = DEFAULT_MAX_IMAGE_PIXELS
    model_input_names = ["pixel_values"]

    def __init__(self, **kwargs):
        if kwargs.get("image_aspect_ratio") not in (None, "square", "pad"):
            raise ValueError(
                f"image_aspect_ratio={kwargs['image_aspect_ratio']!r} is not supported; allowed: 'square' (CLIP "
                "center crop, the paper) or 'pad' (pad to square with the mean color, LLaVA-1.5)."
            )
        super().__init__(**kwargs)

    def fetch_images(self, image_url_or_urls):
        """Open file paths ourselves so errors name the file and bombs are refused; URLs and base64 as usual."""
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(item) for item in image_url_or_urls]
        if _is_local_path(image_url_or_urls):
            return open_image(image_url_or_urls, self.max_image_pixels)
        return super().fetch_images(image_url_or_urls)

    def process_image(self, image, *args, **kwargs):
        if isinstance(image, Image.Image):
            image = to_rgb(image, mean_color(self.image_mean))
        return super().process_image(image, *args, **kwargs)

    def _preprocess(self, images, *args, image_aspect_ratio=None, max_image_pixels=None, **kwargs) -> BatchFeature:
        mode = image_aspect_ratio or self.image_aspect_ratio
        if mode == "pad":
            mean = kwargs.get("image_mean") or self.image_mean
            images = [pad_to_square(image, mean_color(mean)) for image in images]
        return super()._preprocess(images, *args, **kwargs)

# Loaded as a checkpoint's remote code (`trust_remote_code=True`) on a machine where transformers-llava is
# installed: the installed package is used, so one process never mixes two versions of these classes.
if not __name__.startswith("transformers_llava."):
    try:
        from transformers_llava.image_processing_llava import TransformersLlavaImageProcessor  # noqa: F811
    except ImportError:
        pass


__all__ = ["TransformersLlavaImageProcessor", "ImageLoadError", "open_image", "to_rgb", "pad_to_square"]
