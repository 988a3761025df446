"""GPT-assisted instruction data (paper section 3): symbolic images -> chat requests -> parsed LLaVA conversations.

    images = read_caps_boxes_jsonl("caps_boxes_coco2014_val_80.jsonl")
    report = generate_instructions(images, OpenAIChatClient(), "out/", types=["conversation"], concurrency=8)

One task per (image, data type). Requests are built with `datasets.map` from pure functions; the API calls run on
threads (`run_concurrently`), and each result is appended to `out/records.jsonl` the moment it arrives — accepted
(with its conversation), rejected (with the reason the response did not parse) or failed (the client gave up).
Restarting with the same arguments skips every key already accepted or rejected, so a killed run finishes with no
duplicates and no gaps. At the end `out/llava_instruct.json` (all types) and `out/<type>.json` are written from the
records in input order.
"""

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset

from ..chat_client import ChatClientError, ChatResult, TokenUsage, run_concurrently
from ..formats.instructions import load_instructions
from ..formats.llava_json import ImagePosition, keyed_rng, to_conversations, write_llava_json
from .parsing import ResponseRejected, parse_response
from .progress import datasets_progress
from .prompts import DATA_TYPES, build_messages, check_data_type, load_prompt_set
from ..record_store import RecordStore
from .symbolic import format_context

RECORDS_FILE, RUN_FILE, COMBINED_FILE = "records.jsonl", "run.json", "llava_instruct.json"
FINISHED = ("ok", "rejected")  # statuses a restart does not redo ("failed" is retried)


def task_key(image_id: str, data_type: str) -> str:
    return f"{image_id}/{data_type}"


def expand_to_tasks(batch: dict, indices: list[int], types: list[str]) -> dict:
    """Batched map: each image -> one task per data type (its chat messages are built when the task is sent)."""
    tasks = {"key": [], "index": [], "id": [], "image": [], "type": []}
    for row, index in enumerate(indices):
        for data_type in types:
            tasks["key"].append(task_key(batch["id"][row], data_type))
            tasks["index"].append(index)
            tasks["id"].append(batch["id"][row])
            tasks["image"].append(batch["image"][row])
            tasks["type"].append(data_type)
    return tasks


def to_record(task: dict, result: ChatResult, seed: int, image_position: ImagePosition) -> dict:
    """A task and its response -> an `ok` record with the LLaVA conversation, or a `rejected` one with the reason."""
    finish_reason = (result.raw.get("choices") or [{}])[0].get("finish_reason")
    record = {name: task[name] for name in ("key", "index", "id", "image", "type")}
    record.update(response=result.text, finish_reason=finish_reason, prompt_tokens=result.prompt_tokens,
                  completion_tokens=result.completion_tokens, model=result.raw.get("model"))
    try:
        pairs = parse_response(task["type"], result.text, finish_reason)
    except ResponseRejected as rejection:
        return {**record, "status": "rejected", "reason": rejection.reason, "conversations": None}
    if task["type"] == "detail_description":  # the question is one of Table 12's, sampled per image
        pairs = [(keyed_rng(seed, task["id"], "detailed").choice(load_instructions()["detailed"]), pairs[0][1])]
    conversations = to_conversations(pairs, image_position, keyed_rng(seed, task["key"], "image"))
    return {**record, "status": "ok", "reason": None, "conversations": conversations}


def failed_record(task: dict, error: ChatClientError) -> dict:
    return {**{name: task[name] for name in ("key", "index", "id", "image", "type")},
            "status": "failed", "reason": str(error), "conversations": None}


def to_llava_sample(record: dict) -> dict:
    return {"id": record["id"], "image": record["image"], "conversations": record["conversations"]}


@dataclass
class RunReport:
    """What one run did (`this_run`) and what the records file now holds (`total`)."""

    this_run: Counter = field(default_factory=Counter)
    total: Counter = field(default_factory=Counter)
    rejections: Counter = field(default_factory=Counter)  # reason -> count, over the records file
    usage: TokenUsage = field(default_factory=TokenUsage)  # this run's calls
    total_usage: TokenUsage = field(default_factory=TokenUsage)  # every response in the records file
    written: dict = field(default_factory=dict)  # output file -> samples written
    dropped_bytes: int = 0  # a torn last line removed on start (the previous run was killed mid-write)


