"""LLaVA-Bench: the judge prompt from the released files, score parsing, reviews through the real HTTP client against a
local OpenAI-compatible server (faults included), the report, and the whole `eval llava-bench run` command with a
tiny LLaVA on stand-in images named like the COCO files."""

import json
import re
import shutil

import pytest
from conftest import reference_path
from openai_server import Garbage, Malformed, OpenAIServer, Status

from transformers_llava.chat_client import OpenAIChatClient
from transformers_llava.evaluation.cli import main
from transformers_llava.evaluation.llava_bench_data import JUDGE_SYSTEM, bench_files, judge_content, load_bench
from transformers_llava.evaluation.llava_bench_report import summarize
from transformers_llava.evaluation.llava_bench_review import parse_scores, review_answers

# What the scripted judge gives the candidate per category; the reference always gets 8.
CANDIDATE_SCORE = {"conv": 6, "detail": 4, "complex": 8}


@pytest.fixture(scope="module")
def bench_dir():
    return reference_path("llava", "llava_bench_coco")


@pytest.fixture(scope="module")
def coco_items(bench_dir):
    return load_bench(**bench_files("coco", bench_dir))


def scripted_judge(request) -> str:
    """Scores from the prompt itself: reference 8, candidate by the rule's category; unreadable for 'mumble'."""
    content = request.body["messages"][-1]["content"]
    candidate = content.split("[Assistant 2]\n")[1].split("\n\n[End of Assistant 2]")[0]
    if "mumble" in candidate:
        return "Both assistants did fine.\n8 3"
    category = re.search(r"category (\w+)", candidate).group(1)
    return f"8 {CANDIDATE_SCORE[category]}\nAssistant 1 is more detailed."


def candidate_answers(items, path=None) -> dict:
    answers = {str(i["question_id"]): {"question_id": i["question_id"], "answer_id": f"a{i['question_id']}",
                                       "text": f"An answer of category {i['category']}."} for i in items}
    if path:
        path.write_text("".join(json.dumps(a) + "\n" for a in answers.values()))
    return answers


def test_judge_prompt_is_built_like_the_original(bench_dir, coco_items):
    rules = json.loads((bench_dir / "rule.json").read_text())
    assert len(coco_items) == 90 and {i["category"] for i in coco_items} == {"conv", "detail", "complex"}
    item = coco_items[0]
    assert judge_content(item, "Black and brown.") == (
        "[Context]\nTwo antique suitcases sit stacked one on top of the other.\n"
        "Two suitcases are stacked on each other and one is black while the other is brown and yellow.\n"
        "a close up of two luggage suit cases stacked on each other\n"
        "A stack of antique luggage is displayed with price tags.\n"
        "two suitcases made of leather and stacked on top of each other\n\n"
        "suitcase: [0.167, 0.025, 0.989, 0.445]\nsuitcase: [0.002, 0.31, 0.994, 0.996]\n\n"
        "[Question]\nWhat is the color of the two suitcases in the image?\n\n"
        "[Assistant 1]\nThe colors of the two suitcases in the image are black and brown with yellow details.\n\n"
        "[End of Assistant 1]\n\n[Assistant 2]\nBlack and brown.\n\n[End of Assistant 2]\n\n"
        f"[System]\n{rules['conv']['prompt']}\n\n")
    assert coco_items[1]["rule"] == rules["detail"]["prompt"] and coco_items[2]["rule"] == rules["complex"]["prompt"]


