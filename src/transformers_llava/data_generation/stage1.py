"""Stage-1 (feature alignment) data: a caption file becomes single-turn instructions (paper section 4.2).

Each pair becomes `formats.stage1.to_stage1_sample`: one of Table 11's brief-description questions, sampled per
image from the seed, answered by the caption. The result is the LLaVA JSON the training code loads (the release's
`LLaVA-CC3M-Pretrain-595K/chat.json`).

    count = build_stage1("cc3m_filtered.jsonl", "stage1.json", seed=0)
"""

import os

from ..formats.llava_json import ImagePosition, write_llava_json
from ..formats.stage1 import to_stage1_sample
from .captions import caption_dataset


def build_stage1(captions_path: str | os.PathLike, output_path: str | os.PathLike, *, seed: int = 0,
                 image_position: ImagePosition = "random", caption_field: str = "caption",
                 image_field: str = "image", cache_dir: str | None = None) -> int:
    """Convert a caption file (.jsonl / CC3M .tsv) to stage-1 LLaVA JSON; returns the number of samples.

    Pairs stream through an on-disk `datasets.Dataset`, so millions of captions fit in bounded memory."""
    pairs = caption_dataset(captions_path, caption_field=caption_field, image_field=image_field, cache_dir=cache_dir)
    samples = pairs.map(to_stage1_sample, fn_kwargs={"seed": seed, "image_position": image_position},
                        remove_columns=["caption"])
    return write_llava_json(iter(samples), output_path)
