"""What `transformers-llava eval` does with a user's mistakes: one line naming the problem and exit status 2, never
a traceback; an answers file is never resumed with another model's answers; and evaluation opens images with the
processor's own loader, so they are preprocessed exactly as in training."""

import json
import shutil

import numpy as np
import pytest
from conftest import reference_path
from PIL import Image

from transformers_llava.evaluation.cli import main
from transformers_llava.evaluation.generation import load_image


@pytest.fixture(scope="module")
def bench_dir():
    return reference_path("llava", "llava_bench_coco")


@pytest.fixture(scope="module")
def images(tmp_path_factory, bench_dir):
    folder = tmp_path_factory.mktemp("val2014")
    for line in (bench_dir / "qa90_questions.jsonl").read_text().splitlines()[:2]:
        Image.new("RGB", (40, 30), (200, 30, 30)).save(folder / json.loads(line)["image"])
    return folder


def answer_args(bench_dir, images, model, answers):
    return ["llava-bench", "answer", "--bench-dir", str(bench_dir), "--image-folder", str(images), "--model",
            str(model), "--answers", str(answers), "--limit", "2", "--max-new-tokens", "2", "--no-progress"]


def one_line_error(capsys, code) -> str:
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1, captured
    return captured.err


def test_answers_of_another_model_are_not_resumed_under_a_new_name(tmp_path, tiny_dir, bench_dir, images, capsys):
    other = shutil.copytree(tiny_dir, tmp_path / "other-model")
    answers = tmp_path / "answers.jsonl"
    assert main(answer_args(bench_dir, images, tiny_dir, answers)) == 0
    first = answers.read_text()
    assert main(answer_args(bench_dir, images, tiny_dir, answers)) == 0  # the same model resumes (nothing to do)
    assert answers.read_text() == first
    capsys.readouterr()
    err = one_line_error(capsys, main(answer_args(bench_dir, images, other, answers)))
    assert f"answers.jsonl holds answers from --model {tiny_dir}, not from --model {other}" in err
    assert answers.read_text() == first  # nothing appended under the other name
    assert main(answer_args(bench_dir, images, other, tmp_path / "other.jsonl")) == 0
    assert {json.loads(line)["model_id"] for line in (tmp_path / "other.jsonl").read_text().splitlines()} == {str(other)}


@pytest.mark.parametrize("case, expected", [
    ("no model", r"--model .*nowhere is not a directory; give a LLaVA checkpoint directory"),
    ("no bench", r"no questions file: give --bench-dir"),
    ("bad questions", r"q\.jsonl"),
    ("no judge", r"no judge model: pass --judge-model NAME"),
    ("scienceqa", r"problems\.json not found"),
])
def test_user_mistakes_print_one_line_and_exit_2(tmp_path, tiny_dir, bench_dir, images, capsys, monkeypatch,
                                                 case, expected):
    monkeypatch.delenv("OPENAI_MODEL", raising=False)
    (tmp_path / "q.jsonl").write_text("{not json\n")
    argv = {
        "no model": answer_args(bench_dir, images, tmp_path / "nowhere", tmp_path / "a.jsonl"),
        "no bench": ["llava-bench", "report", "--answers", "a.jsonl", "--reviews", "r.jsonl"],
        "bad questions": ["llava-bench", "report", "--bench-dir", str(bench_dir), "--questions",
                          str(tmp_path / "q.jsonl"), "--answers", "a.jsonl", "--reviews", "r.jsonl"],
        "no judge": ["llava-bench", "review", "--bench-dir", str(bench_dir), "--answers", str(tmp_path / "a.jsonl"),
                     "--reviews", str(tmp_path / "r.jsonl")],
        "scienceqa": ["scienceqa", "convert", "--base-dir", str(tmp_path), "--split", "test", "--output",
                      str(tmp_path / "o.json")],
    }[case]
    err = one_line_error(capsys, main(argv))
    assert err.startswith("transformers-llava eval ") and " error: " in err
    assert __import__("re").search(expected, err), err


def test_evaluation_preprocesses_images_as_training_does(tmp_path, tiny):
    """A transparent PNG: training composites it on the mean color; evaluation must give the same pixels (it used to
    open it with `convert("RGB")`, which makes transparent pixels black)."""
    _, processor = tiny
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[8:24, 8:24] = (255, 0, 0, 255)  # an opaque red square on a fully transparent background
    Image.fromarray(rgba, "RGBA").save(tmp_path / "sticker.png")
    training = processor.image_processor([str(tmp_path / "sticker.png")], return_tensors="np")["pixel_values"]
    image = load_image(tmp_path, "sticker.png", "q1", processor)
    evaluation = processor.image_processor([image], return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(evaluation, training)
    black = processor.image_processor([Image.open(tmp_path / "sticker.png").convert("RGB")],
                                      return_tensors="np")["pixel_values"]
    assert not np.array_equal(black, training)  # what the old loader gave differs


def test_generate_without_a_model_name_names_the_flag(tmp_path, capsys, monkeypatch):
    from transformers_llava.data_generation.cli import main as generate

    monkeypatch.delenv("OPENAI_MODEL", raising=False)
    caps = tmp_path / "caps.jsonl"
    caps.write_text(json.dumps({"id": 1, "image": "a.jpg", "captions": ["A cat."], "instances": []}) + "\n")
    err = one_line_error(capsys, generate(["instruct", "--caps-boxes", str(caps), "--out", str(tmp_path / "out"),
                                           "--types", "conversation"]))
    assert "pass --model NAME or set OPENAI_MODEL" in err and "model=..." not in err
