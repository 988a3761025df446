"""ScienceQA: conversion to the paper's prompt formats, the original's answer extraction (conformance on LLaVA-13B's
released outputs), Table 7, and the GPT-4 complement scheme. Fixture problems follow ScienceQA's schema."""

import json
from pathlib import Path

import pytest
from conftest import reference_path

from transformers_llava.formats.scienceqa import load_scienceqa, prompt_pair, question_text, to_llava_records
from transformers_llava.evaluation.scienceqa_gpt4 import complement, disagreements
from transformers_llava.evaluation.scienceqa_scoring import (
    accuracy,
    extract_answer,
    load_outputs,
    score,
    table7,
    table7_markdown,
)

FIXTURES = Path(__file__).parent / "fixtures" / "scienceqa"


@pytest.fixture(scope="module")
def test_problems():
    return load_scienceqa(FIXTURES, "test")


def test_conformance_with_llava_13b_released_results():
    """Every one of the 4,241 extracted answers equals the released `results`.

    The file has no choice counts (they live in problems.json, not available offline); what it implies is enough:
    4,240 texts hold exactly one "The answer is X." whose letter the released result confirms, so their problems
    have at least that many choices (5 is given, the ScienceQA maximum; any count >= the letter gives the same
    index). Pid 3247 ("Is this a run-on sentence?", yes/no) ends "The answer is D." yet its result is 1: D was not
    a choice, so the original drew at random from range(2). That draw is the one ill-defined case; our seeded
    draw (seed 0) gives 1 as well, which is a coin landing the same way, not a property of the method.
    """
    released = json.loads(reference_path("llava", "scienceqa", "test_sqa_llava_13b_v0.json").read_text())
    choices = {pid: 2 if pid == "3247" else 5 for pid in released["outputs"]}
    extracted = {pid: extract_answer(pid, text, choices[pid]) for pid, text in released["outputs"].items()}
    assert len(extracted) == released["count"] == 4241
    mismatched = {pid: (index, released["results"][pid]) for pid, (index, _) in extracted.items()
                  if index != released["results"][pid]}
    assert mismatched == {}
    assert {pid: reason for pid, (_, reason) in extracted.items() if reason} == {
        "3247": "letter D is not among the 2 choices"}
    # The released totals follow the unrounded formula the scorer uses (recounting 3855 needs problems.json).
    assert accuracy(released["correct"], released["count"]) == released["acc"]


@pytest.mark.parametrize("text, n_choices, expected", [
    ("LECTURE: x\n The answer is B.", 3, (1, None)),
    ("The answer is C!", 3, (2, None)),                                  # '.' in the pattern is any character
    ("The answer is A. The answer is A.", 2, "2 matches"),              # exactly one match is required
    ("The answer is A", 2, "0 matches"),                                # nothing after the letter: no match
    ("The answer is A\n", 2, "0 matches"),                              # '.' does not match a newline
    ("ANSWER: B.", 2, "0 matches"),                                     # the LEPA target alone is not parsed
    ("The answer is E.", 4, "letter E is not among the 4 choices"),
])
def test_extraction_follows_the_original_pattern(text, n_choices, expected):
    index, reason = extract_answer("7", text, n_choices)
    if isinstance(expected, tuple):
        assert (index, reason) == expected
    else:
        assert expected in reason and 0 <= index < n_choices


def test_fallback_draw_is_seeded_per_question():
    draws = {seed: [extract_answer(str(pid), "no answer", 5, seed)[0] for pid in range(40)] for seed in (0, 1)}
    assert draws[0] == [extract_answer(str(pid), "no answer", 5, 0)[0] for pid in range(40)]
    assert draws[0] != draws[1] and set(draws[0]) == set(range(5))


def test_reasoning_first_target_with_image(test_problems):
    record = next(r for r in to_llava_records(test_problems, "QCM-LEPA") if r["id"] == "27")
    assert record["image"] == "27/image.png"
    human, gpt = (turn["value"] for turn in record["conversations"])
    assert human == (
        "Which animal's feet are also adapted for walking on snow?\n"
        "Context: Snowshoe hares live in cold places. The snowshoe hare's feet are adapted for walking on snow.\n"
        "Figure: snowshoe hare.\n"
        "Options: (A) Eurasian lynx (B) camel (C) brown pelican\n<image>")
    assert gpt == (
        "LECTURE: An adaptation is an inherited trait that helps an organism survive or reproduce. "
        "Adaptations can include both body parts and behaviors.\n"            # double space collapsed
        "SOLUTION: Look at the picture of the snowshoe hare.\n"
        "The Eurasian lynx has large, furry feet. Its feet are adapted for walking on snow.\n###\nANSWER: A.")
    assert question_text(record) == human.removesuffix("\n<image>")


