"""Answers from a tiny LLaVA: batches equal one-by-one greedy answers, the ScienceQA answer prompter's two-step text,
and a resumed run after a real `kill -9` of the answering process leaves every question answered exactly once."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from transformers_llava.evaluation.cli import main
from transformers_llava.evaluation.generation import answer_questions

SRC = Path(__file__).resolve().parents[1] / "src"
QUESTIONS = [
    {"question_id": index, "text": text, "image": image}
    for index, (text, image) in enumerate([
        ("What is this?", "red.png"), ("Which color? Options: (A) red (B) blue", None),
        ("Describe the image concisely.", "blue.png"), ("How many circles?", "red.png"),
        ("What shape is in the center?", None), ("Is the star yellow?", "blue.png"),
    ])
]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    Image.new("RGB", (40, 30), (220, 20, 20)).save(folder / "red.png")
    Image.new("RGB", (30, 50), (20, 20, 220)).save(folder / "blue.png")
    return folder


def read_answers(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_batched_answers_equal_one_by_one_answers(tmp_path, tiny, images):
    model, processor = tiny
    for batch_size in (1, 4):
        answer_questions(model, processor, QUESTIONS, images, tmp_path / f"b{batch_size}.jsonl", batch_size,
                         max_new_tokens=8, progress=False, share_prefix=False)
    one, four = read_answers(tmp_path / "b1.jsonl"), read_answers(tmp_path / "b4.jsonl")
    assert [a["text"] for a in one] == [a["text"] for a in four]
    assert [a["question_id"] for a in four] == list(range(6)) and all(a["text"] for a in four)


# LLaVA-Bench's shape: several questions about each image in a row, and runs of text-only questions.
SHARED = [{"question_id": i, "text": text, "image": image} for i, (text, image) in enumerate([
    ("What is this?", "red.png"), ("Describe the image in detail.", "red.png"), ("Why is it red?", "red.png"),
    ("What color is the background of this picture?", "blue.png"), ("Describe it.", "blue.png"),
    ("What shape is in the center?", None), ("Which color? Options: (A) red (B) blue", None),
    ("How many circles?", "red.png"),
])]


@pytest.mark.parametrize("batch_size", [3, 8])
def test_shared_prefix_answers_equal_one_at_a_time_answers(tmp_path, tiny, images, batch_size):
    """Each image encoded once per batch and its prefix's keys/values shared: the greedy answers are unchanged."""
    model, processor = tiny
    encoded = []
    model.model.vision_tower.register_forward_hook(lambda module, args, output: encoded.append(len(args[0])))
    answer_questions(model, processor, SHARED, images, tmp_path / "one.jsonl", 1, max_new_tokens=12, progress=False,
                     share_prefix=False)
    assert sum(encoded) == 6  # one-at-a-time: the image of every image question
    encoded.clear()
    answer_questions(model, processor, SHARED, images, tmp_path / "shared.jsonl", batch_size, max_new_tokens=12,
                     progress=False)
    assert sum(encoded) == {3: 3, 8: 3}[batch_size]  # red, blue, red again (a separate run)
    one, shared = read_answers(tmp_path / "one.jsonl"), read_answers(tmp_path / "shared.jsonl")
    assert [a["question_id"] for a in shared] == list(range(len(SHARED)))
    assert [a["text"] for a in shared] == [a["text"] for a in one]
    assert len({a["text"] for a in one}) > 1  # the questions get different answers: nothing is mixed up silently


def test_shared_prefix_keeps_the_answer_prompter(tmp_path, tiny, images):
    model, processor = tiny
    for name, share in (("one", False), ("shared", True)):
        answer_questions(model, processor, SHARED[:5], images, tmp_path / f"{name}.jsonl", 1 if name == "one" else 5,
                         max_new_tokens=6, answer_prompter=True, progress=False, share_prefix=share)
    assert [a["text"] for a in read_answers(tmp_path / "shared.jsonl")] == \
        [a["text"] for a in read_answers(tmp_path / "one.jsonl")]


def test_answer_prompter_appends_the_answer_step(tmp_path, tiny, images):
    model, processor = tiny
    answer_questions(model, processor, QUESTIONS[:2], images, tmp_path / "a.jsonl", 2, max_new_tokens=5,
                     answer_prompter=True, progress=False)
    for answer in read_answers(tmp_path / "a.jsonl"):
        reasoning, _, final = answer["text"].partition("\n The answer is ")
        assert reasoning and final and "###" not in answer["text"]


def test_a_missing_image_names_the_question(tmp_path, tiny, images):
    model, processor = tiny
    with pytest.raises(FileNotFoundError, match="question 9: image .*nowhere.png not found"):
        answer_questions(model, processor, [{"question_id": 9, "text": "?", "image": "nowhere.png"}], images,
                         tmp_path / "a.jsonl", progress=False)


def scienceqa_questions(tmp_path: Path) -> Path:
    records = [{"id": str(q["question_id"]), **({"image": q["image"]} if q["image"] else {}),
                "conversations": [{"from": "human", "value": q["text"] + ("\n<image>" if q["image"] else "")},
                                  {"from": "gpt", "value": "The answer is A."}]} for q in QUESTIONS * 2]
    for index, record in enumerate(records):
        record["id"] = str(index)
    path = tmp_path / "questions.json"
    path.write_text(json.dumps(records))
    return path


def test_a_killed_run_resumes_without_losing_or_duplicating(tmp_path, tiny_dir, images):
    questions = scienceqa_questions(tmp_path)
    argv = ["scienceqa", "answer", "--model", str(tiny_dir), "--questions", str(questions), "--image-folder",
            str(images), "--batch-size", "1", "--max-new-tokens", "48", "--no-progress"]
    answers = tmp_path / "answers.jsonl"
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from transformers_llava.cli import main; sys.exit(main(sys.argv[1:]))",
         "eval", *argv, "--answers", str(answers)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if answers.exists() and answers.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.05)
    assert process.poll() is None, f"the answering process ended before it could be killed: {process.stderr.read()!r}"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    killed_at = answers.read_bytes().count(b"\n")
    assert 3 <= killed_at < 12
    with open(answers, "ab") as handle:         # what a kill in the middle of writing a line leaves behind
        handle.write(b'{"question_id": "11", "prompt": "Is the st')

    assert main([*argv, "--answers", str(answers)]) == 0
    assert main([*argv, "--answers", str(tmp_path / "uninterrupted.jsonl")]) == 0
    resumed = read_answers(answers)
    assert sorted(int(a["question_id"]) for a in resumed) == list(range(12))
    expected = {a["question_id"]: a["text"] for a in read_answers(tmp_path / "uninterrupted.jsonl")}
    assert {a["question_id"]: a["text"] for a in resumed} == expected
