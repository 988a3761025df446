"""`transformers-llava generate`: GPT-assisted instruction data, stage-1 caption instructions, CC3M filtering.

    # instruction data from the released caps_boxes file, against any OpenAI-compatible endpoint
    OPENAI_BASE_URL=http://127.0.0.1:8011/v1 OPENAI_MODEL=gpt-4 \\
      transformers-llava generate instruct --caps-boxes caps_boxes_coco2014_val_80.jsonl --out out/instruct
    # ... or from COCO annotation files, with a local transformers model
    transformers-llava generate instruct --coco-captions captions_train2014.json \\
      --coco-instances instances_train2014.json --backend transformers --model path/to/llm --out out/instruct
    # CC3M: concept-balanced filtering, then stage-1 instructions
    transformers-llava generate filter-cc3m --captions Train_GCC-training.tsv --out out/cc3m
    transformers-llava generate stage1 --captions out/cc3m/cc3m_filtered.jsonl --out out/cc3m/stage1.json

`instruct` is resumable: run the same command again after an interruption and it does only what is missing.
It exits 1 while some requests have failed for good (run it again to retry them).
"""

import argparse
import logging
import os
import sys

from ..formats.llava_json import IMAGE_POSITIONS
from .prompts import DATA_TYPES


def add_instruct_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("images (one source)")
    source.add_argument("--caps-boxes", help="released caps_boxes JSONL: {id, image, captions, instances} per line")
    source.add_argument("--coco-captions", help="COCO captions_*.json")
    source.add_argument("--coco-instances", help="COCO instances_*.json (boxes; needed by detail / complex types)")
    parser.add_argument("--out", required=True, help="output directory (records.jsonl, llava_instruct.json, ...)")
    parser.add_argument("--types", nargs="+", default=list(DATA_TYPES), choices=list(DATA_TYPES))
    parser.add_argument("--limit", type=int, help="only the first N images")
    backend = parser.add_argument_group("backend")
    backend.add_argument("--backend", choices=["openai", "transformers"], default="openai")
    backend.add_argument("--model", help="model name (openai; default $OPENAI_MODEL) or path (transformers)")
    backend.add_argument("--base-url", help="OpenAI-compatible base URL (default $OPENAI_BASE_URL); the key is read "
                                            "from $OPENAI_API_KEY")
    backend.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    backend.add_argument("--max-retries", type=int, default=5)
    backend.add_argument("--requests-per-minute", type=float, help="rate limit shared by all threads")
    backend.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    generation = parser.add_argument_group("generation")
    generation.add_argument("--temperature", type=float)
    generation.add_argument("--max-tokens", type=int, default=1024)
    generation.add_argument("--seed", type=int, default=0, help="samples detailed questions and <image> placement")
    generation.add_argument("--image-position", choices=IMAGE_POSITIONS, default="random")
    generation.add_argument("--retry-rejected", action="store_true", help="query rejected responses again")
    parser.add_argument("--prompt-price", type=float, help="price per 1M prompt tokens, for the cost estimate")
    parser.add_argument("--completion-price", type=float, help="price per 1M completion tokens")
    parser.add_argument("--no-progress", action="store_true")


def make_client(args):
    from ..chat_client import MODEL_ENV, OpenAIChatClient, TransformersChatClient

    if args.backend == "transformers":
        if not args.model:
            raise ValueError("--backend transformers needs --model PATH (a causal LM with a chat template)")
        return TransformersChatClient(args.model)
    if not (args.model or os.environ.get(MODEL_ENV)):
        raise ValueError(f"no model name for the endpoint: pass --model NAME or set {MODEL_ENV}")
    return OpenAIChatClient(base_url=args.base_url, model=args.model, timeout=args.timeout,
                            max_retries=args.max_retries, requests_per_minute=args.requests_per_minute)


