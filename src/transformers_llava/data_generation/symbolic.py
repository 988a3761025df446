"""Symbolic image representations — what text-only GPT sees instead of the picture (paper section 3).

An image is `{"id", "image", "captions": [str, ...], "instances": [{"category", "bbox": [x1, y1, x2, y2]}]}` with
boxes normalised to 0..1 (top-left, bottom-right). Two sources:

    read_caps_boxes_jsonl("caps_boxes_coco2014_val_80.jsonl")       # the released format, one image per line
    read_coco("captions_train2014.json", "instances_train2014.json")  # COCO annotation files

`format_context(image, with_boxes)` renders one the way the released few-shot `NNN_caps.txt` files are written: the
captions one per line, then (for the types that use boxes) a blank line and `category: [x1, y1, x2, y2]` lines.
"""

import json
import os
from collections.abc import Iterator
from pathlib import Path

from ..record_store import iter_jsonl

CAPTIONS_PER_IMAGE = 5  # the paper's symbolic representation uses the five COCO captions
BOX_DECIMALS = 3  # as in the released caps files: `tie: [0.574, 0.298, 0.752, 0.704]`


def validate_image(image: dict, where: str) -> dict:
    """The image itself, or ValueError naming `where` and the field that is wrong."""
    for name, kind in (("id", str), ("image", str), ("captions", list), ("instances", list)):
        if not isinstance(image.get(name), kind):
            raise ValueError(f"{where}: field {name!r} should be {kind.__name__}, got {image.get(name)!r:.80}")
    if not image["captions"] or not all(isinstance(c, str) and c.strip() for c in image["captions"]):
        raise ValueError(f"{where}: 'captions' must be non-empty strings, got {image['captions']!r:.200}")
    for n, instance in enumerate(image["instances"]):
        well_formed = (isinstance(instance, dict) and isinstance(instance.get("category"), str)
                       and isinstance(instance.get("bbox"), list) and len(instance["bbox"]) == 4
                       and all(isinstance(v, (int, float)) for v in instance["bbox"]))
        if not well_formed:
            raise ValueError(f"{where}: instance {n} should be {{'category': str, 'bbox': [4 numbers]}}, "
                             f"got {instance!r:.120}")
        bbox = instance["bbox"]
        if not all(-0.01 <= v <= 1.01 for v in bbox):
            raise ValueError(f"{where}: instance {n} ({instance['category']}) bbox {bbox} is not normalised to 0..1")
    return image


def read_caps_boxes_jsonl(path: str | os.PathLike) -> list[dict]:
    """Images from a released `caps_boxes` JSONL file (`{id, image, captions, instances}` per line)."""
    images = []
    for number, record in iter_jsonl(path):
        record.setdefault("instances", [])
        record["id"] = str(record.get("id", ""))
        images.append(validate_image(record, f"{path} line {number}"))
    return images


def normalise_box(box: list[float], width: int, height: int) -> list[float]:
    """COCO `[x, y, w, h]` in pixels -> `[x1, y1, x2, y2]` in 0..1, rounded like the released files."""
    x, y, w, h = box
    corners = (x / width, y / height, (x + w) / width, (y + h) / height)
    return [round(min(max(v, 0.0), 1.0), BOX_DECIMALS) for v in corners]


def read_coco(captions_json: str | os.PathLike, instances_json: str | os.PathLike | None = None,
              max_captions: int = CAPTIONS_PER_IMAGE) -> list[dict]:
    """Images from COCO annotation files: captions (first `max_captions` per image) and, when given, instance boxes.

    Ids are the 12-digit zero-padded COCO image ids used by the LLaVA release; `image` is the file name.
    Images without captions are skipped."""
    captions = json.loads(Path(captions_json).read_text(encoding="utf-8"))
    files = {entry["id"]: entry for entry in captions["images"]}
    by_image: dict[int, list[str]] = {}
    for annotation in captions["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation["caption"].strip())
    boxes: dict[int, list[dict]] = {}
    if instances_json is not None:
        instances = json.loads(Path(instances_json).read_text(encoding="utf-8"))
        names = {category["id"]: category["name"] for category in instances["categories"]}
        files.update({entry["id"]: entry for entry in instances["images"] if entry["id"] not in files})
        for annotation in instances["annotations"]:
            entry = files[annotation["image_id"]]
            boxes.setdefault(annotation["image_id"], []).append({
                "category": names[annotation["category_id"]],
                "bbox": normalise_box(annotation["bbox"], entry["width"], entry["height"]),
            })
    images = []
    for image_id in sorted(by_image):
        image = {"id": f"{image_id:012d}", "image": files[image_id]["file_name"],
                 "captions": by_image[image_id][:max_captions], "instances": boxes.get(image_id, [])}
        images.append(validate_image(image, f"{captions_json} image {image_id}"))
    return images


def format_box(bbox: list[float]) -> str:
    return "[" + ", ".join(repr(float(v)) for v in bbox) + "]"


def format_context(image: dict, with_boxes: bool) -> str:
    """The symbolic image as the text of a user turn, in the released `NNN_caps.txt` layout."""
    text = "\n".join(caption.strip() for caption in image["captions"])
    if with_boxes and image["instances"]:
        text += "\n\n" + "\n".join(f"{i['category']}: {format_box(i['bbox'])}" for i in image["instances"])
    return text


def iter_images(caps_boxes: str | None = None, coco_captions: str | None = None,
                coco_instances: str | None = None, limit: int | None = None) -> Iterator[dict]:
    """The images of whichever source is given (a caps_boxes JSONL, or COCO captions [+ instances]), up to `limit`."""
    if (caps_boxes is None) == (coco_captions is None):
        raise ValueError("give exactly one image source: a caps_boxes JSONL or COCO captions (+ instances) JSON")
    images = read_caps_boxes_jsonl(caps_boxes) if caps_boxes else read_coco(coco_captions, coco_instances)
    yield from images[:limit]
