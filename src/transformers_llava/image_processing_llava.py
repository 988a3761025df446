"""LLaVA image processor: transformers' `LlavaImageProcessorPil` (CLIP's preprocessing, pad to square with the mean
color) plus what this package needs around it.

- `image_aspect_ratio="square"`: CLIP's resize of the shortest edge + center crop (the paper).
- `image_aspect_ratio="pad"`: LLaVA-1.5's pad to a square with the mean color first, so nothing is cropped away
  (transformers' `do_pad`, set from the mode).
- Safe loading of image files: a clear error naming the file when it is missing or corrupt, or when preprocessing it
  would create an image larger than `max_image_pixels` (decompression bombs, and thin images whose shortest-edge
  resize or square canvas would be huge); the limit can be set on the processor or per call. EXIF orientation
  respected; every PIL mode converted to RGB with transparency composited on the mean color (not black).

This file is also shipped inside saved checkpoints as remote code, so it imports only from transformers and PIL.
"""

import contextlib
import io
import os
from typing import Literal

import numpy as np
from PIL import Image, ImageOps
from transformers.image_processing_utils import BatchFeature
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
from transformers.processing_utils import ImagesKwargs

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # PIL's own warning threshold (~ 9459 x 9459)
ORIENTATION_TAG, TRANSPOSED_ORIENTATIONS = 0x0112, (5, 6, 7, 8)  # EXIF orientations that swap width and height
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")


class ImageLoadError(ValueError):
    """An image file that is missing, unreadable or too large; the message names the file."""


class LlavaImagesKwargs(ImagesKwargs, total=False):
    image_aspect_ratio: Literal["square", "pad"]
    max_image_pixels: int | None


def mean_color(image_mean) -> tuple[int, int, int]:
    """The normalisation mean as an 8-bit RGB color (the original's `tuple(int(x * 255) for x in mean)`)."""
    return tuple(int(x * 255) for x in image_mean)


@contextlib.contextmanager
def _pil_limit_lifted():
    """PIL's own decompression-bomb check off while a header is read: `max_image_pixels` is the limit that applies,
    checked before anything is decoded, so a caller who raises it can open images over PIL's threshold."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _size_value(size, key: str):
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def preprocessing_sizes(width: int, height: int, size=None, pad: bool = False) -> list[tuple[str, int, int]]:
    """`(step, width, height)` of every image preprocessing creates before the center crop: the decoded file, the
    square canvas (pad mode) and the resized image. A thin image is small on disk but its shortest-edge resize (or
    square canvas) is not: 3000 x 1 resized to a shortest edge of 336 is 1,008,000 x 336."""
    steps = [("decoded", width, height)]
    if pad and width != height:
        width = height = max(width, height)
        steps.append(("padded to a square", width, height))
    shortest = _size_value(size, "shortest_edge") if size is not None else None
    if shortest:
        long = int(shortest * max(width, height) / min(width, height))
        long = min(long, _size_value(size, "longest_edge") or long)  # a longest_edge bounds the resize too
        width, height = (long, shortest) if width >= height else (shortest, long)
        steps.append((f"resized to a shortest edge of {shortest}", width, height))
    return steps


def check_pixels(name: str, width: int, height: int, max_pixels: int | None, size=None, pad: bool = False) -> None:
    """Refuse an image whose preprocessing would create more than `max_pixels` pixels at any step, naming it."""
    if max_pixels is None:
        return
    step, new_width, new_height = max(preprocessing_sizes(width, height, size, pad), key=lambda s: s[1] * s[2])
    pixels = new_width * new_height
    if pixels <= max_pixels:
        return
    accept = (f"pass max_image_pixels={pixels} (or more) to the processor call or the image processor to accept it")
    if step == "decoded":
        raise ImageLoadError(
            f"Image {name} has {width} x {height} = {pixels:,} pixels, more than max_image_pixels={max_pixels:,} "
            f"(a guard against decompression bombs); {accept}."
        )
    raise ImageLoadError(
        f"Image {name} is {width} x {height} pixels, but {step} it would be {new_width:,} x {new_height:,} = "
        f"{pixels:,} pixels, more than max_image_pixels={max_pixels:,} (a guard against images that exhaust memory "
        f"in preprocessing); crop it to a less extreme aspect ratio, or {accept}."
    )


def open_image(source, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, size=None, pad: bool = False) -> Image.Image:
    """Open and fully decode an image file (path or bytes), or fail with a message naming it.

    `max_pixels` bounds the decoded image and, given the processor's `size` and `pad`, every image its
    preprocessing will create; it replaces PIL's own decompression-bomb limit (None: no limit)."""
    name = "<bytes>" if isinstance(source, bytes) else os.fspath(source)
    if not isinstance(source, bytes) and not os.path.isfile(name):
        raise ImageLoadError(f"Image file not found: {name}")
    try:
        with _pil_limit_lifted():
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else name)
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"Image {name} is not a readable image: {err}") from err
    width, height = image.size
    if image.getexif().get(ORIENTATION_TAG) in TRANSPOSED_ORIENTATIONS:
        width, height = height, width  # exif_transpose turns it before preprocessing
    check_pixels(name, width, height, max_pixels, size, pad)
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


