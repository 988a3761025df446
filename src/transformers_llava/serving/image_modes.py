"""The web demo's "preprocess for non-square image" choice, as the original LLaVA demo offered it.

    square = prepare_image(image, "Pad", side=336, background=(122, 116, 104))

- "Default": the image as uploaded; the checkpoint's own `image_aspect_ratio` decides (square or pad).
- "Crop": CLIP's resize of the shortest edge to `side` and center crop — the processor's `square` mode.
- "Pad": centered on a square of the mean color — the processor's `pad` mode (the original's `expand2square`).
- "Resize": squashed to `side` x `side`, aspect ratio not kept — the original demo's third choice, which has no
  processor mode: it exists only here, as it did only in the original demo.

Every mode but "Default" returns a square image of `side` x `side`, which both processor modes then leave as it is
(padding a square adds nothing; resizing it to the crop size leaves nothing to crop). So the choice means the same
whatever the checkpoint's mode: Crop and Pad give exactly the pixel values the processor's own `square` and `pad` modes
give (tests pin it). Without `side` (a remote server, whose processor is not known here) the square stays at full
resolution (Crop takes the centered square, Pad pads, Resize squashes to the longer edge); the server resizes it.
"""

from PIL import Image

from ..image_processing_llava import mean_color, to_rgb

MODES = ("Default", "Crop", "Resize", "Pad")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's normalisation mean, the pad color of every LLaVA release


def prepare_image(image: Image.Image, mode: str, *, side: int | None = None,
                  background: tuple[int, int, int] = mean_color(CLIP_MEAN)) -> Image.Image:
    """`image` as `mode` makes it for the model; `side` is the processor's crop size when known."""
    if mode not in MODES:
        raise ValueError(f"image preprocessing mode {mode!r} is not one of {', '.join(MODES)}")
    if mode == "Default":
        return image
    image = to_rgb(image, background)  # as the processor would, so padding and compositing use the same color
    width, height = image.size
    if mode == "Pad":
        if width != height:
            canvas = Image.new("RGB", (max(width, height),) * 2, background)
            canvas.paste(image, ((canvas.width - width) // 2, (canvas.height - height) // 2))
            image = canvas
        # resized here as the processor would resize it, so what is sent is no larger than what the model sees
        return image.resize((side, side), Image.Resampling.BICUBIC) if side else image
    if mode == "Resize":
        target = side or max(width, height)
        return image.resize((target, target), Image.Resampling.BICUBIC)
    # Crop: the shortest edge to `side` (the longer one scaled as the processor scales it), then the centered square
    short = min(width, height)
    if side is not None:
        scale = side / short
        width, height = (side, int(height * scale)) if width <= height else (int(width * scale), side)
        image, short = image.resize((width, height), Image.Resampling.BICUBIC), side
    left, top = int((width - short) / 2), int((height - short) / 2)
    return image.crop((left, top, left + short, top + short))


def processor_geometry(processor) -> tuple[int, tuple[int, int, int]]:
    """(crop side, pad color) of a LLaVA processor, for `prepare_image`."""
    image_processor = processor.image_processor
    crop = image_processor.crop_size
    side = crop["height"] if isinstance(crop, dict) else crop.height
    return side, mean_color(image_processor.image_mean)


__all__ = ["MODES", "prepare_image", "processor_geometry"]
