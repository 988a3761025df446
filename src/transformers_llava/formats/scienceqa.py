"""ScienceQA as LLaVA conversations: load `problems.json` + `pid_splits.json`, build the paper's prompt formats.

    from transformers_llava.formats.scienceqa import load_scienceqa, to_llava_records
    problems = load_scienceqa("ScienceQA/data/scienceqa", "train")
    records = to_llava_records(problems, "QCM-LEPA")      # LLaVA JSON: {id, image?, conversations}

or `transformers-llava eval scienceqa convert --base-dir DIR --split train --prompt-format QCM-LEPA --output F`.

A prompt format is `INPUT-OUTPUT`, named as in the original conversion (`scripts/convert_sqa_to_llava*.py`):
the input is `QCM` (question, context, multiple-choice options `(A) ... (B) ...`) or `CQM`; the output places the
lecture (L) and the solution (E) before the answer ("reasoning first": `LEPA`, the paper's best, or `LEA`, `LA`,
...) or after it ("answer first": `ALE`, `A`, ...). `LEPA` is the format of the released ScienceQA model:

    LECTURE: <lecture>\\nSOLUTION: <solution>\\n###\\nANSWER: <letter>.

The strings are built exactly as the original built them, quirks included, so that a model trained here sees the
same text as one trained there; each quirk is named where it happens.
"""

import json
from pathlib import Path

import datasets

from .llava_json import IMAGE_TOKEN as IMAGE_PLACEHOLDER

OPTIONS = ("A", "B", "C", "D", "E")
REQUIRED_FIELDS = ("question", "choices", "answer", "hint", "image", "grade", "subject", "lecture", "solution")

INPUT_TEMPLATES = {
    "QCM": "Question: {question}\nContext: {context}\nOptions: {choices}\n",
    "CQM": "Context: {context}\nQuestion: {question}\nOptions: {choices}\n",
}
# Output formats of the original. (sic) There "AL" appends the solution and "AE" the lecture, the reverse of the
# letters elsewhere (L = lecture, E = explanation/solution); kept so that a format name means the same data.
OUTPUT_TEMPLATES = {
    "A": "Answer: The answer is {answer}.",
    "AL": "Answer: The answer is {answer}. BECAUSE: {solution}",
    "AE": "Answer: The answer is {answer}. BECAUSE: {lecture}",
    "ALE": "Answer: The answer is {answer}. BECAUSE: {lecture} {solution}",
    "AEL": "Answer: The answer is {answer}. BECAUSE: {solution} {lecture}",
    "LA": "Answer: {lecture} The answer is {answer}.",
    "EA": "Answer: {solution} The answer is {answer}.",
    "LEA": "Answer: {lecture} {solution} The answer is {answer}.",
    "ELA": "Answer: {solution} {lecture} The answer is {answer}.",
    "LEPA": None,  # line-based, see `target_text`
}


