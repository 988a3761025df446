"""`transformers-llava eval ...`: the paper's evaluations from the command line.

    transformers-llava eval scienceqa convert|answer|score|combine ...
    transformers-llava eval llava-bench answer|review|report|run ...

Each step writes its files as it goes and resumes from them when run again; `--help` on any step lists its options.
See docs/evaluation.md for a walk-through with example output.
"""

import argparse

from . import cli_llava_bench, cli_scienceqa


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="transformers-llava eval", description=__doc__.split("\n\n")[0])
    benchmarks = parser.add_subparsers(dest="benchmark", required=True, metavar="llava-bench|scienceqa")
    for name, module, help_text in (
        ("llava-bench", cli_llava_bench, "LLaVA-Bench (COCO / In-the-Wild) with an LLM judge"),
        ("scienceqa", cli_scienceqa, "ScienceQA: conversion, answers, Table 7, GPT-4 combinations"),
    ):
        benchmark = benchmarks.add_parser(name, help=help_text, description=module.__doc__,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_commands(benchmark.add_subparsers(dest="step", required=True))
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)
