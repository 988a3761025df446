"""LLaVA-Bench inputs as released, and the judge prompt built exactly as the original built it.

    from transformers_llava.evaluation.llava_bench_data import bench_files, load_bench, judge_messages
    items = load_bench(**bench_files("coco", "llava_bench_coco/"))     # or "wild" for In-the-Wild
    messages = judge_messages(items[0], "the candidate's answer")

Two flavours, the same file formats and flow:

- `coco` — LLaVA-Bench (COCO): `qa90_questions.jsonl` `{question_id, image, text, category}`,
  `qa90_gpt4_answer.jsonl` (the text-only GPT-4 reference answers), `caps_boxes_coco2014_val_80.jsonl`
  `{image, captions[5], instances[{category, bbox}]}` and `rule.json`. The judge's context is the five captions,
  a blank line, and one `category: [x1, y1, x2, y2]` line per box; the rule is the question's category.
- `wild` — LLaVA-Bench (In-the-Wild): `questions.jsonl`, `answers_gpt4.jsonl`, `context.jsonl` `{image, caption}`
  and the same `rule.json`. The context is the caption alone; the rule is `llava_bench_<category>`.

The prompt (`llava/eval/eval_gpt_review_visual.py` / `eval_gpt_review_bench.py`):

    [Context]\\n<context>\\n\\n[Question]\\n<question>\\n\\n[Assistant 1]\\n<reference>\\n\\n[End of Assistant 1]\\n\\n
    [Assistant 2]\\n<candidate>\\n\\n[End of Assistant 2]\\n\\n[System]\\n<rule prompt>\\n\\n

with "Assistant" being the rule's `role`, under the system message below. In-the-Wild's `caption` is used as is
when it is one string (the original joined it with newlines, which for a string puts one between every character)
and joined with newlines when it is a list.
"""

import json
from pathlib import Path

from ..record_store import iter_jsonl

JUDGE_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
CATEGORIES = ("conv", "detail", "complex")
FLAVOURS = {
    "coco": {"questions": "qa90_questions.jsonl", "references": "qa90_gpt4_answer.jsonl",
             "context": "caps_boxes_coco2014_val_80.jsonl", "rules": "rule.json"},
    "wild": {"questions": "questions.jsonl", "references": "answers_gpt4.jsonl",
             "context": "context.jsonl", "rules": "rule.json"},
}


def bench_files(flavour: str, bench_dir: str | Path | None = None, **overrides) -> dict:
    """The four input paths of a flavour: the released names under `bench_dir`, each overridable."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown LLaVA-Bench flavour {flavour!r}; known: {', '.join(FLAVOURS)}")
    files = {}
    for role, name in FLAVOURS[flavour].items():
        path = overrides.get(role) or (Path(bench_dir) / name if bench_dir else None)
        if path is None:
            raise ValueError(f"no {role} file: give --bench-dir (holding {name}) or --{role}")
        files[role] = Path(path)
    return {"flavour": flavour, **files}


def read_jsonl(path: str | Path) -> list[dict]:
    """Every line of a JSONL file as a dict; a bad line is reported with its number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    return [record for _, record in iter_jsonl(path)]


def coco_context(entry: dict) -> str:
    """Five captions, a blank line, then `category: [x1, y1, x2, y2]` per instance (Python's list formatting)."""
    captions = "\n".join(entry["captions"])
    boxes = "\n".join(f"{instance['category']}: {instance['bbox']}" for instance in entry["instances"])
    return f"{captions}\n\n{boxes}"


def wild_context(entry: dict) -> str:
    caption = entry["caption"]
    return caption if isinstance(caption, str) else "\n".join(caption)


def rule_key(flavour: str, category: str) -> str:
    return category if flavour == "coco" else f"llava_bench_{category}"


def load_bench(flavour: str, questions, references, context, rules) -> list[dict]:
    """Questions joined with their reference answer, judge context and rule; errors name file and question."""
    references_by_id = {str(r["question_id"]): r for r in read_jsonl(references)}
    context_by_image = {entry["image"]: entry for entry in read_jsonl(context)}
    rule_dict = json.loads(Path(rules).read_text(encoding="utf-8"))
    render_context = coco_context if flavour == "coco" else wild_context
    items = []
    for question in read_jsonl(questions):
        qid, category = question["question_id"], question["category"]
        if str(qid) not in references_by_id:
            raise KeyError(f"{references}: no reference answer for question {qid}")
        if question["image"] not in context_by_image:
            raise KeyError(f"{context}: no context for image {question['image']} (question {qid})")
        key = rule_key(flavour, category)
        if key not in rule_dict:
            raise KeyError(f"{rules}: no rule {key!r} for question {qid} (category {category!r}); "
                           f"it has {', '.join(rule_dict)}")
        reference = references_by_id[str(qid)]
        items.append({
            "question_id": qid, "image": question["image"], "text": question["text"], "category": category,
            "reference": reference["text"], "reference_id": reference.get("answer_id", reference["question_id"]),
            "context": render_context(context_by_image[question["image"]]),
            "role": rule_dict[key]["role"], "rule": rule_dict[key]["prompt"],
        })
    return items


def judge_content(item: dict, candidate: str) -> str:
    """The user message of one review: context, question, reference (1), candidate (2), the category's rule."""
    role = item["role"]
    return (f"[Context]\n{item['context']}\n\n"
            f"[Question]\n{item['text']}\n\n"
            f"[{role} 1]\n{item['reference']}\n\n[End of {role} 1]\n\n"
            f"[{role} 2]\n{candidate}\n\n[End of {role} 2]\n\n"
            f"[System]\n{item['rule']}\n\n")


def judge_messages(item: dict, candidate: str) -> list[dict]:
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": judge_content(item, candidate)}]
