"""LLaVA JSON -> datasets rows, stage-1 captions, invalid samples reported by id, length checks that never cut
image tokens, and the loss mask token by token against the original v1 format."""

import json
import re

import pytest
from PIL import Image
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from conftest import reference_path
from transformers_llava.formats.instructions import load_instructions
from transformers_llava.formats.stage1 import to_stage1_sample
from transformers_llava.training.data import (
    DataError,
    caption_pair,
    drop_too_long,
    load_captions,
    load_llava_json,
    record_to_example,
)


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "img").mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (40, 30), "red").save(tmp_path / "img" / name)
    return tmp_path


def write(folder, records, name="data.json"):
    path = folder / name
    path.write_text(json.dumps(records))
    return path


def conv(*values):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


def test_image_after_the_text_moves_to_the_front_as_in_the_original(folder):
    example = record_to_example({"id": 1, "image": "a.jpg", "conversations": conv("What is it?\n<image>", "Red.")},
                                str(folder / "img"))
    assert example["problem"] is None
    assert example["messages"][0]["content"] == [{"type": "image", "text": None},
                                                 {"type": "text", "text": "What is it?"}]
    assert example["images"] == [str(folder / "img" / "a.jpg")]


def test_samples_without_image_and_images_without_placeholder(folder):
    text_only = record_to_example({"id": 2, "conversations": conv("Hi", "Hello")})
    assert text_only["images"] == [] and text_only["messages"][0]["content"] == [{"type": "text", "text": "Hi"}]
    implicit = record_to_example({"id": 3, "image": "a.jpg", "conversations": conv("Describe it.", "Red.")},
                                 str(folder / "img"))
    assert implicit["messages"][0]["content"][0]["type"] == "image"


@pytest.mark.parametrize("record, reason", [
    ({"id": "m", "image": "missing.jpg", "conversations": conv("<image>\nQ", "A")}, "image file not found"),
    ({"id": "o", "image": "a.jpg", "conversations": conv("<image>\nQ", "A")[::-1]}, "roles must alternate"),
    ({"id": "e", "image": "a.jpg", "conversations": conv("<image>\nQ", "  ")}, "turn 1 (gpt) is empty"),
    ({"id": "p", "image": "a.jpg", "conversations": conv("<image>\n<image>\nQ", "A")},
     "2 <image> placeholder(s) but 1 image(s)"),
    ({"id": "h", "image": "a.jpg", "conversations": conv("<image>\nQ", "A", "Q2")}, "ends with a human turn"),
])
def test_invalid_samples_are_skipped_and_reported_or_fail(folder, record, reason):
    good = {"id": "g", "image": "b.jpg", "conversations": conv("<image>\nQ", "A")}
    path = write(folder, [good, record])
    dataset, report = load_llava_json(path, folder / "img", on_invalid="skip")
    assert dataset["id"] == ["g"] and report.kept == 1
    assert report.dropped[0][0] == record["id"] and reason in report.dropped[0][1]
    with pytest.raises(ValueError, match=rf"(?s)1 invalid sample.*\n  {record['id']}: .*{re.escape(reason)}"):
        load_llava_json(path, folder / "img")


def test_streaming_keeps_images_lazy_and_skips_invalid(folder, caplog):
    path = write(folder, [{"id": "g", "image": "b.jpg", "conversations": conv("<image>\nQ", "A")},
                          {"id": "m", "image": "missing.jpg", "conversations": conv("<image>\nQ", "A")}])
    dataset, report = load_llava_json(path, folder / "img", streaming=True, on_invalid="skip")
    rows = list(dataset)
    assert report is None and [r["id"] for r in rows] == ["g"]
    assert "sample m skipped: image file not found" in caplog.text  # logged as it streams past, never silent
    assert isinstance(rows[0]["images"][0], str)  # a path: decoded only when a batch is collated


def test_stage1_captions_become_brief_instructions_deterministically(folder):
    """Stage-1 pairs go through the data-generation step (`to_stage1_sample`): one Table 11 question per image."""
    questions = list(load_instructions()["brief"])
    assert questions == json.loads(reference_path("paper", "instructions.json").read_text())["brief"]
    record = to_stage1_sample(caption_pair({"id": "x", "image": "a.jpg", "caption": "a red square "}), 3, "before")
    assert record == to_stage1_sample(caption_pair({"id": "x", "image": "a.jpg", "caption": "a red square"}), 3,
                                      "before")
    human, gpt = record["conversations"]
    assert human["value"].startswith("<image>\n") and human["value"][len("<image>\n"):] in questions
    assert gpt["value"] == "a red square"
    picked = {to_stage1_sample(caption_pair({"id": i, "image": "a.jpg", "caption": "c"}), 0, "before")
              ["conversations"][0]["value"] for i in range(200)}
    assert len(picked) == len(questions)  # every question of Table 11 is used
    path = write(folder, [{"id": "x", "image": "a.jpg", "blip_caption": "a red square"}])
    dataset, _ = load_captions(path, folder / "img")
    assert dataset[0]["messages"][1]["content"][0]["text"] == "a red square"


