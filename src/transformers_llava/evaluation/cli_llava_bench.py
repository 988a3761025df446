"""`transformers-llava eval llava-bench ...`: answer, review, report — or all three with `run`.

    transformers-llava eval llava-bench run --flavour coco --bench-dir llava_bench_coco/ \\
        --image-folder coco/val2014/ --model CKPT --answers answers.jsonl --reviews reviews.jsonl \\
        --output report.json --markdown report.md --judge-base-url URL --judge-model gpt-4

    transformers-llava eval llava-bench answer ...   # only generate (resumable)
    transformers-llava eval llava-bench review ...   # only judge the answers so far (resumable), then report
    transformers-llava eval llava-bench report ...   # only summarise existing reviews

`--bench-dir` holds the released files of the flavour (coco: qa90_questions.jsonl, qa90_gpt4_answer.jsonl,
caps_boxes_coco2014_val_80.jsonl, rule.json; wild: questions.jsonl, answers_gpt4.jsonl, context.jsonl, rule.json);
`--questions/--references/--context/--rules` override single files. COCO images keep their released names
(`000000441147.jpg`, ...), looked up under `--image-folder`.
"""

import json
from pathlib import Path

from . import judges
from .generation import add_generation_arguments, answer_from_args
from .jsonl_store import JsonlStore
from .llava_bench_data import FLAVOURS, bench_files, load_bench
from .llava_bench_report import report_markdown, summarize
from .llava_bench_review import review_answers


def add_commands(subparsers) -> None:
    answer = subparsers.add_parser("answer", help="generate the model's answers (resumable)")
    add_bench_arguments(answer)
    add_generation_arguments(answer)
    answer.set_defaults(run=run_answer)

    review = subparsers.add_parser("review", help="judge the answers against the references (resumable), report")
    add_bench_arguments(review)
    add_review_arguments(review)
    add_report_arguments(review)
    review.set_defaults(run=run_review)

    report = subparsers.add_parser("report", help="relative scores per category from existing reviews")
    add_bench_arguments(report)
    report.add_argument("--answers", required=True, type=Path)
    report.add_argument("--reviews", required=True, type=Path)
    add_report_arguments(report)
    report.set_defaults(run=run_report)

    run = subparsers.add_parser("run", help="answer, review and report in one go (each step resumes)")
    add_bench_arguments(run)
    add_generation_arguments(run)
    add_review_arguments(run, answers=False)
    add_report_arguments(run)
    run.set_defaults(run=run_all)


def add_bench_arguments(parser) -> None:
    parser.add_argument("--flavour", choices=tuple(FLAVOURS), default="coco", help="coco or wild (In-the-Wild)")
    parser.add_argument("--bench-dir", type=Path, help="folder with the flavour's released files")
    for role in ("questions", "references", "context", "rules"):
        parser.add_argument(f"--{role}", type=Path, help=f"the {role} file (default: its released name in --bench-dir)")


def add_review_arguments(parser, answers: bool = True) -> None:
    if answers:
        parser.add_argument("--answers", required=True, type=Path, help="the model's answers JSONL")
        parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--reviews", required=True, type=Path, help="reviews JSONL (appended to; resumes)")
    parser.add_argument("--attempts", type=int, default=3, help="times to ask when the scores do not parse")
    parser.add_argument("--concurrency", type=int, default=1, help="judge requests in flight")
    judges.add_arguments(parser)


def add_report_arguments(parser) -> None:
    parser.add_argument("--output", type=Path, help="report JSON")
    parser.add_argument("--markdown", type=Path, help="report Markdown table")
    parser.add_argument("--name", default="LLaVA", help="the candidate's name in the report")


def bench_items(args) -> list[dict]:
    overrides = {role: getattr(args, role) for role in ("questions", "references", "context", "rules")}
    return load_bench(**bench_files(args.flavour, args.bench_dir, **overrides))


def run_answer(args, items=None) -> int:
    items = (items or bench_items(args))[: args.limit]
    questions = [{"question_id": i["question_id"], "text": i["text"], "image": i["image"]} for i in items]
    return answer_from_args(args, questions)


def run_review(args, items=None) -> int:
    items = items or bench_items(args)
    answers = JsonlStore(args.answers).load()
    client = judges.build_client(args)
    failures = review_answers(client, items, answers, args.reviews, args.attempts, args.concurrency,
                              args.progress, **judges.request_params(args))
    for failure in failures:
        print(f"question {failure['question_id']} ({failure['category']}): {failure['error']}")
    write_report(args, items, answers, failures)
    if failures:
        print(f"{len(failures)} review(s) failed and are not scored; run the same command again to retry them")
    return 1 if failures else 0


def run_report(args) -> int:
    write_report(args, bench_items(args), JsonlStore(args.answers).load())
    return 0


def run_all(args) -> int:
    items = bench_items(args)
    run_answer(args, items)
    return run_review(args, items)


def write_report(args, items: list[dict], answers: dict, failures: list[dict] | None = None) -> None:
    reviews = JsonlStore(args.reviews).load()
    summary = summarize(items, reviews, answers)
    markdown = report_markdown(summary, args.name)
    report = {"name": args.name, "flavour": args.flavour, "categories": summary, "failure_details": failures or []}
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    if args.markdown:
        args.markdown.write_text(markdown, encoding="utf-8")
    print(markdown)
