"""Instruction-data runs end to end: the real HTTP client against tests/openai_server.py on the released caps_boxes
file, with injected faults, rejected and failed responses, a `kill -9` in the middle of a run and its resume, the
CLI, and the local transformers backend.

    python -m pytest tests/test_data_generation_run.py -q
"""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import reference_path
from openai_server import Garbage, Malformed, OpenAIServer, Slow, Status, llava_format_responder
from tiny_chat_model import build_tiny_chat_model

from transformers_llava.chat_client import OpenAIChatClient, TransformersChatClient
from transformers_llava.data_generation.cli import main
from transformers_llava.data_generation.instruct import generate_instructions
from transformers_llava.data_generation.prompts import DATA_TYPES, build_messages, load_prompt_set
from transformers_llava.formats.instructions import load_instructions
from transformers_llava.data_generation.symbolic import format_context, read_caps_boxes_jsonl

SOURCE = Path(__file__).resolve().parents[1] / "src"
TYPES = list(DATA_TYPES)


@pytest.fixture(scope="module")
def caps_boxes() -> Path:
    return reference_path("llava", "llava_bench_coco", "caps_boxes_coco2014_val_80.jsonl")


def request_key(request, images: list[dict]) -> str:
    """Which (image, type) a recorded request asks about, read back from its messages."""
    system, query = request.body["messages"][0]["content"], request.body["messages"][-1]["content"]
    data_type = next(t for t in TYPES if load_prompt_set(t).system == system)
    image = next(i for i in images if format_context(i, DATA_TYPES[data_type]) == query)
    return f"{image['id']}/{data_type}"


def read_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


def client_for(server, **kwargs) -> OpenAIChatClient:
    return OpenAIChatClient(base_url=server.base_url, model="gpt-test",
                            **{"timeout": 5.0, **kwargs})


def test_run_builds_the_paper_prompts_and_survives_faults(caps_boxes, tmp_path):
    images = read_caps_boxes_jsonl(caps_boxes)[:5]
    with OpenAIServer(llava_format_responder) as server:
        faults = [Status(429, retry_after=0), Status(500), Garbage(), Malformed(), Slow(3.0)]
        server.inject(*faults)
        report = generate_instructions(images, client_for(server, timeout=1.0), tmp_path, types=TYPES,
                                       params={"temperature": 0.2, "max_tokens": 512}, concurrency=3,
                                       progress=False)
        requests = list(server.requests)
    assert report.this_run == Counter(ok=15) and report.total == Counter(ok=15)
    assert len(requests) == 15 + len(faults)
    by_key = {request_key(r, images): r.body for r in requests}
    assert len(by_key) == 15
    first = images[0]
    body = by_key[f"{first['id']}/complex_reasoning"]
    assert body["messages"] == build_messages(load_prompt_set("complex_reasoning"), format_context(first, True))
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("gpt-test", 0.2, 512)
    assert by_key[f"{first['id']}/conversation"]["messages"][-1]["content"] == "\n".join(first["captions"])

    combined = json.loads((tmp_path / "llava_instruct.json").read_text())
    assert [s["id"] for s in combined] == [i["id"] for i in images for _ in TYPES]  # input order, then type
    for sample in combined:
        human = [t["value"] for t in sample["conversations"] if t["from"] == "human"]
        assert sum(v.count("<image>") for v in human) == 1 and "<image>" in human[0]
    details = json.loads((tmp_path / "detail_description.json").read_text())
    assert [s["id"] for s in details] == [i["id"] for i in images]
    for sample in details:
        question = sample["conversations"][0]["value"].replace("<image>", "").strip()
        assert question in load_instructions()["detailed"]
    assert report.usage.requests == 15 and report.total_usage.prompt_tokens == report.usage.prompt_tokens > 0


def test_rejected_responses_are_reported_and_not_asked_again(caps_boxes, tmp_path):
    images = read_caps_boxes_jsonl(caps_boxes)[:3]
    unlucky = f"{images[1]['id']}/conversation"

    def responder(request):
        if request_key(request, images) == unlucky:
            return "I'm sorry, I can't describe images."
        return llava_format_responder(request)

    with OpenAIServer(responder) as server:
        client = client_for(server)  # one client for the three runs: each report counts only its own calls
        report = generate_instructions(images, client, tmp_path, types=TYPES, progress=False)
        assert report.total == Counter(ok=8, rejected=1) and report.usage.requests == 9
        assert report.rejections == Counter({"""block 1 ("I'm sorry, I can't describe images.") is neither """
                                             """'Question:' nor 'Answer:'""": 1})
        rejected = [r for r in read_records(tmp_path) if r["status"] == "rejected"]
        assert [r["key"] for r in rejected] == [unlucky]
        assert rejected[0]["response"] == "I'm sorry, I can't describe images."
        assert len(json.loads((tmp_path / "conversation.json").read_text())) == 2

        again = generate_instructions(images, client, tmp_path, types=TYPES, progress=False)
        assert sum(again.this_run.values()) == 0 and len(server.requests) == 9 and again.usage.requests == 0

        server.responder = llava_format_responder
        retried = generate_instructions(images, client, tmp_path, types=TYPES, retry_rejected=True, progress=False)
        assert retried.this_run == Counter(ok=1) and retried.total == Counter(ok=9) and len(server.requests) == 10
        assert retried.usage.requests == 1 and retried.total_usage.requests == 10  # the rejected response too
    assert len(json.loads((tmp_path / "llava_instruct.json").read_text())) == 9


def cli_args(caps_boxes: Path, out: Path, server, *extra: str) -> list[str]:
    return ["instruct", "--caps-boxes", str(caps_boxes), "--out", str(out), "--base-url", server.base_url,
            "--model", "gpt-test", "--no-progress", *extra]


