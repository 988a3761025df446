"""The paper's two ways of combining LLaVA with a text-only judge model (GPT-4) on ScienceQA.

    transformers-llava eval scienceqa combine --scheme complement --base-dir DIR --answers ours.jsonl \\
        --judge-outputs gpt4.json --output combined.json
    transformers-llava eval scienceqa combine --scheme judge ... --judge-base-url URL --judge-model gpt-4 \\
        --requery requery.jsonl

- "complement": where the judge model gives no answer (its text has not exactly one "The answer is X"), take
  LLaVA's; elsewhere the judge model's (as `llava/eval/eval_science_qa_gpt4.py`).
- "judge": where both answered and the answers differ, ask the judge model again with the question and both
  answers for its own final answer; take that answer, or LLaVA's where the re-query gives none (as the
  original's `eval_science_qa_gpt4_requery.py` combined them). The original re-query prompt was not released;
  `requery_messages` is this project's wording, with the system message the original used for GPT-4 on ScienceQA.

Each re-query is written to a resumable JSONL as soon as it returns, so a crash loses nothing and a re-run only asks
what is still missing. Letters outside a problem's choices fall back to the same seeded draw as the scorer.
"""

from pathlib import Path

from tqdm.auto import tqdm

from .jsonl_store import JsonlStore
from ..formats.scienceqa import OPTIONS, prompt_pair
from .scienceqa_scoring import accuracy, answer_letter, extract_answer

SCHEMES = ("complement", "judge")
REQUERY_SYSTEM = "You are a helpful assistant."


def requery_messages(problem: dict, ours: str, theirs: str) -> list[dict]:
    """The chat asking the judge model for a final answer given the question and two disagreeing answers."""
    question = prompt_pair(problem, "QCM-A")[0]
    letters = ", ".join(OPTIONS[: len(problem["choices"])])
    return [
        {"role": "system", "content": REQUERY_SYSTEM},
        {"role": "user", "content": (
            "Here is a multiple-choice science question and two answers to it that disagree.\n\n"
            f"Question: {question}\n\nAnswer 1:\n{ours}\n\nAnswer 2:\n{theirs}\n\n"
            "Considering the question and both answers, give your own final answer. Explain briefly, then end with "
            f'"The answer is X." where X is one of {letters}.'
        )},
    ]


def aligned(problems: dict, ours: dict, theirs: dict) -> None:
    for name, outputs in (("LLaVA answers", ours), ("judge-model outputs", theirs)):
        missing = [pid for pid in problems if pid not in outputs]
        if missing:
            raise KeyError(f"{len(missing)} of {len(problems)} problems have no {name}, e.g. pids {missing[:5]}")


def summary(problems: dict, results: dict, **counts) -> dict:
    correct = sum(results[pid] == problems[pid]["answer"] for pid in results)
    return {"acc": accuracy(correct, len(results)), "correct": correct, "count": len(results), "results": results, **counts}


def complement(problems: dict, ours: dict[str, str], theirs: dict[str, str], seed: int = 0) -> dict:
    """The judge model's answer, or LLaVA's where the judge model gave none."""
    aligned(problems, ours, theirs)
    results, judge_failed = {}, 0
    for pid, problem in problems.items():
        n = len(problem["choices"])
        if answer_letter(theirs[pid]) is None:
            judge_failed += 1
            results[pid] = extract_answer(pid, ours[pid], n, seed)[0]
        else:
            results[pid] = extract_answer(pid, theirs[pid], n, seed)[0]
    return summary(problems, results, scheme="complement", judge_failed=judge_failed)


def disagreements(problems: dict, ours: dict[str, str], theirs: dict[str, str], seed: int = 0) -> list[str]:
    """Problems where the judge model answered and its answer differs from LLaVA's."""
    aligned(problems, ours, theirs)
    return [
        pid for pid, problem in problems.items()
        if answer_letter(theirs[pid]) is not None
        and extract_answer(pid, theirs[pid], len(problem["choices"]), seed)[0]
        != extract_answer(pid, ours[pid], len(problem["choices"]), seed)[0]
    ]


def judge(problems: dict, ours: dict[str, str], theirs: dict[str, str], client, requery_path: str | Path,
          seed: int = 0, progress: bool = True, **params) -> dict:
    """Re-query `client` (a chat client: `.complete(messages, **params).text`) where the answers differ."""
    to_ask = disagreements(problems, ours, theirs, seed)
    store = JsonlStore(requery_path, key="question_id")
    done = store.load()
    with store.appender() as append:
        for pid in tqdm([p for p in to_ask if p not in done], desc="re-querying the judge", disable=not progress):
            messages = requery_messages(problems[pid], ours[pid], theirs[pid])
            text = client.complete(messages, **params).text
            done[pid] = {"question_id": pid, "text": text, "prompt": messages[-1]["content"]}
            append(done[pid])
    results, requery_failed = {}, 0
    for pid, problem in problems.items():
        n = len(problem["choices"])
        ours_index = extract_answer(pid, ours[pid], n, seed)[0]
        if pid in to_ask and answer_letter(done[pid]["text"]) is not None:
            results[pid] = extract_answer(pid, done[pid]["text"], n, seed)[0]
        else:
            requery_failed += pid in to_ask
            results[pid] = ours_index
    return summary(problems, results, scheme="judge", requeried=len(to_ask), requery_failed=requery_failed)
