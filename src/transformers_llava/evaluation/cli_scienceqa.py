"""`transformers-llava eval scienceqa ...`: convert, answer, score, combine.

    transformers-llava eval scienceqa convert --base-dir SQA --split train --prompt-format QCM-LEPA \\
        --output llava_train_QCM-LEPA.json                     # training data (and --split test for evaluation)
    transformers-llava eval scienceqa answer --model CKPT --questions llava_test_QCM-LEPA.json \\
        --image-folder SQA/images/test --answers answers.jsonl --answer-prompter
    transformers-llava eval scienceqa score --base-dir SQA --answers answers.jsonl --output result.json \\
        --markdown table7.md
    transformers-llava eval scienceqa combine --scheme complement --base-dir SQA --answers answers.jsonl \\
        --judge-outputs gpt4_result.json --output combined.json

`answer` and `combine --scheme judge` resume from their JSONL files when re-run.
"""

import json
from pathlib import Path

from ..chat_client import ChatClientError
from . import judges
from .generation import add_generation_arguments, answer_from_args
from ..formats.llava_json import read_llava_json
from ..formats.scienceqa import load_scienceqa, question_text, to_llava_records
from .scienceqa_gpt4 import SCHEMES, complement, judge
from .scienceqa_scoring import load_outputs, score, table7, table7_markdown


def add_commands(subparsers) -> None:
    convert = subparsers.add_parser("convert", help="problems.json + pid_splits.json -> LLaVA conversation JSON")
    add_split_arguments(convert)
    convert.add_argument("--prompt-format", default="QCM-LEPA", help="INPUT-OUTPUT, e.g. QCM-LEPA (reasoning first, "
                         "the paper's) or QCM-ALE / QCM-A (answer first)")
    convert.add_argument("--use-caption", action="store_true", help="append problems' `caption` to the context")
    convert.add_argument("--output", required=True, type=Path)
    convert.set_defaults(run=run_convert)

    answer = subparsers.add_parser("answer", help="generate answers to converted questions (resumable)")
    answer.add_argument("--questions", required=True, type=Path, help="LLaVA JSON written by `convert`")
    answer.add_argument("--answer-prompter", action="store_true",
                        help="two-step answers as the paper's ScienceQA run: reasoning up to '###', then 'ANSWER:'")
    add_generation_arguments(answer)
    answer.set_defaults(run=run_answer)

    scorer = subparsers.add_parser("score", help="accuracy and the paper's Table 7 from answers + problems.json")
    add_split_arguments(scorer, split="test")
    scorer.add_argument("--answers", required=True, type=Path, help="answers JSONL or a result JSON with `outputs`")
    scorer.add_argument("--output", required=True, type=Path, help="result JSON (the original's fields + table7)")
    scorer.add_argument("--markdown", type=Path, help="also write Table 7 as Markdown here")
    scorer.add_argument("--name", default="LLaVA", help="row label in the Markdown table")
    scorer.add_argument("--seed", type=int, default=0, help="seed of the draw where no valid answer is found")
    scorer.add_argument("--allow-missing", action="store_true", help="skip unanswered problems, as the original")
    scorer.set_defaults(run=run_score)

    combine = subparsers.add_parser("combine", help="the paper's GPT-4 complement / judge schemes")
    add_split_arguments(combine, split="test")
    combine.add_argument("--scheme", choices=SCHEMES, required=True)
    combine.add_argument("--answers", required=True, type=Path, help="LLaVA's answers (JSONL or result JSON)")
    combine.add_argument("--judge-outputs", required=True, type=Path, help="the judge model's answers, same formats")
    combine.add_argument("--requery", type=Path, help="JSONL of the judge's re-queries (scheme judge; resumable)")
    combine.add_argument("--output", required=True, type=Path)
    combine.add_argument("--markdown", type=Path, help="also write Table 7 as Markdown here")
    combine.add_argument("--seed", type=int, default=0)
    combine.add_argument("--name", help="row label in the Markdown table (default: LLaVA + judge, SCHEME)")
    judges.add_arguments(combine)
    combine.set_defaults(run=run_combine)


def add_split_arguments(parser, split: str | None = None) -> None:
    parser.add_argument("--base-dir", required=True, type=Path, help="folder with problems.json and pid_splits.json")
    parser.add_argument("--split", default=split, required=split is None, help="a key of pid_splits.json")


def run_convert(args) -> int:
    records = to_llava_records(load_scienceqa(args.base_dir, args.split), args.prompt_format, args.use_caption)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(records, indent=2, ensure_ascii=False), encoding="utf-8")
    with_image = sum("image" in record for record in records)
    print(f"{len(records)} {args.split} problems ({with_image} with an image) -> {args.output}")
    return 0


def run_answer(args) -> int:
    records = read_llava_json(args.questions)[: args.limit]
    questions = [{"question_id": r["id"], "text": question_text(r), "image": r.get("image")} for r in records]
    return answer_from_args(args, questions, answer_prompter=args.answer_prompter)


def write_result(result: dict, problems: dict, args, name: str) -> None:
    result["table7"] = table7(problems, result["results"])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    markdown = table7_markdown({name: result["table7"]})
    if args.markdown:
        args.markdown.write_text(markdown, encoding="utf-8")
    print(f"accuracy {result['acc']:.2f}% ({result['correct']}/{result['count']}) -> {args.output}\n{markdown}")


def run_score(args) -> int:
    problems = load_scienceqa(args.base_dir, args.split)
    result = score(problems, load_outputs(args.answers), args.seed, args.allow_missing)
    for fallback in result["fallbacks"]:
        print(f"pid {fallback['pid']}: {fallback['reason']}; seeded draw -> {fallback['drawn']}")
    write_result(result, problems, args, args.name)
    return 0


def run_combine(args) -> int:
    problems = load_scienceqa(args.base_dir, args.split)
    ours, theirs = load_outputs(args.answers), load_outputs(args.judge_outputs)
    if args.scheme == "complement":
        result = complement(problems, ours, theirs, args.seed)
    else:
        if args.requery is None:
            raise ValueError("--scheme judge needs --requery FILE.jsonl to keep the judge's answers")
        client = judges.build_client(args)
        try:
            result = judge(problems, ours, theirs, client, args.requery, args.seed, progress=True,
                           **judges.request_params(args))
        except ChatClientError as error:
            print(f"the judge failed: {error}\nre-queries so far are kept in {args.requery}; run again to continue")
            return 1
    write_result(result, problems, args, args.name or f"LLaVA + judge, {args.scheme}")
    return 0
