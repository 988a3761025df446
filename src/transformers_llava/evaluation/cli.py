"""`transformers-llava eval ...`: the paper's evaluations from the command line.

    transformers-llava eval scienceqa convert|answer|score|combine ...
    transformers-llava eval llava-bench answer|review|report|run ...

Each step writes its files as it goes and resumes from them when run again; `--help` on any step lists its options.
See docs/evaluation.md for a walk-through with example output.
"""

import argparse
import os
import sys

from . import cli_llava_bench, cli_scienceqa

# Mistakes in what a user gave (a path, a file's content, a flag's value) come out as these, with messages that name
# the file and field; they are printed as one line. TRANSFORMERS_LLAVA_TRACEBACK=1 shows the traceback instead.
USER_ERRORS = (OSError, ValueError, KeyError)


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
    try:
        return args.run(args)
    except USER_ERRORS as err:
        if os.environ.get("TRANSFORMERS_LLAVA_TRACEBACK"):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"transformers-llava eval {args.benchmark} {args.step}: error: {' '.join(str(message).split())}",
              file=sys.stderr)
        return 2
