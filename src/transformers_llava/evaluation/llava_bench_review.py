"""Asking the judge to score each LLaVA-Bench answer against the reference, resumably.

    from transformers_llava.evaluation.llava_bench_review import review_answers
    failures = review_answers(client, items, answers, "reviews.jsonl", attempts=3, temperature=0.2, max_tokens=1024)

`client` is any chat client of `transformers_llava.chat_client` (an OpenAI-compatible endpoint or a local
transformers model). The judge is asked exactly as the original asked GPT-4 (`llava_bench_data.judge_messages`;
temperature 0.2, up to 1024 tokens). Its scores are read from the first line of its reply: two numbers separated by
a space or a comma — reference (Assistant 1) first, candidate (Assistant 2) second. Where the original stored
[-1, -1] for a reply it could not read and then averaged those in, a reply that does not parse is asked again (up
to `attempts` times) and then reported as a failure, never scored. API faults (timeouts, 429, 5xx, malformed JSON)
are retried with backoff by the client; a request that still fails is a failure too, and the run goes on.

A review line is `{question_id, category, answer1_id, answer2_id, content, tuple: [reference, candidate],
attempts}` (the original's fields plus `attempts`), appended as soon as it is read; a re-run reviews only the
questions without one, so failures are retried and nothing already paid for is asked again.
"""

import math
from pathlib import Path

from ..chat_client import ChatClientError, run_concurrently
from .jsonl_store import JsonlStore
from .llava_bench_data import judge_messages

JUDGE_PARAMS = {"temperature": 0.2, "max_tokens": 1024}


def parse_scores(review: str) -> tuple[float, float] | None:
    """(reference score, candidate score) from the first line of a review, or None when it is not two numbers.

    As the original: commas count as spaces and the line must hold exactly two numbers. Unlike it, surrounding
    whitespace (a leading blank line, doubled spaces) is ignored rather than making the reply unreadable.
    """
    first_line = review.strip().split("\n")[0]
    parts = first_line.replace(",", " ").split()
    if len(parts) != 2:
        return None
    try:
        scores = float(parts[0]), float(parts[1])
    except ValueError:
        return None
    return scores if all(math.isfinite(s) for s in scores) else None


class ReviewFailure(Exception):
    """No readable scores after every attempt; carries the last reply (or the client's error)."""

    def __init__(self, message: str, last_reply: str | None, attempts: int):
        super().__init__(message)
        self.last_reply, self.attempts = last_reply, attempts


def review_one(client, item: dict, answer: dict, attempts: int = 3, **params) -> dict:
    """One review record, asking again while the reply's first line is not two numbers."""
    messages = judge_messages(item, answer["text"])
    reply = None
    for attempt in range(1, attempts + 1):
        try:
            reply = client.complete(messages, **{**JUDGE_PARAMS, **params}).text
        except ChatClientError as error:
            raise ReviewFailure(f"judge request failed: {error}", reply, attempt) from None
        scores = parse_scores(reply)
        if scores is not None:
            return {"question_id": item["question_id"], "category": item["category"],
                    "answer1_id": item["reference_id"], "answer2_id": answer.get("answer_id", answer["question_id"]),
                    "content": reply, "tuple": list(scores), "attempts": attempt}
    first_line = reply.strip().split("\n")[0] if reply else ""
    raise ReviewFailure(f"no two scores on the first line after {attempts} attempts; last: {first_line[:200]!r}",
                        reply, attempts)


def review_answers(client, items: list[dict], answers: dict[str, dict], reviews_path: str | Path, attempts: int = 3,
                   concurrency: int = 1, progress: bool = True, **params) -> list[dict]:
    """Review every answered question without a review yet; returns the failures of this run."""
    store = JsonlStore(reviews_path, key="question_id")
    done = store.load()
    todo = [item for item in items if str(item["question_id"]) in answers and str(item["question_id"]) not in done]
    failures = []

    def review(item):
        return review_one(client, item, answers[str(item["question_id"])], attempts, **params)

    with store.appender() as append:
        for outcome in run_concurrently(review, todo, concurrency, desc="judging", progress=progress):
            if outcome.error is None:
                append(outcome.result)
            elif isinstance(outcome.error, ReviewFailure):
                failures.append({"question_id": outcome.item["question_id"], "category": outcome.item["category"],
                                 "error": str(outcome.error), "attempts": outcome.error.attempts,
                                 "last_reply": outcome.error.last_reply})
            else:
                raise outcome.error
    return failures