def test_cli_reports_failures_then_finishes_on_rerun(caps_boxes, tmp_path, capsys):
    images = read_caps_boxes_jsonl(caps_boxes)[:4]
    down = {images[2]["id"]}

    def responder(request):
        if request_key(request, images).split("/")[0] in down:
            return Status(503, body='{"error": "overloaded"}')
        return llava_format_responder(request)

    with OpenAIServer(responder) as server:
        args = cli_args(caps_boxes, tmp_path, server, "--limit", "4", "--max-retries", "1", "--types",
                        "conversation", "complex_reasoning", "--prompt-price", "30", "--completion-price", "60")
        assert main(args) == 1
        captured = capsys.readouterr()
        assert "this run:    8 tasks: 6 ok, 2 failed" in captured.out
        assert "2 requests failed for good; run the same command again" in captured.err
        failed = [r for r in read_records(tmp_path) if r["status"] == "failed"]
        assert len(failed) == 2 and all("after 2 attempts; last: HTTP 503" in r["reason"] for r in failed)

        down.clear()
        assert main(args) == 0
        out = capsys.readouterr().out
        assert "this run:    2 tasks: 2 ok" in out and "all records: 8 tasks: 8 ok" in out
        records = [r for r in read_records(tmp_path) if r["status"] == "ok"]
        prompt = sum(r["prompt_tokens"] for r in records)
        completion = sum(r["completion_tokens"] for r in records)
        cost = (prompt * 30 + completion * 60) / 1e6
        assert (f"tokens all records: 8 requests, {prompt:,} prompt + {completion:,} completion tokens, "
                f"estimated cost {cost:.4f}") in out
        assert len(server.requests) == 6 + 2 * 2 + 2

        assert main(cli_args(caps_boxes, tmp_path, server, "--limit", "4", "--seed", "1")) == 2
        assert "holds a run with other settings (seed: 0 -> 1" in capsys.readouterr().err


def test_killed_run_resumes_without_duplicates_or_gaps(caps_boxes, tmp_path):
    images = read_caps_boxes_jsonl(caps_boxes)[:12]
    expected = {f"{image['id']}/{t}" for image in images for t in TYPES}

    def responder(request):
        time.sleep(0.1)  # slow enough that the kill lands in the middle of the run
        return llava_format_responder(request)

    records_path = tmp_path / "records.jsonl"
    with OpenAIServer(responder) as server:
        args = cli_args(caps_boxes, tmp_path, server, "--limit", "12", "--concurrency", "2")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SOURCE), os.environ.get("PYTHONPATH", "")])}
        run = subprocess.Popen([sys.executable, "-m", "transformers_llava.data_generation.cli", *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while not (records_path.exists() and records_path.read_text().count("\n") >= 8):
            assert run.poll() is None, f"the run ended before it could be killed: {run.stderr.read().decode()}"
            assert time.monotonic() < deadline, "the run wrote no records in 120 s"
            time.sleep(0.01)
        run.send_signal(signal.SIGKILL)
        assert run.wait() == -signal.SIGKILL
        done_before_kill = {json.loads(line)["key"] for line in records_path.read_text().splitlines()}
        assert 8 <= len(done_before_kill) < len(expected)
        with open(records_path, "ab") as out:  # a kill that lands inside a write leaves a torn line like this
            out.write(b'{"key": "' + images[-1]["id"].encode() + b'/conversation", "index": 11, "sta')

        assert main(args) == 0
        asked = Counter(request_key(request, images) for request in server.requests)

    records = read_records(tmp_path)
    keys = [r["key"] for r in records]
    assert len(keys) == len(set(keys)) == len(expected) and set(keys) == expected  # no duplicates, no gaps
    assert all(r["status"] == "ok" for r in records)
    assert all(asked[key] == 1 for key in done_before_kill)  # finished work is never asked for again
    assert set(asked) == expected
    combined = json.loads((tmp_path / "llava_instruct.json").read_text())
    assert len(combined) == 36 and Counter(s["id"] for s in combined) == {i["id"]: 3 for i in images}


def test_local_transformers_backend_runs_the_same_pipeline(caps_boxes, tmp_path):
    model, tokenizer = build_tiny_chat_model()
    client = TransformersChatClient(model, tokenizer, max_new_tokens=6)
    images = read_caps_boxes_jsonl(caps_boxes)[:2]
    report = generate_instructions(images, client, tmp_path, types=["detail_description", "complex_reasoning"],
                                   concurrency=2, progress=False)
    records = read_records(tmp_path)
    assert sum(report.total.values()) == 4 and report.total["failed"] == 0
    assert all(r["status"] in ("ok", "rejected") for r in records)  # random weights: whatever it says is judged
    for record in records:
        image = next(i for i in images if i["id"] == record["id"])
        messages = build_messages(load_prompt_set(record["type"]), format_context(image, True))
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
        assert record["prompt_tokens"] == len(prompt) and 1 <= record["completion_tokens"] <= 6
    assert json.loads((tmp_path / "run.json").read_text())["model"] == client.model_name


def test_coco_source_without_boxes_is_refused_for_the_boxed_types(tmp_path, capsys):
    (tmp_path / "captions.json").write_text(json.dumps({"images": [], "annotations": []}))
    args = ["instruct", "--coco-captions", str(tmp_path / "captions.json"), "--out", str(tmp_path / "out"),
            "--model", "m", "--base-url", "http://127.0.0.1:9/v1"]
    assert main(args) == 2
    assert ("detail_description and complex_reasoning describe objects by their boxes: pass --coco-instances"
            in capsys.readouterr().err)
