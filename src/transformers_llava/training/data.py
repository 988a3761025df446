"""The original LLaVA data formats -> 🤗 datasets rows that TRL's `SFTTrainer` consumes.

    dataset, report = load_llava_json("llava_instruct_158k.json", image_folder="coco/train2017")
    dataset, report = load_captions("metadata.json", image_folder="cc3m", seed=0)     # stage 1: caption pairs
    dataset, report = drop_too_long(dataset, processor, max_length=2048)

A LLaVA record is `{id, image?, conversations: [{from: human|gpt, value}]}` (instruct-158K, the pretraining
`chat.json`, ScienceQA conversions, ...). Each becomes `{"id", "messages", "images"}`: chat messages with an
`{"type": "image"}` part per `<image>` (moved to the front of its turn, as the original did) and the images as
file paths, opened only when a batch is collated — 595K images are never decoded up front. Invalid samples
(missing image file, wrong role order, empty turn, more `<image>` than images) are skipped and reported, or fail
the load, by choice; every report line names the sample id. An image that exists but cannot be read (not an image,
cut short) is invalid too: its header and end are read at load, so training never meets it at step N or on resume.
A file that is not a JSON list of samples (empty, not UTF-8, cut short, a single object), or that leaves no valid
sample, is a `DataError` naming the file, and the line and column where known.
"""

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Literal

import datasets
from PIL import Image

from ..formats.stage1 import caption_pair, to_stage1_sample

IMAGE = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
OnInvalid = Literal["fail", "skip"]
logger = logging.getLogger(__name__)


class DataError(ValueError):
    """A data file, or the samples in it, that cannot be trained on; the message names the file."""


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
    for path in images:
        problem = image_problem(path)
        if problem:
            return problem
    return None


# How an image file of these formats ends: a file cut short lacks it (its header still opens).
END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}


def image_problem(path: str) -> str | None:
    """Why the image file at `path` cannot be decoded, found cheaply (its header and its last 4 KiB), or None."""
    try:
        with Image.open(path) as image:
            kind = image.format
    except Image.DecompressionBombError:
        return None  # large, not broken: the processor's own pixel limit decides when it is loaded
    except (OSError, SyntaxError, ValueError) as error:
        return f"image file cannot be read: {path} ({error})"
    marker = END_MARKERS.get(kind)
    if marker is not None:
        with open(path, "rb") as file:
            file.seek(max(0, os.path.getsize(path) - 4096))
            if marker not in file.read():
                return f"image file is cut short: {path} (a {kind} without its end marker)"
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
                raise DataError(f"{source}: sample {example['id']}: {example['problem']}")
            if example["problem"]:
                logger.warning(f"{source}: sample {example['id']} skipped: {example['problem']}")
            return example["problem"] is None
        return dataset.filter(keep).remove_columns("problem"), None
    problems = [(i, p) for i, p in zip(dataset["id"], dataset["problem"]) if p]
    report = DataReport(kept=len(dataset) - len(problems), dropped=problems)
    if problems and on_invalid == "fail":
        raise DataError(f"{source}: {len(problems)} invalid sample(s) (on_invalid='skip' drops them):\n{report}")
    if problems and report.kept == 0:
        first_id, first_reason = problems[0]
        raise DataError(f"{source}: 0 valid samples of {len(problems)}; first skipped: id {first_id}: {first_reason}"
                        f"\n{report}")
    dataset = dataset.filter(lambda problem: problem is None, input_columns="problem") if problems else dataset
    return dataset.remove_columns("problem"), report


def _position(text: str, index: int) -> str:
    line = text.count("\n", 0, index) + 1
    return f"line {line}, column {index - (text.rfind(chr(10), 0, index) + 1) + 1}"