def test_text_only_problem_has_no_image_and_empty_parts_are_dropped(test_problems):
    records = {r["id"]: r for r in to_llava_records(test_problems, "QCM-LEPA")}
    assert "image" not in records["42"]
    assert records["42"]["conversations"][1]["value"] == (
        "LECTURE: Solid, liquid, and gas are states of matter. Matter is anything that takes up space.\n###\n"
        "ANSWER: C.")
    assert records["15"]["conversations"][0]["value"].endswith("Context: N/A\nOptions: (A) dozen (B) dainty")


def test_answer_first_and_context_first_formats(test_problems):
    problem = test_problems["3247"]
    assert prompt_pair(problem, "QCM-ALE")[1] == (
        "The answer is A. BECAUSE: A sentence is a group of words that forms a complete thought. It has both a "
        "subject and a verb. The fog made it hard to see, Dad drove slowly is a run-on sentence. It has two "
        "sentences that are joined by just a comma.")
    assert prompt_pair(problem, "QCM-A")[1] == "The answer is A."
    assert prompt_pair(problem, "CQM-A")[0] == (
        "Context: N/A\nQuestion: Is this a run-on sentence?\nThe fog made it hard to see, Dad drove slowly.\n"
        "Options: (A) yes (B) no")
    assert prompt_pair(test_problems["11"], "QCM-LEA")[1].startswith("The colony is New Hampshire.")


def test_escaped_newlines_in_lectures_become_newlines():
    train = load_scienceqa(FIXTURES, "train")
    assert "happening now.\nFuture tense" in prompt_pair(train["100"], "QCM-LEPA")[1]
    assert prompt_pair(train["101"], "QCM-LEPA")[1] == "###\nANSWER: B."


def test_bad_inputs_name_the_file_and_the_problem(tmp_path, test_problems):
    with pytest.raises(ValueError, match="Unknown prompt format 'QCM-XYZ'"):
        to_llava_records(test_problems, "QCM-XYZ")
    with pytest.raises(KeyError, match="no split 'dev'"):
        load_scienceqa(FIXTURES, "dev")
    broken = {pid: dict(p) for pid, p in json.loads((FIXTURES / "problems.json").read_text()).items()}
    broken["42"]["answer"] = 7
    (tmp_path / "problems.json").write_text(json.dumps(broken))
    (tmp_path / "pid_splits.json").write_text((FIXTURES / "pid_splits.json").read_text())
    with pytest.raises(ValueError, match="problem 42 has answer index 7 but 5 choices"):
        load_scienceqa(tmp_path, "test")


def test_table7_columns(test_problems):
    # pid: subject / context / grade -> which columns it counts in; three of six answered correctly.
    predictions = {"4": 1, "11": 1, "15": 0, "27": 0, "42": 0, "3247": 1}
    table = table7(test_problems, predictions)
    counts = {column: (row["correct"], row["count"]) for column, row in table.items()}
    assert counts == {
        "NAT": (1, 2), "SOC": (1, 1), "LAN": (1, 3), "TXT": (2, 2), "IMG": (2, 2), "NO": (0, 3),
        "G1-6": (2, 4), "G7-12": (1, 2), "Avg": (3, 6),
    }
    assert table["Avg"]["acc"] == 50.0
    assert table7_markdown({"LLaVA": table}).splitlines()[2] == (
        "| LLaVA | 50.00 | 100.00 | 33.33 | 100.00 | 100.00 | 0.00 | 50.00 | 50.00 | 50.00 |")


def test_score_from_answers_file_and_missing_answers(tmp_path, test_problems):
    answers = tmp_path / "answers.jsonl"
    texts = {"4": "The answer is B.", "11": "x\n The answer is B.", "15": "The answer is A.", "27": "The answer is A.",
             "42": "The answer is C.", "3247": "The answer is D."}
    answers.write_text("".join(json.dumps({"question_id": pid, "text": t}) + "\n" for pid, t in texts.items()))
    result = score(test_problems, load_outputs(answers))
    assert (result["correct"], result["count"]) == (5 if result["results"]["3247"] == 0 else 4, 6)
    assert [f["pid"] for f in result["fallbacks"]] == ["3247"]
    del texts["42"]
    with pytest.raises(KeyError, match="1 of 6 problems have no model output"):
        score(test_problems, texts)
    assert score(test_problems, texts, allow_missing=True)["count"] == 5