def test_in_the_wild_uses_captions_only_and_the_llava_bench_rules(tmp_path, bench_dir):
    (tmp_path / "questions.jsonl").write_text(
        json.dumps({"question_id": 0, "image": "001.jpg", "text": "What is funny?", "category": "complex"}) + "\n"
        + json.dumps({"question_id": 1, "image": "002.jpg", "text": "Describe it.", "category": "detail"}) + "\n")
    (tmp_path / "answers_gpt4.jsonl").write_text(
        json.dumps({"question_id": 0, "text": "The cat."}) + "\n" + json.dumps({"question_id": 1, "text": "A dog."}) + "\n")
    (tmp_path / "context.jsonl").write_text(
        json.dumps({"id": "001", "image": "001.jpg", "caption": "A cat wearing a hat."}) + "\n"
        + json.dumps({"id": "002", "image": "002.jpg", "caption": ["A dog.", "On a sofa."]}) + "\n")
    shutil.copy(bench_dir / "rule.json", tmp_path / "rule.json")
    rules = json.loads((bench_dir / "rule.json").read_text())
    items = load_bench(**bench_files("wild", tmp_path))
    assert judge_content(items[0], "X").startswith("[Context]\nA cat wearing a hat.\n\n[Question]\nWhat is funny?\n\n")
    assert items[0]["rule"] == rules["llava_bench_complex"]["prompt"]
    assert items[1]["context"] == "A dog.\nOn a sofa."


def test_missing_inputs_are_named(tmp_path, bench_dir):
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": 500, "image": "000000441147.jpg", "text": "?", "category": "conv"}))
    with pytest.raises(KeyError, match="no reference answer for question 500"):
        load_bench(**bench_files("coco", bench_dir, questions=questions))
    questions.write_text(json.dumps({"question_id": 0, "image": "missing.jpg", "text": "?", "category": "conv"}))
    with pytest.raises(KeyError, match="no context for image missing.jpg"):
        load_bench(**bench_files("coco", bench_dir, questions=questions))
    questions.write_text(json.dumps({"question_id": 0, "image": "000000441147.jpg", "text": "?", "category": "ocr"}))
    with pytest.raises(KeyError, match="no rule 'ocr' for question 0"):
        load_bench(**bench_files("coco", bench_dir, questions=questions))


@pytest.mark.parametrize("review, expected", [
    ("8 9\nBecause.", (8.0, 9.0)), ("8,9", (8.0, 9.0)), ("7.5, 6\n", (7.5, 6.0)), ("  10 2  \nx", (10.0, 2.0)),
    ("Assistant 1: 8\nAssistant 2: 9", None), ("8\n9", None), ("8 9 10", None), ("nan 3", None), ("", None),
])
def test_scores_come_from_the_first_line_only(review, expected):
    assert parse_scores(review) == expected


def test_reviews_over_http_survive_faults_and_never_average_failures(tmp_path, coco_items):
    items = coco_items[:9]
    answers = candidate_answers(items)
    answers["4"]["text"] = "I mumble."                      # the judge never gives readable scores for this one
    with OpenAIServer(scripted_judge) as server:
        server.inject(Status(429, retry_after=0), Status(500), Garbage(), Malformed())
        client = OpenAIChatClient(base_url=server.base_url, model="judge", max_retries=5)
        failures = review_answers(client, items, answers, tmp_path / "reviews.jsonl", attempts=2, progress=False)
        assert len(server.requests) == 4 + 8 + 2             # 4 faults retried, 8 good reviews, 2 tries of question 4
        sent = server.requests[-1].body
        assert sent["messages"][0] == {"role": "system", "content": JUDGE_SYSTEM}
        assert (sent["temperature"], sent["max_tokens"], sent["model"]) == (0.2, 1024, "judge")
    assert [(f["question_id"], f["attempts"]) for f in failures] == [(4, 2)]
    reviews = [json.loads(line) for line in (tmp_path / "reviews.jsonl").read_text().splitlines()]
    assert sorted(r["question_id"] for r in reviews) == [0, 1, 2, 3, 5, 6, 7, 8]
    assert reviews[0]["answer2_id"] == "a0" and reviews[0]["answer1_id"] == 0
    summary = summarize(items, {str(r["question_id"]): r for r in reviews}, answers)
    assert summary["conv"] == {"n": 3, "reference": 8.0, "candidate": 6.0, "relative": 75.0, "failures": 0,
                               "unanswered": 0}
    assert (summary["detail"]["n"], summary["detail"]["failures"], summary["detail"]["relative"]) == (2, 1, 50.0)
    assert summary["all"]["relative"] == pytest.approx((3 * 6 + 2 * 4 + 3 * 8) / 8 / 8 * 100)