def read_records(path) -> list[dict]:
    """A LLaVA JSON file (a list of samples) or JSON Lines file (one sample per line) as a list of dicts; a file
    that is none of these is a `DataError` naming it, and the line and column where known."""
    path = str(path)
    try:
        raw = open(path, "rb").read()
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror or error})") from None
    if not raw.strip():
        raise DataError(f"{path}: the file is empty ({len(raw)} bytes); expected a JSON list of samples")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise DataError(f"{path}: not UTF-8 text: byte 0x{raw[error.start]:02x} at byte {error.start} (line {line}); "
                        "LLaVA data files are UTF-8 JSON") from None
    del raw  # a 1 GB file: keep one copy of it, not two
    if path.endswith(".jsonl"):
        records = _json_lines(text, path)
    else:
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            if error.msg != "Extra data":
                reason = error.msg.removesuffix(" at").removesuffix(" starting")
                ending = text.rstrip()[-1]
                raise DataError(f"{path}: not valid JSON at {_position(text, error.pos)}: {reason}"
                                + (f" (the file ends in {ending!r}, not ']': cut short?)" if ending != "]" else "")
                                ) from None
            records = _json_lines(text, path)  # one object per line, under a .json name
    if isinstance(records, dict):
        raise DataError(f"{path}: a single JSON object (keys {', '.join(list(records)[:5])}), not a list of samples; "
                        "LLaVA data is a list: [{\"id\": ..., \"image\": ..., \"conversations\": [...]}, ...]")
    if not isinstance(records, list):
        raise DataError(f"{path}: a JSON {type(records).__name__}, not a list of samples")
    if not records:
        raise DataError(f"{path}: holds no samples (an empty list)")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{path}: sample {index} is a JSON {type(record).__name__}, not an object "
                            f"({json.dumps(record)[:60]})")
    return records


def _json_lines(text: str, path: str) -> list:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataError(f"{path}: line {number} is not valid JSON: {error.msg} at column {error.colno}"
                                ) from None
    return records


def _load_records(path, streaming: bool):
    if streaming:  # read as it streams; only what can be seen up front is checked here
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            raise DataError(f"{path}: " + ("the file is empty" if os.path.isfile(path) else "file not found"))
        return datasets.load_dataset("json", data_files=str(path), split="train", streaming=True)
    return read_records(path)


def _convert(records, function, source: str):
    """Each record through `function` (the map of a stream; a list of records becomes a Dataset of the results)."""
    if isinstance(records, datasets.IterableDataset):
        return records.map(function, remove_columns=list(records.column_names or []))
    from tqdm.auto import tqdm

    examples = [function(record) for record in tqdm(records, desc=f"Checking {os.path.basename(source)}",
                                                     unit=" samples", disable=len(records) < 1000)]
    return datasets.Dataset.from_list(examples)


def _map(dataset, function, **kwargs):
    """`dataset.map` that never reuses a cached result: the cache key does not see changes in the helpers the
    function calls, and these conversions are cheap."""
    if not isinstance(dataset, datasets.IterableDataset):
        kwargs["load_from_cache_file"] = False
    return dataset.map(function, **kwargs)


def load_llava_json(path, image_folder=None, *, streaming: bool = False, on_invalid: OnInvalid = "fail"):
    """Load a LLaVA JSON/JSONL file; returns `(dataset, report)` (`report` is None when streaming: dropped samples
    are logged as they stream past — or raise, with `on_invalid="fail"`)."""
    records = _load_records(path, streaming)
    dataset = _convert(records, lambda record: record_to_example(record, image_folder), str(path))
    return _finish(dataset, on_invalid, str(path))


def load_captions(path, image_folder=None, *, seed: int = 0, streaming: bool = False,
                  on_invalid: OnInvalid = "fail"):
    """Stage-1 data from `{id, image, caption}` records (e.g. CC3M `metadata.json`); returns `(dataset, report)`."""
    records = _load_records(path, streaming)
    # The question is one of the paper's brief ones (Table 11), drawn from (seed, id): independent of data order.
    dataset = _convert(records, lambda r: record_to_example(to_stage1_sample(caption_pair(r), seed, "before"),
                                                            image_folder), str(path))
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
                raise DataError(f"sample {example['id']} is {example['length']} tokens, over max_length={max_length}")
            return example["length"] <= max_length
        return with_length.filter(fits).remove_columns("length"), None
    too_long = [(i, f"{n} tokens > max_length={max_length}")
                for i, n in zip(with_length["id"], with_length["length"]) if n > max_length]
    report = DataReport(kept=len(dataset) - len(too_long), dropped=too_long)
    if too_long and on_too_long == "fail":
        raise DataError(f"{len(too_long)} sample(s) longer than max_length={max_length} (image tokens are never "
                         f"cut; on_too_long='drop' removes them):\n{report}")
    if too_long and report.kept == 0:
        raise DataError(f"all {len(too_long)} samples are over max_length={max_length} tokens (the shortest is "
                        f"{min(with_length['length'])}; image tokens are never cut): raise data.max_length")
    kept = with_length.filter(lambda n: n <= max_length, input_columns="length") if too_long else with_length
    return kept.remove_columns("length"), report


__all__ = ["DataError", "read_records", "image_problem", "load_llava_json", "load_captions", "drop_too_long",
           "record_to_example", "caption_pair",
           "sequence_length", "DataReport"]
