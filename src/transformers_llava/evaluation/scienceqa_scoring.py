"""ScienceQA scoring: the original's answer extraction, accuracy, and the paper's Table 7 breakdown.

    from transformers_llava.evaluation.scienceqa_scoring import score, table7
    result = score(problems, outputs)          # {acc, correct, count, results, outputs, fallbacks}
    table = table7(problems, result["results"])  # NAT SOC LAN TXT IMG NO G1-6 G7-12 Avg

or `transformers-llava eval scienceqa score --base-dir DIR --answers answers.jsonl --output result.json`.

Extraction is the one that produced the paper's numbers (`llava/eval/eval_science_qa.py` of that time): find
every match of the regular expression `The answer is ([A-Z]).` in the model's text — where `.` is any character
but a newline, not a literal full stop — and take the letter if there is exactly one match and it names one of the
problem's choices. Otherwise the original drew `random.choice(range(n_choices))`, unseeded. That is the one
ill-defined case; here the draw is seeded per question (`random.Random(f"{seed}:{pid}")`) so a score is
reproducible, and every such question is listed in `fallbacks` with the reason. The original also drew twice for
such a question — once for the accuracy, once for the stored `results` — so its two could disagree; here one draw
serves both.

On LLaVA-13B's released outputs (4,241 test questions) exactly one question takes the fallback: pid 3247, whose
text ends "The answer is D." on a two-choice question; the released `results` hold 1 for it, and the seeded draw
(seed 0) also gives 1 — a coin that happens to land the same way, stated as such in the tests.
"""

import json
import random
import re
from collections import Counter
from pathlib import Path

from .jsonl_store import JsonlStore
from ..formats.scienceqa import OPTIONS

ANSWER_PATTERN = re.compile(r"The answer is ([A-Z]).")
TABLE7_COLUMNS = ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12", "Avg")
SUBJECT_COLUMNS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}


def answer_letter(text: str) -> str | None:
    """The letter of "The answer is X" when the text holds exactly one such phrase, else None."""
    matches = ANSWER_PATTERN.findall(text)
    return matches[0] if len(matches) == 1 else None


def fallback_index(pid: str, n_choices: int, seed: int = 0) -> int:
    """The seeded stand-in for the original's unseeded `random.choice(range(n_choices))`."""
    return random.Random(f"{seed}:{pid}").choice(range(n_choices))


def extract_answer(pid: str, text: str, n_choices: int, seed: int = 0) -> tuple[int, str | None]:
    """(choice index, None) when the text names a valid choice, else (seeded random index, the reason)."""
    letter = answer_letter(text)
    if letter is not None and letter in OPTIONS[:n_choices]:
        return OPTIONS.index(letter), None
    if letter is None:
        count = len(ANSWER_PATTERN.findall(text))
        reason = f"{count} matches of 'The answer is X' (need exactly 1)"
    else:
        reason = f"letter {letter} is not among the {n_choices} choices"
    return fallback_index(pid, n_choices, seed), reason


def accuracy(correct: int, count: int) -> float:
    """Percent correct, unrounded (the original stored `correct / total * 100`)."""
    return correct / count * 100 if count else 0.0


def score(problems: dict[str, dict], outputs: dict[str, str], seed: int = 0, allow_missing: bool = False) -> dict:
    """The original's result file for `outputs` ({pid: model text}) on `problems` ({pid: problem}).

    A problem without an output is an error naming how many and which; with `allow_missing` it is skipped as the
    original skipped it (and counted under `missing`).
    """
    missing = [pid for pid in problems if pid not in outputs]
    if missing and not allow_missing:
        raise KeyError(f"{len(missing)} of {len(problems)} problems have no model output, e.g. pids {missing[:5]}")
    results, fallbacks, correct = {}, [], 0
    for pid, problem in problems.items():
        if pid not in outputs:
            continue
        index, reason = extract_answer(pid, outputs[pid], len(problem["choices"]), seed)
        results[pid] = index
        correct += index == problem["answer"]
        if reason:
            fallbacks.append({"pid": pid, "reason": reason, "drawn": index})
    return {
        "acc": accuracy(correct, len(results)), "correct": correct, "count": len(results),
        "results": results, "outputs": {pid: outputs[pid] for pid in results},
        "fallbacks": fallbacks, "missing": missing, "seed": seed,
    }


def table7_columns(problem: dict) -> list[str]:
    """The Table 7 columns one problem counts in (besides Avg): subject, context modality, grade band."""
    columns = [SUBJECT_COLUMNS[problem["subject"]]] if problem["subject"] in SUBJECT_COLUMNS else []
    has_text, has_image = bool(problem["hint"]), bool(problem["image"])
    columns += ["TXT"] * has_text + ["IMG"] * has_image + ["NO"] * (not has_text and not has_image)
    grade = int(str(problem["grade"]).removeprefix("grade"))
    columns.append("G1-6" if grade <= 6 else "G7-12")
    return columns


def table7(problems: dict[str, dict], results: dict[str, int]) -> dict[str, dict]:
    """`{column: {acc, correct, count}}` over the problems that have a result, in the paper's column order."""
    correct, count = Counter(), Counter()
    for pid, index in results.items():
        problem = problems[pid]
        for column in table7_columns(problem) + ["Avg"]:
            count[column] += 1
            correct[column] += index == problem["answer"]
    return {c: {"acc": accuracy(correct[c], count[c]), "correct": correct[c], "count": count[c]} for c in TABLE7_COLUMNS}


def table7_markdown(rows: dict[str, dict[str, dict]]) -> str:
    """A Markdown table like the paper's Table 7: one row per method, accuracies to two decimals."""
    lines = ["| Method | " + " | ".join(TABLE7_COLUMNS) + " |", "|---" * (len(TABLE7_COLUMNS) + 1) + "|"]
    for name, table in rows.items():
        cells = [f"{table[c]['acc']:.2f}" if table[c]["count"] else "–" for c in TABLE7_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def load_outputs(path: str | Path) -> dict[str, str]:
    """Model texts by pid from an answers JSONL (`{question_id, text}` per line) or a result JSON (`outputs`)."""
    path = Path(path)
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if "outputs" not in data:
            raise KeyError(f"{path}: a result JSON needs an `outputs` object {{pid: text}}")
        return {str(pid): output for pid, output in data["outputs"].items()}
    records = JsonlStore(path, key="question_id").load()
    for key, record in records.items():
        if "text" not in record:
            raise KeyError(f"{path}: the answer to question {key} has no `text`")
    return {key: record["text"] for key, record in records.items()}
