"""Our LLaVA stack against transformers' built-in Llava + TRL, side by side, in one command.

    python -m benchmarks.run                 # every part, 3 rounds, from the repository root
    python -m benchmarks.run --quick         # one round instead of three
    python -m benchmarks.run --parts 7b,eval,serve   # the README's headline rows only (mini: the first workload)
    python -m benchmarks.run --smoke         # tiny models, a minute; checks the benchmark itself runs
    python -m benchmarks.run --device cuda   # the same comparison on a GPU
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

from .report import STACK_NAMES, peaks, render, validate

STACKS = ("ours", "ours_padded", "builtin")
PARTS = ("7b", "eval", "serve", "mini")
# Per part; rounds: of alternating measurements (all parts, each round); warmup + steps: optimizer steps per training
# measurement (only `steps` timed).
# - mini: cells (stage, dtype) trained; generate_dtypes / chat_dtypes: weights' dtype for inference. bf16 is measured
#   for stage 2 only: it is the stage the targets are about.
# - 7b: the 7B-proportioned workload, stage 2, every lever's stack; its loss curve in fp32.
# - eval: LLaVA-Bench-shaped answering, one question at a time vs batched with shared prefixes.
# - serve: the OpenAI-compatible server at each number of concurrent clients, engine batch 1 vs max_batch; each
#   request's max_tokens is its LLaVA-Bench GPT-4 answer's length ("reference"); dtype "auto" serves in bf16 where
#   the bf16 matmul peak measured earlier in the same run beats fp32's, else in fp32 (`serving_dtype`).
FULL = dict(rounds=3, parts=PARTS, threads=1, device="cpu", matmul_size=2048,
            cells=(("stage2", "fp32"), ("stage1", "fp32"), ("stage2", "bf16")), warmup=1, steps=1, batch_size=4,
            new_tokens=24, generate_repeats=2, generate_dtypes=("fp32", "bf16"), first_answer=16, chat_repeats=3,
            chat_dtypes=("fp32",), curve_batch_size=2, curve_steps=6,
            seven_b=dict(workload="7b", stacks=("ours", "ours_dense", "ours_padded", "builtin"),
                         cells=(("stage2", "bf16"),), batch_size=8, curve_batch_size=4, curve_steps=4),
            eval=dict(workload="7b", dtype="fp32", images=30, per_image=3, new_tokens=32, batch_size=12),
            serve=dict(workload="7b", dtype="auto", clients=(1, 4, 8), max_batch=8, new_tokens="reference",
                       requests_per_client=4))
SMOKE = FULL | dict(rounds=1, batch_size=2, matmul_size=512, new_tokens=3, generate_repeats=1,
                    generate_dtypes=("fp32",), first_answer=3, chat_repeats=1, curve_steps=2,
                    seven_b=FULL["seven_b"] | dict(workload="smoke_7b", batch_size=4, curve_batch_size=2, curve_steps=2),
                    eval=FULL["eval"] | dict(workload="smoke_7b", images=4, new_tokens=4, batch_size=6),
                    serve=FULL["serve"] | dict(workload="smoke_7b", clients=(1, 4), max_batch=4, new_tokens=4,
                                                  requests_per_client=2))
PROFILES = {"full": FULL, "quick": FULL | dict(rounds=1), "smoke": SMOKE}
# On a GPU: bf16 weights for inference (fp32 training cells stay, for the loss comparison), big matmuls, and
# larger batches where a GPU's width needs them. The chat's second turn is a CPU measurement (LlavaChat keeps its ids
# on the CPU).
CUDA = dict(matmul_size=8192, generate_dtypes=("bf16",), chat_dtypes=())


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="one round instead of three")
    size.add_argument("--smoke", action="store_true", help="tiny models and one round: checks that it runs")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated parts to measure, of {', '.join(PARTS)} (default: all)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="where models run (cuda: bf16 inference, sdpa attention, times synchronised)")
    parser.add_argument("--output", default="runs/benchmark", help="where results.json and report.md go")
    parser.add_argument("--cache", default="runs/benchmark-cache", help="where the workloads are built once")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in every measurement (default 1: on a machine shared with other work, "
                             "threads waiting for a busy core make small ops several times slower; on a dedicated "
                             "machine pass its core count)")
    parser.add_argument("--rounds", type=int, help="rounds of alternating measurements (overrides the profile)")
    options = parser.parse_args(argv)
    unknown = set(options.parts.split(",")) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    return options


def rotated(items, shift: int) -> list:
    shift %= len(items)
    return list(items[shift:]) + list(items[:shift])


def schedule(profile: dict, roots: dict[str, str]) -> list[tuple[str, dict]]:
    """(task, kwargs) in run order: each round measures every cell once, stacks alternating (order rotating)."""
    tasks, parts, device = [], profile["parts"], profile["device"]
    seven, evaluation, serving = profile["seven_b"], profile["eval"], profile["serve"]
    dtypes = {dtype for _, dtype in profile["cells"] if "mini" in parts} | {"fp32", "bf16"}
    for round_ in range(profile["rounds"]):
        tasks += [("matmul", {"dtype": dtype, "size": profile["matmul_size"], "device": device})
                  for dtype in sorted(dtypes)]
        tasks.append(("bandwidth", {"device": device}))
        if "7b" in parts:
            for stage, dtype in seven["cells"]:
                tasks += [("train_7b", dict(root=roots[seven["workload"]], stack=stack, stage=stage, dtype=dtype,
                                            batch_size=seven["batch_size"], steps=profile["steps"],
                                            warmup=profile["warmup"], device=device))
                          for stack in rotated(seven["stacks"], round_)]
        if "eval" in parts:
            tasks += [("evaluate", dict(root=roots[evaluation["workload"]], method=method, device=device,
                                        **{k: v for k, v in evaluation.items() if k != "workload"}))
                      for method in rotated(("one_at_a_time", "shared"), round_)]
        if "serve" in parts:
            for clients in serving["clients"]:
                tasks += [("serve", dict(root=roots[serving["workload"]], max_batch=batch, clients=clients,
                                         requests=max(4, serving["requests_per_client"] * clients), new_tokens=serving["new_tokens"],
                                         dtype=serving["dtype"], device=device))
                          for batch in rotated((1, serving["max_batch"]), round_)]
        if "mini" in parts:
            tasks += mini_round(profile, roots[mini_workload(profile)], round_)
    if "7b" in parts:  # the loss curve, once: the same steps with both stacks, compared step by step
        tasks += [("loss_curve_7b", dict(root=roots[seven["workload"]], stack=stack, stage="stage2",
                                         batch_size=seven["curve_batch_size"], steps=seven["curve_steps"],
                                         device=device)) for stack in ("ours", "builtin")]
    if "mini" in parts:
        tasks += [("loss_curve", dict(root=roots[mini_workload(profile)], stack=stack, stage="stage2",
                                      batch_size=profile["curve_batch_size"], steps=profile["curve_steps"],
                                      device=device)) for stack in ("ours", "builtin")]
    return tasks


def mini_workload(profile: dict) -> str:
    return "smoke" if profile.get("smoke") else "mini"


def mini_round(profile: dict, root: str, round_: int) -> list[tuple[str, dict]]:
    device, tasks = profile["device"], []
    for stage, dtype in profile["cells"]:
        tasks += [("train", dict(root=root, stack=stack, stage=stage, dtype=dtype, batch_size=profile["batch_size"],
                                 steps=profile["steps"], warmup=profile["warmup"], device=device))
                  for stack in rotated(STACKS, round_)]
    for dtype in profile["generate_dtypes"]:
        for batch in (1, 8):
            tasks += [("generate", dict(root=root, stack=stack, dtype=dtype, batch=batch,
                                        new_tokens=profile["new_tokens"], repeats=profile["generate_repeats"],
                                        device=device))
                      for stack in rotated(("ours", "builtin"), round_)]
    for dtype in profile["chat_dtypes"]:
        tasks += [("second_turn", dict(root=root, method=method, dtype=dtype, first_answer=profile["first_answer"],
                                       repeats=profile["chat_repeats"], device=device))
                  for method in rotated(("chat", "reencode_ours", "reencode_builtin"), round_)]
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


def serving_dtype(records: list[dict]) -> dict:
    """{"dtype", "reason"}: what a user would serve in on this machine, bf16 where its matmul peak measured in this
    run (`records` so far) beats fp32's, else fp32."""
    peak = peaks(records)
    if not {"bf16", "fp32"} <= set(peak):
        raise RuntimeError(f"serving dtype 'auto' needs both matmul peaks measured first; this run has {sorted(peak)}")
    dtype = "bf16" if peak["bf16"] > peak["fp32"] else "fp32"
    relation = ">" if dtype == "bf16" else "<="
    return {"dtype": dtype, "reason": f"bf16 matmul peak {peak['bf16'] / 1e9:,.0f} GFLOP/s {relation} fp32 "
                                      f"{peak['fp32'] / 1e9:,.0f} GFLOP/s, measured in this run"}