def test_too_long_samples_are_dropped_or_fail_never_cut(folder, tiny):
    _, processor = tiny
    long_answer = " ".join(["word"] * 200)
    path = write(folder, [{"id": "short", "image": "a.jpg", "conversations": conv("<image>\nQ", "A")},
                          {"id": "long", "image": "b.jpg", "conversations": conv("<image>\nQ", long_answer)}])
    dataset, _ = load_llava_json(path, folder / "img")
    kept, report = drop_too_long(dataset, processor, max_length=120)
    assert kept["id"] == ["short"] and report.dropped[0][0] == "long"
    with pytest.raises(ValueError, match=r"(?s)1 sample\(s\) longer than max_length=120.*long: \d+ tokens"):
        drop_too_long(dataset, processor, max_length=120, on_too_long="fail")
    # The counted length is the collated length: the image expanded, BOS included.
    batch = DataCollatorForVisionLanguageModeling(processor=processor, assistant_only_loss=True)([dict(kept[0])])
    from transformers_llava.training.data import sequence_length
    assert batch["input_ids"].shape[1] == sequence_length(kept[0]["messages"], 1, processor)


def original_v1_labels(text: str, tokenizer) -> list[bool]:
    """The original v1 supervision, derived from the format itself: the text after each `ASSISTANT:` up to and
    including its `</s>` carries loss; nothing else does."""
    spans, start = [], 0
    while (start := text.find("ASSISTANT:", start)) != -1:
        end = text.find("</s>", start) + len("</s>")
        spans.append((start + len("ASSISTANT:"), end))
        start = end
    encoding = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    return [any(a < e and b > s for s, e in spans) and b > a for a, b in encoding["offset_mapping"]]


def test_loss_mask_matches_the_original_v1_supervision_token_by_token(folder, tiny):
    _, processor = tiny
    record = {"id": "mt", "image": "a.jpg",
              "conversations": conv("<image>\nWhat is this?", "A cat.", "Color?", "Black.", "Size?", "Small.")}
    dataset, _ = load_llava_json(write(folder, [record]), folder / "img")
    batch = DataCollatorForVisionLanguageModeling(processor=processor, assistant_only_loss=True)([dict(dataset[0])])
    labels, ids = batch["labels"][0].tolist(), batch["input_ids"][0].tolist()
    # The same conversation rendered as in CONVERSATIONS.md, image placeholder expanded to its 16 tokens.
    system = reference_path("paper", "CONVERSATIONS.md").read_text().split("```\n")[1].split(" USER:")[0]
    text = (f"{system} USER: " + "<image>" * 16 + "\nWhat is this? ASSISTANT: A cat.</s>USER: Color? "
            "ASSISTANT: Black.</s>USER: Size? ASSISTANT: Small.</s>")
    expected_ids = processor.tokenizer(text)["input_ids"]
    assert ids == expected_ids
    expected = original_v1_labels(text, processor.tokenizer)
    assert [label != -100 for label in labels] == expected
    supervised = [i for i, label in zip(ids, labels) if label != -100]
    assert processor.tokenizer.decode(supervised) == "A cat.</s> Black.</s> Small.</s>"
    assert all(label == -100 for label, i in zip(labels, ids) if i == processor.image_token_id)


@pytest.mark.parametrize("content, message", [
    (b"", r"the file is empty \(0 bytes\)"),
    (b"[]", r"holds no samples \(an empty list\)"),
    (b'[{"id": 1, "conversations": [{"from": "human", "value": "caf\xe9"}]}]',
     r"not UTF-8 text: byte 0xe9 at byte 60 \(line 1\)"),
    (b'[{"id": 1, "image": "a.jpg",\n  "conversations": [{"from": "human", "val',
     r"not valid JSON at line 2, column 39: Unterminated string \(the file ends in 'l', not '\]': cut short\?\)"),
    (b'{"id": 1, "image": "a.jpg", "conversations": []}',
     r"a single JSON object \(keys id, image, conversations\), not a list of samples"),
    (b'[{"id": 1}, "just text"]', r"sample 1 is a JSON str, not an object"),
])
def test_a_data_file_that_is_not_a_list_of_samples_fails_naming_it(folder, content, message):
    path = folder / "data.json"
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: {message}"):
        load_llava_json(path, folder / "img", on_invalid="skip")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: "):
        load_captions(path, folder / "img", on_invalid="skip")


def test_json_lines_still_load(folder):
    path = folder / "data.jsonl"
    path.write_text("\n".join(json.dumps({"id": i, "image": "a.jpg", "conversations": conv("<image>\nQ", "A")})
                              for i in range(3)) + "\n")
    dataset, report = load_llava_json(path, folder / "img")
    assert dataset["id"] == ["0", "1", "2"] and report.kept == 3
    path.write_text(path.read_text() + '{"id": 3, "conv\n')
    with pytest.raises(DataError, match=r"data\.jsonl: line 4 is not valid JSON"):
        load_llava_json(path, folder / "img")


