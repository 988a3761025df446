"""Our LLaVA stack against transformers' built-in Llava + TRL, side by side, in one command.

    python -m benchmarks.run                 # full run (~17 min on 2 cores), from the repository root
    python -m benchmarks.run --quick         # one round instead of three
    python -m benchmarks.run --smoke         # a tiny model, seconds; checks the benchmark itself runs
    python -m benchmarks.run --output runs/bench --threads 2   # on a dedicated 2-core machine

Every measurement runs in a fresh process forked from a server that has imported torch/transformers/TRL once, so
each one starts from the same state and its peak RSS is its own. Measurements alternate between the stacks
(ours, ours padded, built-in; then again, ...) and each ratio ours / built-in is taken between measurements of the
same round, so a machine whose load changes during the run shifts both sides alike; min, median and max over the
rounds are reported. Writes `results.json` (every raw measurement) and `report.md` under `--output`, and prints the
report.
"""

import argparse
import importlib
import json
import multiprocessing
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from .report import STACK_NAMES, render, validate

STACKS = tuple(STACK_NAMES)
# rounds: of alternating measurements; cells: (stage, dtype) trained; warmup + steps: optimizer steps per training
# measurement (only `steps` timed); generate_dtypes / chat_dtypes: weights' dtype for inference. bf16 is measured
# for stage 2 only: it is the stage the targets are about, and on CPUs without native bf16 it is the slow path.
CELLS = (("stage2", "fp32"), ("stage1", "fp32"), ("stage2", "bf16"))
FULL = dict(rounds=3, cells=CELLS, warmup=1, steps=1, batch_size=4, matmul_size=2048, new_tokens=24,
            generate_repeats=2, generate_dtypes=("fp32", "bf16"), first_answer=16, chat_repeats=3,
            chat_dtypes=("fp32",), curve_batch_size=2, curve_steps=6)
PROFILES = {
    "full": FULL,
    "quick": FULL | dict(rounds=1),
    "smoke": FULL | dict(rounds=1, batch_size=2, matmul_size=512, new_tokens=3, generate_repeats=1,
                         generate_dtypes=("fp32",), first_answer=3, chat_repeats=1, curve_steps=2),
}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="one round instead of three")
    size.add_argument("--smoke", action="store_true", help="a tiny model and one round: checks that it runs")
    parser.add_argument("--output", default="runs/benchmark", help="where results.json and report.md go")
    parser.add_argument("--cache", default="runs/benchmark-cache", help="where the workload is built once")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in every measurement (default 1: on a machine shared with other work, "
                             "threads waiting for a busy core make small ops several times slower; on a dedicated "
                             "machine pass its core count)")
    parser.add_argument("--rounds", type=int, help="rounds of alternating measurements (overrides the profile)")
    return parser.parse_args(argv)


def rotated(items, shift: int) -> list:
    shift %= len(items)
    return list(items[shift:]) + list(items[:shift])


def schedule(profile: dict, root: str) -> list[tuple[str, dict]]:
    """(task, kwargs) in run order: each round measures every cell once, stacks alternating (order rotating)."""
    tasks = []
    for round_ in range(profile["rounds"]):
        tasks += [("matmul", {"dtype": dtype, "size": profile["matmul_size"]}) for dtype in sorted({dtype for _, dtype in profile["cells"]})]
        for stage, dtype in profile["cells"]:
            tasks += [("train", dict(root=root, stack=stack, stage=stage, dtype=dtype, batch_size=profile["batch_size"],
                                     steps=profile["steps"], warmup=profile["warmup"]))
                      for stack in rotated(STACKS, round_)]
        for dtype in profile["generate_dtypes"]:
            for batch in (1, 8):
                tasks += [("generate", dict(root=root, stack=stack, dtype=dtype, batch=batch,
                                            new_tokens=profile["new_tokens"], repeats=profile["generate_repeats"]))
                          for stack in rotated(("ours", "builtin"), round_)]
        for dtype in profile["chat_dtypes"]:
            tasks += [("second_turn", dict(root=root, method=method, dtype=dtype, first_answer=profile["first_answer"],
                                           repeats=profile["chat_repeats"]))
                      for method in rotated(("chat", "reencode_ours", "reencode_builtin"), round_)]
    # The loss curve, once: the same steps with both stacks, so the losses can be compared step by step.
    tasks += [("loss_curve", dict(root=root, stack=stack, stage="stage2", batch_size=profile["curve_batch_size"],
                                  steps=profile["curve_steps"])) for stack in ("ours", "builtin")]
    return tasks


def run_task(name: str, kwargs: dict, threads: int, log: str) -> dict:
    """Runs in the measurement process: quiet libraries, output to `log`, `threads` torch threads."""
    with open(log, "a") as stream:
        os.dup2(stream.fileno(), 1)
        os.dup2(stream.fileno(), 2)
    import datasets
    import torch
    import transformers

    from . import tasks

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    return tasks.TASKS[name](**kwargs)


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    from importlib.metadata import version

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            **{name: version(name) for name in ("torch", "transformers", "trl", "accelerate")}}


def main(argv=None) -> int:
    options = parse_args(argv)
    name = "smoke" if options.smoke else "quick" if options.quick else "full"
    profile = dict(PROFILES[name])
    if options.rounds:
        profile["rounds"] = options.rounds
    output = Path(options.output)
    (output / "logs").mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # The measurement process imports this module by its name to find `run_task` (`__main__` would not resolve there).
    worker = importlib.import_module("benchmarks.run").run_task
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["benchmarks.tasks"])
    started, load_before = time.time(), os.getloadavg()

    def isolated(index: int, task: str, kwargs: dict) -> dict:
        label = " ".join(str(kwargs[k]) for k in ("stack", "method", "stage", "dtype", "batch") if k in kwargs)
        log = output / "logs" / f"{index:03d}-{task}.log"
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            begin = time.time()
            try:
                result = pool.submit(worker, task, kwargs, options.threads, str(log)).result()
            except Exception as error:
                raise SystemExit(f"{task} {label} failed: {error!r}; its output is in {log}") from error
        print(f"[{index}/{total}] {task} {label}: {time.time() - begin:.1f} s", flush=True)
        return result

    total = 0
    prepared = isolated(0, "prepare_workload", {"smoke": options.smoke, "cache": options.cache})
    plan = schedule(profile, prepared["root"])
    total = len(plan)
    records = [{"task": task, "kwargs": kwargs, "result": isolated(i + 1, task, kwargs)}
               for i, (task, kwargs) in enumerate(plan)]
    results = {
        "profile": name, "settings": profile | {"threads": options.threads}, "machine": machine(),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "wall_seconds": time.time() - started, "workload": prepared, "records": records,
    }
    problems = validate(results)
    results["problems"] = problems
    (output / "results.json").write_text(json.dumps(results, indent=1))
    report = render(results)
    (output / "report.md").write_text(report)
    print(report)
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