def cpu_flags() -> dict:
    """The CPU's model and the instruction sets that decide its bf16 speed (AMX tiles, AVX512-BF16)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.processor())
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    return {"cpu": model, "bf16_flags": sorted(flags & {"amx_bf16", "amx_tile", "avx512_bf16", "avx512f"})}


def machine(device: str) -> dict:
    from importlib.metadata import version

    import torch

    gpu = torch.cuda.get_device_name() if device == "cuda" else None
    return {**cpu_flags(), "cores": os.cpu_count(), "python": platform.python_version(), "gpu": gpu,
            **{name: version(name) for name in ("torch", "transformers", "trl", "accelerate")}}


def main(argv=None) -> int:
    options = parse_args(argv)
    name = "smoke" if options.smoke else "quick" if options.quick else "full"
    profile = dict(PROFILES[name]) | {"parts": tuple(options.parts.split(",")), "device": options.device,
                                      "threads": options.threads, "smoke": options.smoke}
    if options.device == "cuda":
        profile |= CUDA | {part: profile[part] | {"dtype": "bf16"} for part in ("eval", "serve")}
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
    total = 0

    def isolated(index: int, task: str, kwargs: dict) -> dict:
        label = " ".join(str(kwargs[k]) for k in ("name", "stack", "method", "stage", "dtype", "batch", "max_batch",
                                                  "clients") if k in kwargs)
        log = output / "logs" / f"{index:03d}-{task}.log"
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            begin = time.time()
            try:
                result = pool.submit(worker, task, kwargs, options.threads, str(log)).result()
            except Exception as error:
                raise SystemExit(f"{task} {label} failed: {error!r}; its output is in {log}") from error
        print(f"[{index}/{total}] {task} {label}: {time.time() - begin:.1f} s", flush=True)
        return result

    needed = {profile["seven_b"]["workload"] for part in ("7b",) if part in profile["parts"]}
    needed |= {profile[part]["workload"] for part in ("eval", "serve") if part in profile["parts"]}
    needed |= {mini_workload(profile)} if "mini" in profile["parts"] else set()
    workloads = {w: isolated(0, "prepare_workload", {"name": w, "cache": options.cache}) for w in sorted(needed)}
    plan = schedule(profile, {w: prepared["root"] for w, prepared in workloads.items()})
    total = len(plan)
    records, choices = [], {}
    for i, (task, kwargs) in enumerate(plan):
        if kwargs.get("dtype") == "auto":  # decided once, at the first task that needs it, from the peaks so far
            if task not in choices:
                choices[task] = serving_dtype(records)
                print(f"{task}: {choices[task]['dtype']} ({choices[task]['reason']})", flush=True)
            kwargs = kwargs | {"dtype": choices[task]["dtype"]}
        records.append({"task": task, "kwargs": kwargs, "result": isolated(i + 1, task, kwargs)})
    results = {
        "dtype_choices": choices,
        "profile": name, "settings": profile, "machine": machine(options.device),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "wall_seconds": time.time() - started, "workloads": workloads, "records": records,
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
