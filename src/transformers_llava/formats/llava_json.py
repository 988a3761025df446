"""LLaVA JSON: the conversation records of LLaVA-Instruct-150K, the stage-1 `chat.json` and ScienceQA conversions.

    write_llava_json(records, "train.json")      # atomically
    records = read_llava_json("train.json")      # each record checked for `id` and `conversations`

A sample is `{"id", "image", "conversations": [{"from": "human", "value": "<image>\\nQ1"}, {"from": "gpt",
"value": "A1"}, {"from": "human", "value": "Q2"}, ...]}`: `<image>` appears once, in the first human turn, before or
after the question (the released LLaVA-Instruct-150K has both; `image_position="random"` mixes them like it does,
reproducibly from the seed and the sample's key).
"""

import json
import os
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

IMAGE_TOKEN = "<image>"
ImagePosition = Literal["before", "after", "random"]
IMAGE_POSITIONS = ("before", "after", "random")


def keyed_rng(seed: int, *key: object) -> random.Random:
    """A random generator that depends only on the seed and the key (not on run order or concurrency)."""
    return random.Random(":".join(str(part) for part in (seed, *key)))


def place_image(question: str, position: ImagePosition, rng: random.Random) -> str:
    if position not in IMAGE_POSITIONS:
        raise ValueError(f"image position {position!r} is not one of {IMAGE_POSITIONS}")
    if position == "random":
        position = rng.choice(("before", "after"))
    return f"{IMAGE_TOKEN}\n{question}" if position == "before" else f"{question}\n{IMAGE_TOKEN}"


def to_conversations(pairs: list[tuple[str, str]], position: ImagePosition, rng: random.Random) -> list[dict]:
    """[(question, answer), ...] -> LLaVA turns with `<image>` in the first human turn."""
    if not pairs:
        raise ValueError("a conversation needs at least one question-answer pair")
    turns = []
    for number, (question, answer) in enumerate(pairs):
        turns.append({"from": "human", "value": place_image(question, position, rng) if number == 0 else question})
        turns.append({"from": "gpt", "value": answer})
    return turns


def read_llava_json(path: str | os.PathLike) -> list[dict]:
    """A LLaVA JSON file, each record checked for `id` and `conversations` (training streams large files with
    `training.data.load_llava_json` instead)."""
    records = json.loads(Path(path).read_text(encoding="utf-8"))
    for index, record in enumerate(records):
        if "id" not in record or not record.get("conversations"):
            raise ValueError(f"{path}: record {index} lacks `id` or `conversations`; is this a LLaVA JSON file?")
    return records


def write_llava_json(samples: Iterable[dict], path: str | os.PathLike) -> int:
    """Write samples as one LLaVA-Instruct JSON list (atomically: a temp file renamed over `path`); returns the
    number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    count = 0
    with open(temporary, "w", encoding="utf-8") as out:
        out.write("[")
        for count, sample in enumerate(samples, start=1):
            out.write(("\n" if count == 1 else ",\n") + json.dumps(sample, ensure_ascii=False))
        out.write("\n]\n" if count else "]\n")
    os.replace(temporary, path)
    return count
