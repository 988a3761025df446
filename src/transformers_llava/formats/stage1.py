"""Stage-1 (feature alignment) samples: an image-caption pair becomes a single-turn instruction (paper section 4.2).

    record = to_stage1_sample(caption_pair({"id": "1", "image": "1.jpg", "caption": "a red bus"}), seed=0,
                              image_position="before")
    # {"id": "1", "image": "1.jpg", "conversations": [{"from": "human", "value": "<image>\n<Table 11 question>"},
    #                                                  {"from": "gpt", "value": "a red bus"}]}

The question is one of Table 11's brief-description questions, drawn from (seed, id): independent of data order.
"""

from .instructions import load_instructions
from .llava_json import ImagePosition, keyed_rng, to_conversations


def caption_pair(record: dict) -> dict:
    """A stage-1 record (`{id, image, caption}`, or CC3M's `blip_caption`) in the form `to_stage1_sample` takes."""
    caption = record.get("caption") or record.get("blip_caption") or ""
    return {"id": str(record.get("id")), "image": record.get("image"), "caption": caption.strip()}


def to_stage1_sample(pair: dict, seed: int, image_position: ImagePosition) -> dict:
    """`{"id", "image", "caption"}` -> `{"id", "image", "conversations": [brief question, caption]}`."""
    question = keyed_rng(seed, pair["id"], "brief").choice(load_instructions()["brief"])
    turns = to_conversations([(question, pair["caption"])], image_position, keyed_rng(seed, pair["id"], "image"))
    return {"id": pair["id"], "image": pair["image"], "conversations": turns}