def run_instruct(args) -> int:
    from .instruct import generate_instructions
    from .symbolic import iter_images

    boxed = [t for t in args.types if DATA_TYPES[t]]
    if args.coco_captions and not args.coco_instances and boxed:
        raise ValueError(f"{' and '.join(boxed)} describe objects by their boxes: pass --coco-instances too "
                         f"(or --types conversation)")
    images = list(iter_images(args.caps_boxes, args.coco_captions, args.coco_instances, limit=args.limit))
    client = make_client(args)
    params = {"max_tokens": args.max_tokens}
    if args.temperature is not None:
        params["temperature"] = args.temperature
    report = generate_instructions(images, client, args.out, types=args.types, seed=args.seed,
                                   image_position=args.image_position, params=params,
                                   concurrency=args.concurrency, retry_rejected=args.retry_rejected,
                                   progress=not args.no_progress)
    prices = (args.prompt_price, args.completion_price)
    print(f"instruction data -> {args.out} ({client.model_name}, {len(images)} images x {len(args.types)} types)")
    if report.dropped_bytes:
        print(f"  dropped a torn last record ({report.dropped_bytes} bytes) left by an interrupted run")
    print(f"  this run:    {format_counts(report.this_run)}")
    print(f"  all records: {format_counts(report.total)}")
    for reason, count in report.rejections.most_common():
        print(f"  rejected {count} x: {reason}")
    for name, count in report.written.items():
        print(f"  wrote {name}: {count} samples")
    print(f"  tokens this run:    {report.usage.summary(*prices)}")
    print(f"  tokens all records: {report.total_usage.summary(*prices)}")
    if report.total["failed"]:
        print(f"  {report.total['failed']} requests failed for good; run the same command again to retry them",
              file=sys.stderr)
        return 1
    return 0


def format_counts(counts) -> str:
    total = sum(counts.values())
    parts = ", ".join(f"{counts[status]} {status}" for status in ("ok", "rejected", "failed") if counts[status])
    return f"{total} tasks" + (f": {parts}" if parts else "")


def run_stage1(args) -> int:
    from .stage1 import build_stage1

    count = build_stage1(args.captions, args.out, seed=args.seed, image_position=args.image_position,
                         caption_field=args.caption_field, image_field=args.image_field, cache_dir=args.cache_dir)
    print(f"stage-1 instructions -> {args.out}: {count} samples")
    return 0


def run_filter(args) -> int:
    from .cc3m_filter import filter_cc3m
    from .noun_phrases import get_extractor

    extractor = get_extractor(args.extractor, args.spacy_pipeline)
    report = filter_cc3m(args.captions, args.out, extractor, min_frequency=args.min_frequency,
                         max_per_phrase=args.max_per_phrase, seed=args.seed, caption_field=args.caption_field,
                         image_field=args.image_field, num_proc=args.num_proc, plot=not args.no_plot,
                         progress=not args.no_progress)
    print(f"CC3M filtering ({extractor.name} noun phrases): kept {report.captions_after:,} of "
          f"{report.captions_before:,} captions\n")
    print(report.files["summary (Markdown)"].read_text(encoding="utf-8"))
    for what, path in report.files.items():
        print(f"  {what}: {path}")
    for message in report.messages:
        print(f"  note: {message}")
    return 0


def add_caption_file_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--captions", required=True, help=".jsonl ({id, image, caption}) or CC3M .tsv")
    parser.add_argument("--caption-field", default="caption")
    parser.add_argument("--image-field", default="image")
    parser.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="transformers-llava generate", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    instruct = commands.add_parser("instruct", help="conversation / detail / complex-reasoning data via an LLM")
    add_instruct_arguments(instruct)
    instruct.set_defaults(run=run_instruct)
    stage1 = commands.add_parser("stage1", help="caption -> single-turn instruction (Table 11 questions)")
    add_caption_file_arguments(stage1)
    stage1.add_argument("--out", required=True, help="LLaVA JSON file to write")
    stage1.add_argument("--image-position", choices=IMAGE_POSITIONS, default="random")
    stage1.add_argument("--cache-dir", help="where the datasets Arrow cache goes")
    stage1.set_defaults(run=run_stage1)
    cc3m = commands.add_parser("filter-cc3m", help="concept-balanced caption filtering by noun-phrase frequency")
    add_caption_file_arguments(cc3m)
    cc3m.add_argument("--out", required=True, help="output directory")
    cc3m.add_argument("--extractor", choices=["auto", "spacy", "simple"], default="auto")
    cc3m.add_argument("--spacy-pipeline", help="spaCy pipeline name (default: an installed English one)")
    cc3m.add_argument("--min-frequency", type=int, default=3)
    cc3m.add_argument("--max-per-phrase", type=int, default=100)
    cc3m.add_argument("--num-proc", type=int, help="processes for noun-phrase extraction")
    cc3m.add_argument("--no-plot", action="store_true")
    cc3m.add_argument("--no-progress", action="store_true")
    cc3m.set_defaults(run=run_filter)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"transformers-llava generate {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
