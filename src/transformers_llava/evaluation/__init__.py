"""Evaluation of LLaVA as in the paper: LLaVA-Bench (COCO, In-the-Wild) with an LLM judge, and ScienceQA (Table 7).

One small module per benchmark and concern:

    scienceqa_scoring.py    answer extraction identical to the original, accuracy, the paper's Table 7
    scienceqa_gpt4.py       the paper's two GPT-4 combination schemes ("complement" and "judge")
    llava_bench_data.py     questions, reference answers, judge context and rules; the judge prompt
    llava_bench_review.py   asking the judge, parsing its two scores, resumable reviews
    llava_bench_report.py   relative scores per category (ratio of means, as the original), JSON + Markdown
    generation.py           batched answers from a LLaVA checkpoint, written to a resumable JSONL
    jsonl_store.py          the append-only JSONL keyed by id that every step resumes from
    judges.py               a judge from arguments: an OpenAI-compatible endpoint or a local transformers model
    cli.py                  `transformers-llava eval llava-bench|scienceqa ...`

ScienceQA's problems become LLaVA conversations in `transformers_llava.formats.scienceqa`, shared with training.
Run `transformers-llava eval --help` for the commands.
"""
