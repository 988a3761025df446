"""Stage-1 (feature alignment) data: each image-caption pair becomes a single-turn instruction (paper section 4.2).

The human asks one of Table 11's brief-description questions, sampled per image from the seed; the answer is the
caption. The result is the LLaVA JSON the training code loads (the release's `LLaVA-CC3M-Pretrain-595K/chat.json`).

    count = build_stage1("cc3m_filtered.jsonl", "stage1.json", seed=0)
"""

import os

from .captions import caption_dataset
from .conversations import ImagePosition, keyed_rng, to_conversations, write_llava_json
from .prompts import load_instructions


def to_stage1_sample(pair: dict, seed: int, image_position: ImagePosition) -> dict:
    """`{"id", "image", "caption"}` -> `{"id", "image", "conversations": [brief question, caption]}`."""
    question = keyed_rng(seed, pair["id"], "brief").choice(load_instructions()["brief"])
    turns = to_conversations([(question, pair["caption"])], image_position, keyed_rng(seed, pair["id"], "image"))
    return {"id": pair["id"], "image": pair["image"], "conversations": turns}


def build_stage1(captions_path: str | os.PathLike, output_path: str | os.PathLike, *, seed: int = 0,
                 image_position: ImagePosition = "random", caption_field: str = "caption",
                 image_field: str = "image", cache_dir: str | None = None) -> int:
    """Convert a caption file (.jsonl / CC3M .tsv) to stage-1 LLaVA JSON; returns the number of samples.

    Pairs stream through an on-disk `datasets.Dataset`, so millions of captions fit in bounded memory."""
    pairs = caption_dataset(captions_path, caption_field=caption_field, image_field=image_field, cache_dir=cache_dir)
    samples = pairs.map(to_stage1_sample, fn_kwargs={"seed": seed, "image_position": image_position},
                        remove_columns=["caption"])
    return write_llava_json(iter(samples), output_path)
