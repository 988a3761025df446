"""Instruction-data building blocks: bundled prompts, symbolic images, response parsing (on the released few-shot
responses), LLaVA conversations, and the kill-safe records file.

    python -m pytest tests/test_data_generation.py -q
"""

import json
import random

import pytest
from conftest import reference_path

from transformers_llava.formats.llava_json import keyed_rng, to_conversations, write_llava_json
from transformers_llava.data_generation.parsing import ResponseRejected, parse_response
from transformers_llava.data_generation.prompts import DATA_TYPES, PROMPTS_DIR, build_messages, load_prompt_set
from transformers_llava.formats.instructions import INSTRUCTIONS_FILE, load_instructions
from transformers_llava.record_store import RecordStore
from transformers_llava.data_generation.symbolic import format_context, read_caps_boxes_jsonl, read_coco

CAPS_BOXES = ("llava", "llava_bench_coco", "caps_boxes_coco2014_val_80.jsonl")


def test_bundled_prompts_are_the_released_files_byte_for_byte():
    released = reference_path("llava", "prompts")
    released_files = sorted(p.relative_to(released) for p in released.rglob("*") if p.is_file())
    bundled_files = sorted(p.relative_to(PROMPTS_DIR) for p in PROMPTS_DIR.rglob("*") if p.is_file())
    assert bundled_files == released_files and len(released_files) == 19
    for name in released_files:
        assert (PROMPTS_DIR / name).read_bytes() == (released / name).read_bytes(), name
    assert INSTRUCTIONS_FILE.read_bytes() == reference_path("paper", "instructions.json").read_bytes()


def test_instruction_lists_are_tables_11_and_12():
    instructions = load_instructions()
    assert len(instructions["brief"]) == 11 and len(instructions["detailed"]) == 15
    assert instructions["brief"][0] == "Describe the image concisely."
    assert instructions["detailed"][-1] == "Examine the image closely and share its details"


@pytest.mark.parametrize("data_type, shots", [("conversation", 2), ("detail_description", 3),
                                              ("complex_reasoning", 3)])
def test_messages_are_system_then_few_shot_turns_then_query(data_type, shots):
    prompt_set = load_prompt_set(data_type)
    messages = build_messages(prompt_set, "A cat.\nA cat on a mat.")
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * shots + ["user"]
    assert messages[0]["content"] == (PROMPTS_DIR / data_type / "system_message.txt").read_text()
    assert messages[1]["content"] == (PROMPTS_DIR / data_type / "000_caps.txt").read_text()
    assert messages[2]["content"] == (PROMPTS_DIR / data_type / "000_conv.txt").read_text()
    assert messages[-1]["content"] == "A cat.\nA cat on a mat."


def test_unknown_data_type_is_named():
    with pytest.raises(ValueError, match="unknown instruction-data type 'dialogue'"):
        load_prompt_set("dialogue")


def parse_caps_file(text: str) -> dict:
    """A released NNN_caps.txt -> symbolic image (the inverse of format_context, written independently)."""
    captions, _, boxes = text.partition("\n\n")
    instances = []
    for line in boxes.splitlines():
        category, _, numbers = line.rpartition(": ")
        instances.append({"category": category, "bbox": json.loads(numbers)})
    return {"id": "x", "image": "x.jpg", "captions": captions.split("\n"), "instances": instances}


@pytest.mark.parametrize("data_type", list(DATA_TYPES))
def test_context_formatting_reproduces_the_released_few_shot_files(data_type):
    folder = reference_path("llava", "prompts", data_type)
    for caps in sorted(folder.glob("*_caps.txt")):
        text = caps.read_text(encoding="utf-8")
        image = parse_caps_file(text)
        assert bool(image["instances"]) == DATA_TYPES[data_type], caps
        assert format_context(image, with_boxes=DATA_TYPES[data_type]) == text, caps


def test_real_caps_boxes_file_reads_and_formats():
    images = read_caps_boxes_jsonl(reference_path(*CAPS_BOXES))
    assert len(images) == 80 and sorted({len(image["captions"]) for image in images}) == [5, 6]  # kept as released
    first = images[0]
    assert first["id"] == "000000296284" and first["image"] == "000000296284.jpg"
    context = format_context(first, with_boxes=True)
    assert context.startswith("A donut shop is full of different flavors of donuts.\n")
    assert "\n\ndonut: [0.37, 0.584, 0.504, 0.709]\n" in context
    assert format_context(first, with_boxes=False) == "\n".join(first["captions"])


