"""The original LLaVA data formats -> 🤗 datasets rows that TRL's `SFTTrainer` consumes.

    dataset, report = load_llava_json("llava_instruct_158k.json", image_folder="coco/train2017")
    dataset, report = load_captions("metadata.json", image_folder="cc3m", seed=0)     # stage 1: caption pairs
    dataset, report = drop_too_long(dataset, processor, max_length=2048)

A LLaVA record is `{id, image?, conversations: [{from: human|gpt, value}]}` (instruct-158K, the pretraining
`chat.json`, ScienceQA conversions, ...). Each becomes `{"id", "messages", "images"}`: chat messages with an
`{"type": "image"}` part per `<image>` (moved to the front of its turn, as the original did) and the images as
file paths, opened only when a batch is collated — 595K images are never decoded up front. Invalid samples
(missing image file, wrong role order, empty turn, more `<image>` than images) are skipped and reported, or fail
the load, by choice; every report line names the sample id.
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Literal

import datasets

from ..formats.stage1 import caption_pair, to_stage1_sample

IMAGE = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
OnInvalid = Literal["fail", "skip"]
logger = logging.getLogger(__name__)


@dataclass
class DataReport:
    """What a load kept and what it dropped, with the sample id and the reason for each drop."""

    kept: int = 0
    dropped: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"kept {self.kept} samples, dropped {len(self.dropped)}"]
        lines += [f"  {sample_id}: {reason}" for sample_id, reason in self.dropped[:20]]
        if len(self.dropped) > 20:
            lines.append(f"  ... and {len(self.dropped) - 20} more")
        return "\n".join(lines)


def record_images(record: dict, image_folder: str | None) -> list[str]:
    images = record.get("image") or []
    images = [images] if isinstance(images, str) else list(images)
    return [os.path.join(image_folder, name) if image_folder else name for name in images]


def check_record(record: dict, images: list[str]) -> str | None:
    """Why a record cannot be trained on, or None."""
    turns = record.get("conversations") or []
    if not turns:
        return "no conversation turns"
    for index, turn in enumerate(turns):
        role = ROLES.get(turn.get("from"))
        if role is None:
            return f"turn {index} has unknown speaker {turn.get('from')!r} (expected human or gpt)"
        expected = "user" if index % 2 == 0 else "assistant"
        if role != expected:
            return f"turn {index} is from {turn.get('from')!r} but roles must alternate human, gpt, human, ..."
        if not (turn.get("value") or "").strip():
            return f"turn {index} ({turn.get('from')}) is empty"
        if role == "assistant" and IMAGE in turn["value"]:
            return f"turn {index} (an answer) holds an {IMAGE} placeholder; images belong in human turns"
    if len(turns) % 2:
        return f"the conversation ends with a human turn (turn {len(turns) - 1}); nothing to learn from it"
    placeholders = sum(turn["value"].count(IMAGE) for turn in turns)
    if placeholders > len(images):
        return f"{placeholders} {IMAGE} placeholder(s) but {len(images)} image(s)"
    if 0 < placeholders < len(images):
        return f"{len(images)} image(s) but only {placeholders} {IMAGE} placeholder(s)"
    missing = [path for path in images if not os.path.isfile(path)]
    if missing:
        return f"image file not found: {missing[0]}"
    return None


def to_messages(turns: list[dict], n_images: int) -> list[dict]:
    """LLaVA turns -> chat messages; each turn's `<image>`s move to its front, as the original's preprocessing did.
    Images given without any placeholder open the first user turn."""
    without_placeholders = not any(IMAGE in turn["value"] for turn in turns)
    messages = []
    for index, turn in enumerate(turns):
        text = turn["value"]
        count = n_images if (index == 0 and without_placeholders) else text.count(IMAGE)
        parts = [{"type": "image", "text": None}] * count
        parts.append({"type": "text", "text": text.replace(IMAGE, "").strip() if count else text})
        messages.append({"role": ROLES[turn["from"]], "content": parts})
    return messages


def record_to_example(record: dict, image_folder: str | None = None) -> dict:
    """One LLaVA record -> `{"id", "messages", "images", "problem"}` (`problem` is None for a valid sample)."""
    images = record_images(record, image_folder)
    problem = check_record(record, images)
    messages = [] if problem else to_messages(record["conversations"], len(images))
    return {"id": str(record.get("id", "")), "messages": messages, "images": images, "problem": problem}


def _finish(dataset, on_invalid: OnInvalid, source: str):
    """Apply the invalid-sample policy; returns (dataset without the `problem` column, report)."""
    if isinstance(dataset, datasets.IterableDataset):
        # A JSON stream does not know its columns up front, so the map could not drop the source ones: without
        # this, the raw `image` (a bare file name) would reach TRL's collator, which prefers it over `images`.
        dataset = dataset.select_columns(["id", "messages", "images", "problem"])

        def keep(example):
            if example["problem"] and on_invalid == "fail":
                raise ValueError(f"{source}: sample {example['id']}: {example['problem']}")
            if example["problem"]:
                logger.warning(f"{source}: sample {example['id']} skipped: {example['problem']}")
            return example["problem"] is None
        return dataset.filter(keep).remove_columns("problem"), None
    problems = [(i, p) for i, p in zip(dataset["id"], dataset["problem"]) if p]
    report = DataReport(kept=len(dataset) - len(problems), dropped=problems)
    if problems and on_invalid == "fail":
        raise ValueError(f"{source}: {len(problems)} invalid sample(s) (on_invalid='skip' drops them):\n{report}")
    dataset = dataset.filter(lambda problem: problem is None, input_columns="problem") if problems else dataset
    return dataset.remove_columns("problem"), report


def _load_records(path, streaming: bool):
    return datasets.load_dataset("json", data_files=str(path), split="train", streaming=streaming)


def _map(dataset, function, **kwargs):
    """`dataset.map` that never reuses a cached result: the cache key does not see changes in the helpers the
    function calls, and these conversions are cheap next to reading the JSON (which datasets still caches)."""
    if not isinstance(dataset, datasets.IterableDataset):
        kwargs["load_from_cache_file"] = False
    return dataset.map(function, **kwargs)


def load_llava_json(path, image_folder=None, *, streaming: bool = False, on_invalid: OnInvalid = "fail"):
    """Load a LLaVA JSON/JSONL file; returns `(dataset, report)` (`report` is None when streaming: dropped samples
    are logged as they stream past — or raise, with `on_invalid="fail"`)."""
    records = _load_records(path, streaming)
    dataset = _map(records, record_to_example, fn_kwargs={"image_folder": image_folder},
                   remove_columns=list(records.column_names or []))
    return _finish(dataset, on_invalid, str(path))


def load_captions(path, image_folder=None, *, seed: int = 0, streaming: bool = False,
                  on_invalid: OnInvalid = "fail"):
    """Stage-1 data from `{id, image, caption}` records (e.g. CC3M `metadata.json`); returns `(dataset, report)`."""
    records = _load_records(path, streaming)
    # The question is one of the paper's brief ones (Table 11), drawn from (seed, id): independent of data order.
    dataset = _map(records, lambda r: record_to_example(to_stage1_sample(caption_pair(r), seed, "before"),
                                                        image_folder),
                   remove_columns=list(records.column_names or []))
    return _finish(dataset, on_invalid, str(path))


def sequence_length(messages: list[dict], n_images: int, processor) -> int:
    """Tokens a sample occupies once its images are expanded (BOS included), without decoding any image."""
    return len(processor.encode_conversation(messages, [None] * n_images).input_ids)


def drop_too_long(dataset, processor, max_length: int, *, on_too_long: Literal["drop", "fail"] = "drop"):
    """Remove samples longer than `max_length` (image tokens are never cut), or fail naming them."""
    with_length = _map(dataset, lambda ex: {"length": sequence_length(ex["messages"], len(ex["images"]), processor)})
    if isinstance(with_length, datasets.IterableDataset):
        def fits(example):
            if example["length"] > max_length and on_too_long == "fail":
                raise ValueError(f"sample {example['id']} is {example['length']} tokens, over max_length={max_length}")
            return example["length"] <= max_length
        return with_length.filter(fits).remove_columns("length"), None
    too_long = [(i, f"{n} tokens > max_length={max_length}")
                for i, n in zip(with_length["id"], with_length["length"]) if n > max_length]
    report = DataReport(kept=len(dataset) - len(too_long), dropped=too_long)
    if too_long and on_too_long == "fail":
        raise ValueError(f"{len(too_long)} sample(s) longer than max_length={max_length} (image tokens are never "
                         f"cut; on_too_long='drop' removes them):\n{report}")
    kept = with_length.filter(lambda n: n <= max_length, input_columns="length") if too_long else with_length
    return kept.remove_columns("length"), report


__all__ = ["load_llava_json", "load_captions", "drop_too_long", "record_to_example", "caption_pair",
           "sequence_length", "DataReport"]