def load_scienceqa(base_dir: str | Path, split: str) -> dict[str, dict]:
    """The problems of one split, `{pid: problem}` in `pid_splits.json` order, each checked for the fields used."""
    base_dir = Path(base_dir)
    problems_path, splits_path = base_dir / "problems.json", base_dir / "pid_splits.json"
    for path in (problems_path, splits_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: --base-dir must hold ScienceQA's problems.json and pid_splits.json")
    splits = json.loads(splits_path.read_text(encoding="utf-8"))
    if split not in splits:
        raise KeyError(f"{splits_path}: no split {split!r}; it has {', '.join(sorted(splits))}")
    problems = json.loads(problems_path.read_text(encoding="utf-8"))
    missing = [pid for pid in splits[split] if pid not in problems]
    if missing:
        raise KeyError(f"{problems_path}: {len(missing)} pid(s) of split {split!r} are absent, e.g. {missing[:5]}")
    selected = {pid: problems[pid] for pid in splits[split]}
    for pid, problem in selected.items():
        check_problem(pid, problem, problems_path)
    return selected


def check_problem(pid: str, problem: dict, source) -> None:
    """Fail with the file, pid and field when a problem cannot be turned into a prompt or scored."""
    absent = [field for field in REQUIRED_FIELDS if field not in problem]
    if absent:
        raise ValueError(f"{source}: problem {pid} lacks field(s) {', '.join(absent)}")
    n_choices = len(problem["choices"])
    if not 2 <= n_choices <= len(OPTIONS):
        raise ValueError(f"{source}: problem {pid} has {n_choices} choices; ScienceQA has 2 to {len(OPTIONS)}")
    if not 0 <= problem["answer"] < n_choices:
        raise ValueError(f"{source}: problem {pid} has answer index {problem['answer']} but {n_choices} choices")


def parse_prompt_format(prompt_format: str) -> tuple[str, str]:
    """`"QCM-LEPA"` -> `("QCM", "LEPA")`, or a clear error naming the known parts."""
    input_format, _, output_format = prompt_format.partition("-")
    if input_format not in INPUT_TEMPLATES or output_format not in OUTPUT_TEMPLATES:
        raise ValueError(
            f"Unknown prompt format {prompt_format!r}: expected INPUT-OUTPUT with INPUT in "
            f"{', '.join(INPUT_TEMPLATES)} and OUTPUT in {', '.join(OUTPUT_TEMPLATES)} (e.g. QCM-LEPA)."
        )
    return input_format, output_format


def context_text(problem: dict, use_caption: bool = False) -> str:
    """The hint (plus the image caption when asked and present), or "N/A"."""
    caption = problem.get("caption", "") if use_caption else ""
    return " ".join([problem["hint"] or "", caption or ""]).strip() or "N/A"


def options_text(choices: list[str]) -> str:
    """`(A) first (B) second ...`"""
    return " ".join(f"({letter}) {choice}" for letter, choice in zip(OPTIONS, choices))


def reasoning_text(text: str | None) -> str:
    # The original escaped newlines to "\\n" and then unescaped every "\\n", so a literal backslash-n in the
    # data also became a newline; the net effect is this one replacement.
    return (text or "").replace("\\n", "\n")


def tidy(text: str) -> str:
    # As the original: one pass of double-space collapsing, strip, and drop "BECAUSE:" (every occurrence) when
    # the text ends with an empty "BECAUSE:".
    text = text.replace("  ", " ").strip()
    if text.endswith("BECAUSE:"):
        text = text.replace("BECAUSE:", "").strip()
    return text


def target_text(problem: dict, output_format: str) -> str:
    """The assistant turn of one problem in one output format, before the "Answer: " prefix is removed."""
    answer = OPTIONS[problem["answer"]]
    lecture, solution = reasoning_text(problem["lecture"]), reasoning_text(problem["solution"])
    if output_format != "LEPA":
        return OUTPUT_TEMPLATES[output_format].format(answer=answer, lecture=lecture, solution=solution)
    text = f"LECTURE: {lecture}\n" if lecture.strip() else ""
    text += f"SOLUTION: {solution}\n" if solution.strip() else ""
    return text + f"###\nANSWER: {answer}."


def prompt_pair(problem: dict, prompt_format: str = "QCM-LEPA", use_caption: bool = False) -> tuple[str, str]:
    """(human text, assistant text) of one problem, exactly as the original LLaVA conversion wrote them."""
    input_format, output_format = parse_prompt_format(prompt_format)
    human = tidy(INPUT_TEMPLATES[input_format].format(
        question=problem["question"], context=context_text(problem, use_caption), choices=options_text(problem["choices"])
    ))
    target = tidy(target_text(problem, output_format))
    # (sic) The original removed the prefixes with str.replace, i.e. every occurrence of "Question: " in the
    # human text and of "Answer: " in the target, not only the leading one.
    if human.startswith("Question: "):
        human = human.replace("Question: ", "")
    if target.startswith("Answer: "):
        target = target.replace("Answer: ", "")
    return human, target


def llava_example(example: dict, prompt_format: str = "QCM-LEPA", use_caption: bool = False) -> dict:
    """One ScienceQA problem (with its `pid`) -> one LLaVA record: `{id, image, conversations}`.

    The image (if any) is `<pid>/<file>` under the split's image folder and `<image>` follows the text, as in the
    original's JSON; text-only problems get `image: None`.
    """
    human, target = prompt_pair(example, prompt_format, use_caption)
    image = f"{example['pid']}/{example['image']}" if example["image"] else None
    if image:
        human = f"{human}\n{IMAGE_PLACEHOLDER}"
    return {"id": example["pid"], "image": image,
            "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": target}]}


def to_llava_records(problems: dict[str, dict], prompt_format: str = "QCM-LEPA", use_caption: bool = False) -> list[dict]:
    """All problems as LLaVA JSON records (text-only ones without an `image` key, as the original wrote them)."""
    parse_prompt_format(prompt_format)
    columns = ("question", "choices", "answer", "hint", "image", "lecture", "solution") + (("caption",) if use_caption else ())
    rows = [{"pid": pid, **{k: problem.get(k) for k in columns}} for pid, problem in problems.items()]
    dataset = datasets.Dataset.from_list(rows).map(
        llava_example, fn_kwargs={"prompt_format": prompt_format, "use_caption": use_caption},
        remove_columns=list(rows[0]) if rows else None,
    )
    return [
        {"id": r["id"], **({"image": r["image"]} if r["image"] else {}), "conversations": r["conversations"]}
        for r in dataset
    ]


def question_text(record: dict) -> str:
    """The question a model is asked at evaluation: the human turn without its `<image>` placeholder."""
    return record["conversations"][0]["value"].replace(IMAGE_PLACEHOLDER, "").strip()