def test_caps_boxes_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "1", "image": "1.jpg", "captions": ["a"], "instances": []}) + "\n"
                    + json.dumps({"id": "2", "image": "2.jpg", "instances": []}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl line 2: field 'captions' should be list"):
        read_caps_boxes_jsonl(path)
    path.write_text(json.dumps({"id": "3", "image": "3.jpg", "captions": ["a"],
                                "instances": [{"category": "dog", "bbox": [10, 20, 30, 40]}]}) + "\n")
    with pytest.raises(ValueError, match=r"line 1: instance 0 \(dog\) bbox \[10, 20, 30, 40\] is not normalised"):
        read_caps_boxes_jsonl(path)


def test_coco_annotations_become_symbolic_images(tmp_path):
    images = [{"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "width": 640, "height": 480},
              {"id": 25, "file_name": "COCO_train2014_000000000025.jpg", "width": 500, "height": 500}]
    captions = {"images": images, "annotations": [
        {"image_id": 9, "caption": f"caption {n} "} for n in range(6)] + [{"image_id": 25, "caption": "A giraffe."}]}
    instances = {"images": images, "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
                 "annotations": [{"image_id": 9, "category_id": 18, "bbox": [64.0, 48.0, 320.0, 240.0]},
                                 {"image_id": 9, "category_id": 1, "bbox": [600.0, 0.0, 100.0, 480.0]}]}
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    first, second = read_coco(tmp_path / "captions.json", tmp_path / "instances.json")
    assert first["id"] == "000000000009" and first["image"] == "COCO_train2014_000000000009.jpg"
    assert first["captions"] == [f"caption {n}" for n in range(5)]  # the first five, stripped
    assert first["instances"] == [{"category": "dog", "bbox": [0.1, 0.1, 0.6, 0.6]},
                                  {"category": "person", "bbox": [0.938, 0.0, 1.0, 1.0]}]  # clipped to the image
    assert second == {"id": "000000000025", "image": "COCO_train2014_000000000025.jpg",
                      "captions": ["A giraffe."], "instances": []}


def released_response(data_type: str, number: int) -> str:
    return reference_path("llava", "prompts", data_type, f"{number:03d}_conv.txt").read_text(encoding="utf-8")


def test_released_conversation_responses_parse():
    pairs = parse_response("conversation", released_response("conversation", 0))
    assert len(pairs) == 4
    assert pairs[0] == ("What color is the fire hydrant in the image?", "The fire hydrant in the image is red.")
    assert pairs[3][1].startswith("The image suggests that the winter season")
    assert pairs[3][1].endswith("for its residents and infrastructure.")
    assert "\n\nFor instance, the deep snow" in pairs[3][1]  # paragraphs survive
    skiing = parse_response("conversation", released_response("conversation", 1))
    assert [q for q, _ in skiing][-1] == "Can you explain cross-country and downhill skiing a bit more?"


@pytest.mark.parametrize("number", [0, 1, 2])
def test_released_complex_and_detail_responses_parse(number):
    ((question, answer),) = parse_response("complex_reasoning", released_response("complex_reasoning", number))
    assert question.endswith("?") and "\n===" not in answer and len(answer) > 200
    text = released_response("detail_description", number)
    assert parse_response("detail_description", text) == [(None, text.strip())]


@pytest.mark.parametrize("data_type, response, reason", [
    ("conversation", "", "empty response"),
    ("conversation", "Sure! Here is a conversation.\n===\nQuestion:\nWhy?\n===\nAnswer:\nBecause.",
     "block 1 ('Sure! Here is a conversation.') is neither 'Question:' nor 'Answer:'"),
    ("conversation", "Question:\nWhy?\n===\nAnswer:\nBecause.\n===\nQuestion:\nAnd then?",
     "the last question ('And then?') has no answer"),
    ("conversation", "Answer:\nBecause.\n===", "block 1: an answer with no question before it"),
    ("conversation", "Question:\nWhy?\n===\nQuestion:\nHow?\n===\nAnswer:\nSo.",
     "block 2: question 2 follows a question with no answer"),
    ("conversation", "Question:\n\n===\nAnswer:\nSo.", "block 1 is an empty question"),
    ("complex_reasoning", "Question:\nA?\n===\nAnswer:\nB.\n===\nQuestion:\nC?\n===\nAnswer:\nD.\n===",
     "complex_reasoning expects 1 question-answer pair, got 2"),
    ("detail_description", "Question:\nWhat is it?\n===\nAnswer:\nA dog.",
     "a detailed description came back in the Question/Answer format"),
    ("detail_description", "  \n ", "empty response"),
])
def test_bad_responses_are_rejected_with_the_reason(data_type, response, reason):
    with pytest.raises(ResponseRejected) as rejected:
        parse_response(data_type, response)
    assert rejected.value.reason == reason


def test_truncated_response_is_rejected_even_if_it_parses():
    text = released_response("complex_reasoning", 0)
    with pytest.raises(ResponseRejected, match=r"cut off at the token limit \(finish_reason=length\)"):
        parse_response("complex_reasoning", text, finish_reason="length")


def test_markers_are_forgiving_about_case_spacing_and_crlf():
    text = "question: What is it?\r\n===\r\nANSWER:  A dog.\r\n===\r\n"
    assert parse_response("conversation", text) == [("What is it?", "A dog.")]


def test_image_token_goes_once_into_the_first_human_turn():
    pairs = [("Q1?", "A1."), ("Q2?", "A2.")]
    before = to_conversations(pairs, "before", random.Random(0))
    assert before == [{"from": "human", "value": "<image>\nQ1?"}, {"from": "gpt", "value": "A1."},
                      {"from": "human", "value": "Q2?"}, {"from": "gpt", "value": "A2."}]
    assert to_conversations(pairs, "after", random.Random(0))[0]["value"] == "Q1?\n<image>"
    placements = {to_conversations(pairs, "random", keyed_rng(0, f"img{n}"))[0]["value"] for n in range(20)}
    assert placements == {"<image>\nQ1?", "Q1?\n<image>"}  # both orders, like LLaVA-Instruct-150K
    assert (to_conversations(pairs, "random", keyed_rng(5, "img3"))
            == to_conversations(pairs, "random", keyed_rng(5, "img3")))
    with pytest.raises(ValueError, match="image position 'middle'"):
        to_conversations(pairs, "middle", random.Random(0))


def test_llava_json_is_a_plain_list(tmp_path):
    samples = [{"id": str(n), "image": f"{n}.jpg", "conversations": []} for n in range(3)]
    assert write_llava_json(iter(samples), tmp_path / "out.json") == 3
    assert json.loads((tmp_path / "out.json").read_text()) == samples
    assert write_llava_json([], tmp_path / "empty.json") == 0
    assert json.loads((tmp_path / "empty.json").read_text()) == []


def test_records_file_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "records.jsonl"
    with RecordStore(path) as store:
        store.append({"key": "a", "n": 1})
        store.append({"key": "b", "n": 2})
    with open(path, "ab") as out:
        out.write(b'{"key": "c", "n": 3, "respo')  # what a kill in the middle of a write leaves
    with RecordStore(path) as store:
        assert store.dropped_bytes == len(b'{"key": "c", "n": 3, "respo')
        assert [r["key"] for r in store.records()] == ["a", "b"]
        store.append({"key": "c", "n": 3})
    assert path.read_text().splitlines()[-1] == '{"key": "c", "n": 3}'


@pytest.mark.parametrize("records, torn", [
    ([{"key": "a", "text": "x" * 200_000}], b'{"key": "b", "text": "' + b"y" * 150_000),  # both span read chunks
    ([], b'{"key": "a", "n": 1'),  # the first line torn: nothing is left
    ([{"key": "a"}], b""),  # nothing torn
])
def test_torn_last_lines_of_any_length_are_dropped(tmp_path, records, torn):
    path = tmp_path / "records.jsonl"
    with RecordStore(path) as store:
        for record in records:
            store.append(record)
    complete = path.read_bytes()
    with open(path, "ab") as out:
        out.write(torn)
    with RecordStore(path) as store:
        assert store.dropped_bytes == len(torn)
        assert list(store.records()) == records
    assert path.read_bytes() == complete


def test_records_file_refuses_a_second_writer_and_corrupt_lines(tmp_path):
    path = tmp_path / "records.jsonl"
    with RecordStore(path):  # flock locks belong to an open file, so a second open here conflicts like a process
        with pytest.raises(RuntimeError, match="records.jsonl is locked by another running process"):
            RecordStore(path)
    RecordStore(path).close()  # released on close
    path.write_text('{"key": "a"}\nnot json\n{"key": "b"}\n')
    with RecordStore(path) as store, pytest.raises(ValueError, match=r"records.jsonl line 2 is not JSON"):
        list(store.records())