def check_run_settings(out_dir: Path, settings: dict) -> None:
    """Record the settings that shape the data in `run.json`; a restart with different ones is refused, since
    mixing them in one records file would make the output depend on when the run was interrupted."""
    path = out_dir / RUN_FILE
    if path.exists():
        previous = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(name for name in settings.keys() | previous.keys() if settings.get(name) != previous.get(name))
        if changed:
            details = "; ".join(f"{name}: {previous.get(name)!r} -> {settings.get(name)!r}" for name in changed)
            raise ValueError(f"{out_dir} holds a run with other settings ({details}); resume with the same settings "
                             f"or write to a new directory")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")


def export(store: RecordStore, out_dir: Path, types: list[str], report: RunReport) -> None:
    """Write the LLaVA-Instruct JSON files from the records (last accepted record per key, in input order)."""
    latest: dict[str, dict] = {}
    for record in store.records():
        latest[record["key"]] = record
        report.total_usage.prompt_tokens += record.get("prompt_tokens") or 0
        report.total_usage.completion_tokens += record.get("completion_tokens") or 0
        report.total_usage.requests += "response" in record
    report.total = Counter(record["status"] for record in latest.values())
    report.rejections = Counter(r["reason"] for r in latest.values() if r["status"] == "rejected")
    order = {data_type: n for n, data_type in enumerate(DATA_TYPES)}
    accepted = sorted((r for r in latest.values() if r["status"] == "ok"), key=lambda r: (r["index"], order[r["type"]]))
    report.written[COMBINED_FILE] = write_llava_json(map(to_llava_sample, accepted), out_dir / COMBINED_FILE)
    for data_type in types:
        samples = (to_llava_sample(r) for r in accepted if r["type"] == data_type)
        report.written[f"{data_type}.json"] = write_llava_json(samples, out_dir / f"{data_type}.json")


def generate_instructions(images: list[dict], client, out_dir: str | os.PathLike, *, types: list[str],
                          seed: int = 0, image_position: ImagePosition = "random", params: dict | None = None,
                          concurrency: int = 4, retry_rejected: bool = False, progress: bool = True) -> RunReport:
    """Query `client` for every (image, type) not yet in `out_dir/records.jsonl`, append each result as it arrives,
    then write the LLaVA-Instruct JSON files. `params` go to `client.complete` (temperature, max_tokens, ...)."""
    out_dir, params = Path(out_dir), dict(params or {})
    if not images:
        raise ValueError("no images to generate instruction data for")
    types = [check_data_type(t) for t in types]
    check_run_settings(out_dir, {"model": client.model_name, "params": params, "seed": seed,
                                 "image_position": image_position})
    report, usage_before = RunReport(), client.usage.snapshot()
    with RecordStore(out_dir / RECORDS_FILE) as store:
        report.dropped_bytes = store.dropped_bytes
        skip = set(FINISHED) - ({"rejected"} if retry_rejected else set())
        done = {record["key"] for record in store.records() if record["status"] in skip}
        with datasets_progress(enabled=False):  # instant steps; the run has its own bar
            tasks = Dataset.from_list(images).map(expand_to_tasks, batched=True, with_indices=True,
                                                  remove_columns=list(images[0]), fn_kwargs={"types": types})
            tasks = tasks.filter(lambda key: key not in done, input_columns="key")

        prompt_sets = {data_type: load_prompt_set(data_type) for data_type in types}

        def call(task: dict) -> ChatResult:
            prompt_set = prompt_sets[task["type"]]
            context = format_context(images[task["index"]], prompt_set.with_boxes)
            return client.complete(build_messages(prompt_set, context), **params)

        for outcome in run_concurrently(call, tasks, concurrency, desc="instruction data", progress=progress):
            if isinstance(outcome.error, ChatClientError):
                record = failed_record(outcome.item, outcome.error)
            elif outcome.error is not None:
                raise outcome.error
            else:
                record = to_record(outcome.item, outcome.result, seed, image_position)
            store.append(record)
            report.this_run[record["status"]] += 1
        report.usage = client.usage.since(usage_before)
        export(store, out_dir, types, report)
    return report