class TransformersLlavaImageProcessor(LlavaImageProcessorPil):
    """transformers' `LlavaImageProcessorPil` with `image_aspect_ratio` (square / pad), the pixel guard, safe file
    loading and color conversion."""

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
        self.do_pad = self.image_aspect_ratio == "pad"  # the mode decides; saved configs say the same

    def fetch_images(self, image_url_or_urls, max_image_pixels=..., size=..., pad=None):
        """Open file paths ourselves so errors name the file and oversized images are refused before decoding
        (limits: the processor's unless given); URLs and base64 as usual."""
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(item, max_image_pixels, size, pad) for item in image_url_or_urls]
        if _is_local_path(image_url_or_urls):
            return open_image(
                image_url_or_urls,
                self.max_image_pixels if max_image_pixels is ... else max_image_pixels,
                (self.size if self.do_resize else None) if size is ... else size,
                self.do_pad if pad is None else pad,
            )
        return super().fetch_images(image_url_or_urls)

    def _prepare_image_like_inputs(self, images, *args, **kwargs):
        """Open files with this call's limit and sizes (`max_image_pixels=` in a processor call applies here)."""
        images = self.fetch_images(images, kwargs.get("max_image_pixels", self.max_image_pixels),
                                   kwargs.get("size") if kwargs.get("do_resize") else None,
                                   self._pads(kwargs.get("image_aspect_ratio")))
        return super()._prepare_image_like_inputs(images, *args, **kwargs)

    def _pads(self, image_aspect_ratio) -> bool:
        return (image_aspect_ratio or self.image_aspect_ratio) == "pad"

    def process_image(self, image, *args, **kwargs):
        if isinstance(image, Image.Image):
            image = to_rgb(image, mean_color(kwargs.get("image_mean") or self.image_mean))
        return super().process_image(image, *args, **kwargs)

    def _preprocess(self, images, *args, image_aspect_ratio=None, max_image_pixels=..., **kwargs) -> BatchFeature:
        pad = self._pads(image_aspect_ratio)
        limit = self.max_image_pixels if max_image_pixels is ... else max_image_pixels
        size = kwargs.get("size") if kwargs.get("do_resize") else None
        for index, image in enumerate(images):  # images given as arrays or PIL images, not files
            check_pixels(f"{index} of the batch", image.shape[-1], image.shape[-2], limit, size, pad)
        kwargs["do_pad"] = pad
        return super()._preprocess(images, *args, **kwargs)


# Loaded as a checkpoint's remote code (`trust_remote_code=True`) on a machine where transformers-llava is
# installed: the installed package is used, so one process never mixes two versions of these classes.
if not __name__.startswith("transformers_llava."):
    try:
        from transformers_llava.image_processing_llava import TransformersLlavaImageProcessor  # noqa: F811
    except ImportError:
        pass


__all__ = ["TransformersLlavaImageProcessor", "ImageLoadError", "open_image", "to_rgb", "check_pixels"]