def test_complement_uses_ours_only_where_the_judge_gave_no_answer(test_problems):
    ours = {pid: f"The answer is {'B' if pid in ('4', '11') else 'A'}." for pid in test_problems}
    judge = dict(ours, **{"4": "I cannot tell from the text alone.", "11": "The answer is A.", "42": "The answer is C."})
    result = complement(test_problems, ours, judge)
    assert result["judge_failed"] == 1
    assert result["results"] == {"4": 1, "11": 0, "15": 0, "27": 0, "42": 2, "3247": 0}
    assert disagreements(test_problems, ours, judge) == ["11", "42"]


def test_cli_convert_then_score_writes_result_and_table7(tmp_path, capsys):
    from transformers_llava.evaluation.cli import main

    assert main(["scienceqa", "convert", "--base-dir", str(FIXTURES), "--split", "test", "--output",
                 str(tmp_path / "llava_test.json")]) == 0
    records = json.loads((tmp_path / "llava_test.json").read_text())
    assert [r["id"] for r in records] == ["4", "11", "15", "27", "42", "3247"]
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": r["id"], "text": "x\n The answer is A."}) + "\n"
                               for r in records))
    assert main(["scienceqa", "score", "--base-dir", str(FIXTURES), "--answers", str(answers), "--output",
                 str(tmp_path / "result.json"), "--markdown", str(tmp_path / "table7.md")]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert (result["correct"], result["count"]) == (2, 6)             # pids 27 and 3247 have answer A
    assert result["table7"]["NO"] == {"acc": pytest.approx(100 / 3), "correct": 1, "count": 3}
    assert (tmp_path / "table7.md").read_text().splitlines()[2] == (
        "| LLaVA | 50.00 | 0.00 | 33.33 | 50.00 | 50.00 | 33.33 | 50.00 | 0.00 | 33.33 |")


def test_judge_scheme_requeries_disagreements_over_http_and_resumes(tmp_path, test_problems):
    from openai_server import OpenAIServer, Status

    from transformers_llava.evaluation.cli import main

    ours = {pid: "The answer is A." for pid in test_problems}
    theirs = dict(ours, **{"4": "The answer is B.", "42": "The answer is C.", "11": "No idea."})
    for name, outputs in (("ours.json", ours), ("theirs.json", theirs)):
        (tmp_path / name).write_text(json.dumps({"outputs": outputs}))

    def final_answer(request):                  # the re-query shows the question: pick B for pid 4, nothing for 42
        content = request.body["messages"][-1]["content"]
        return "Answer 2 is right. The answer is B." if "figure of speech" in content else "I am unsure."

    argv = ["scienceqa", "combine", "--scheme", "judge", "--base-dir", str(FIXTURES), "--answers",
            str(tmp_path / "ours.json"), "--judge-outputs", str(tmp_path / "theirs.json"), "--requery",
            str(tmp_path / "requery.jsonl"), "--output", str(tmp_path / "combined.json"), "--judge-model", "judge"]
    with OpenAIServer(final_answer) as server:
        argv += ["--judge-base-url", server.base_url]
        server.inject(Status(500))
        assert main([*argv, "--judge-max-retries", "0"]) == 1      # the judge is down: stop, keep what was asked
        assert not (tmp_path / "requery.jsonl").read_text()
        server.inject(Status(503))
        assert main(argv) == 0
        assert len(server.requests) == 1 + 1 + 2     # the 500, one 503 retried, then pids 4 and 42
        assert "Answer 1:\nThe answer is A.\n\nAnswer 2:\nThe answer is B." in server.requests[2].body["messages"][1]["content"]
        assert main(argv) == 0
        assert len(server.requests) == 4             # everything was already asked
    result = json.loads((tmp_path / "combined.json").read_text())
    assert result["results"] == {"4": 1, "11": 0, "15": 0, "27": 0, "42": 0, "3247": 0}
    assert (result["requeried"], result["requery_failed"], result["correct"]) == (2, 1, 3)