def test_a_rerun_asks_only_what_is_missing(tmp_path, coco_items):
    items = coco_items[:6]
    answers = candidate_answers(items)
    answers["2"]["text"] = "I mumble."
    with OpenAIServer(scripted_judge) as server:
        client = OpenAIChatClient(base_url=server.base_url, model="judge")
        assert len(review_answers(client, items, answers, tmp_path / "r.jsonl", attempts=1, progress=False)) == 1
        answers["2"]["text"] = "An answer of category complex."
        assert review_answers(client, items, answers, tmp_path / "r.jsonl", attempts=1, progress=False) == []
        assert len(server.requests) == 6 + 1
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 6


@pytest.fixture(scope="module")
def coco_images(tmp_path_factory, coco_items):
    """Stand-ins for the 30 COCO val2014 images, under their released file names, in distinct colours."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("val2014")
    for index, name in enumerate(sorted({item["image"] for item in coco_items})):
        Image.new("RGB", (48 + index, 40), (index * 8, 255 - index * 8, 90)).save(folder / name)
    return folder


def test_run_answers_reviews_and_reports(tmp_path, tiny_dir, bench_dir, coco_images):
    with OpenAIServer(lambda request: "7 5\nFine.") as server:
        code = main(["llava-bench", "run", "--bench-dir", str(bench_dir), "--image-folder", str(coco_images),
                     "--model", str(tiny_dir), "--answers", str(tmp_path / "answers.jsonl"), "--limit", "6",
                     "--batch-size", "4", "--max-new-tokens", "6", "--reviews", str(tmp_path / "reviews.jsonl"),
                     "--output", str(tmp_path / "report.json"), "--markdown", str(tmp_path / "report.md"),
                     "--judge-base-url", server.base_url, "--judge-model", "judge", "--no-progress"])
    assert code == 0
    answers = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert [a["question_id"] for a in answers] == [0, 1, 2, 3, 4, 5]
    assert all(set(a) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"} for a in answers)
    report = json.loads((tmp_path / "report.json").read_text())["categories"]
    assert report["all"] == {"n": 6, "reference": 7.0, "candidate": 5.0, "relative": pytest.approx(500 / 7),
                             "failures": 0, "unanswered": 84}
    assert "| All | 71.4 | 7.00 | 5.00 | 6 | 0 | 84 |" in (tmp_path / "report.md").read_text()


def test_local_judge_replies_that_do_not_parse_are_failures_not_scores(tmp_path, bench_dir, coco_items):
    """A local transformers judge (a tiny random Llama with a chat template) writes no readable scores: every
    answered question is reported as a failure, none is scored, and the command says so with its exit code."""
    from transformers import AutoTokenizer

    from transformers_llava import load_chat_template
    from transformers_llava.demo.tiny import save_tiny_towers

    _, text_dir = save_tiny_towers(tmp_path / "towers")
    tokenizer = AutoTokenizer.from_pretrained(text_dir)
    tokenizer.chat_template = load_chat_template("vicuna_v1")
    tokenizer.save_pretrained(text_dir)
    candidate_answers(coco_items[:3], tmp_path / "answers.jsonl")
    code = main(["llava-bench", "review", "--bench-dir", str(bench_dir), "--answers", str(tmp_path / "answers.jsonl"),
                 "--reviews", str(tmp_path / "reviews.jsonl"), "--output", str(tmp_path / "report.json"),
                 "--judge-local", str(text_dir), "--judge-max-tokens", "6", "--attempts", "2", "--no-progress"])
    assert code == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["categories"]["all"] == {"n": 0, "reference": None, "candidate": None, "relative": None,
                                           "failures": 3, "unanswered": 87}
    assert [f["attempts"] for f in report["failure_details"]] == [2, 2, 2]
    assert not (tmp_path / "reviews.jsonl").read_text()