def test_when_every_image_is_missing_the_report_is_the_error(folder):
    path = write(folder, [{"id": f"s{i}", "image": f"gone{i}.jpg", "conversations": conv("<image>\nQ", "A")}
                          for i in range(3)])
    with pytest.raises(DataError, match=rf"(?s)^{re.escape(str(path))}: 0 valid samples of 3; first skipped: id s0: "
                                        r"image file not found: .*gone0\.jpg.*\n  s2: image file not found"):
        load_llava_json(path, folder / "img", on_invalid="skip")


def test_an_image_that_exists_but_cannot_be_decoded_is_skipped_at_load(folder):
    Image.new("RGB", (64, 48), "blue").save(folder / "img" / "whole.png")
    png = (folder / "img" / "whole.png").read_bytes()
    (folder / "img" / "cut.png").write_bytes(png[: len(png) // 2])
    Image.new("RGB", (64, 48), "blue").save(folder / "img" / "whole.jpg", quality=95)
    jpeg = (folder / "img" / "whole.jpg").read_bytes()
    (folder / "img" / "cut.jpg").write_bytes(jpeg[: len(jpeg) - 10])
    (folder / "img" / "text.jpg").write_text("not an image")
    records = [{"id": name, "image": name, "conversations": conv("<image>\nQ", "A")}
               for name in ("whole.png", "cut.png", "whole.jpg", "cut.jpg", "text.jpg")]
    dataset, report = load_llava_json(write(folder, records), folder / "img", on_invalid="skip")
    assert dataset["id"] == ["whole.png", "whole.jpg"]
    reasons = dict(report.dropped)
    assert "image file is cut short" in reasons["cut.png"] and "a PNG without its end marker" in reasons["cut.png"]
    assert "a JPEG without its end marker" in reasons["cut.jpg"]
    assert reasons["text.jpg"].startswith("image file cannot be read: ") and "text.jpg" in reasons["text.jpg"]
    # What the loader let through decodes: training meets no broken image.
    for paths in dataset["images"]:
        Image.open(paths[0]).convert("RGB")


def test_when_every_sample_is_too_long_the_error_says_so(folder, tiny):
    _, processor = tiny
    path = write(folder, [{"id": "long", "image": "a.jpg", "conversations": conv("<image>\nQ", "word " * 50)}])
    dataset, _ = load_llava_json(path, folder / "img")
    with pytest.raises(DataError, match=r"all 1 samples are over max_length=20 tokens \(the shortest is \d+; image "
                                        r"tokens are never cut\): raise data.max_length"):
        drop_too_long(dataset, processor, max_length=20)


def test_encode_conversation_gives_the_original_v1_ids_and_labels_token_by_token(folder, tiny):
    """The processor's one conversation -> ids path: the same ids and supervision as the original v1 format, the
    image's tokens where `image_positions` says, and the open assistant turn for generation."""
    _, processor = tiny
    record = {"id": "mt", "image": "a.jpg",
              "conversations": conv("<image>\nWhat is this?", "A cat.", "Color?", "Black.", "Size?", "Small.")}
    dataset, _ = load_llava_json(write(folder, [record]), folder / "img")
    encoded = processor.encode_conversation(dataset[0]["messages"], dataset[0]["images"])
    system = reference_path("paper", "CONVERSATIONS.md").read_text().split("```\n")[1].split(" USER:")[0]
    text = (f"{system} USER: " + "<image>" * 16 + "\nWhat is this? ASSISTANT: A cat.</s>USER: Color? "
            "ASSISTANT: Black.</s>USER: Size? ASSISTANT: Small.</s>")
    assert encoded.input_ids.tolist() == processor.tokenizer(text)["input_ids"]
    assert (encoded.labels != -100).tolist() == original_v1_labels(text, processor.tokenizer)
    assert (encoded.labels[encoded.labels != -100] == encoded.input_ids[encoded.labels != -100]).all()
    (start,) = encoded.image_positions.tolist()
    assert (encoded.input_ids[start: start + 16] == processor.image_token_id).all()
    assert (encoded.input_ids == processor.image_token_id).sum() == 16
    prompt = processor.encode_conversation(dataset[0]["messages"][:1], add_generation_prompt=True)
    assert prompt.text.endswith("What is this? ASSISTANT:") and (prompt.labels == -100).all()
    assert prompt.input_ids.tolist() == encoded.input_ids[: len(prompt.input_ids)].tolist()
    with pytest.raises(ValueError, match=r"Sample mt: 2 image\(s\) but 1 image part"):
        processor.encode_conversation(dataset[0]["messages"], ["a.jpg", "b.jpg"], sample_id="mt")
