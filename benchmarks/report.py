"""Turns the raw measurements of `benchmarks.run` into the markdown report (pure Python, no torch).

    python -m benchmarks.report runs/benchmark/results.json     # re-render a saved run

Values per stack are medians over rounds; a ratio is computed within each round (measurements taken side by side)
and reported as median (min-max) over rounds.
"""

import json
import statistics
import sys
from collections import defaultdict

STACK_NAMES = {"ours": "ours (padding-free)", "ours_padded": "ours (padded)", "builtin": "built-in + TRL"}
PHASE_ORDER = ("data", "collate", "forward start", "vision", "projector+embed", "llm forward", "head+loss", "llm backward",
               "backward rest + clip", "optimizer", "total")


def by_key(records: list[dict], task: str, *keys: str) -> dict[tuple, list[dict]]:
    """Results of `task` grouped by the values of `keys` in their kwargs, in run order (= round order)."""
    groups = defaultdict(list)
    for record in records:
        if record["task"] == task:
            groups[tuple(record["kwargs"][k] for k in keys)].append(record["result"])
    return groups


def fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def spread(values: list[float]) -> str:
    """median (min-max), or the one value."""
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}-{fmt(max(values))})"


def ratios(numerators: list[float], denominators: list[float]) -> str:
    return spread([a / b for a, b in zip(numerators, denominators)])


def validate(results: dict) -> list[str]:
    """Problems that make a comparison meaningless: stacks trained on other batches (samples, token counts or
    supervised tokens) than the built-in stack in the same round."""
    problems = []
    train = by_key(results["records"], "train", "dtype", "stage", "stack")
    for (dtype, stage, stack), runs in train.items():
        for round_, (run, reference) in enumerate(zip(runs, train[(dtype, stage, "builtin")])):
            for step, (mine, theirs) in enumerate(zip(run["batches"], reference["batches"])):
                for field in (f for f in mine if mine[f] != theirs[f]):
                    problems.append(f"{stage} {dtype} round {round_} step {step}: {stack} trained on other {field} "
                                    f"than the built-in stack: {mine[field]} vs {theirs[field]}")
    curves = by_key(results["records"], "loss_curve", "stack")
    if curves and curves[("ours",)][0]["batches"] != curves[("builtin",)][0]["batches"]:
        problems.append("loss curve: the stacks trained on different samples")
    return problems


def peaks(records: list[dict]) -> dict[str, float]:
    return {dtype: max(r["flops_per_s"] for r in runs) for (dtype,), runs in by_key(records, "matmul", "dtype").items()}


def training_table(results: dict) -> list[str]:
    train = by_key(results["records"], "train", "dtype", "stage", "stack")
    peak = peaks(results["records"])
    metrics = {
        "samples/s": lambda r: r["samples"] / r["seconds"],
        "useful tokens/s": lambda r: r["useful_tokens"] / r["seconds"],
        "peak RSS (MB)": lambda r: r["peak_mb"],
        "training RSS increase (MB)": lambda r: r["train_peak_mb"] - r["rss_before_train_mb"],
        "final loss": lambda r: r["losses"][-1],
        "useful GFLOP/s": lambda r: r["flops"] / r["seconds"] / 1e9,
    }
    lines = ["| stage | dtype | metric | " + " | ".join(STACK_NAMES.values()) + " | ours / built-in | padded / built-in |",
             "|---|---|---|---|---|---|---|---|"]
    for stage, dtype in results["settings"]["cells"]:
        runs = {stack: train[(dtype, stage, stack)] for stack in STACK_NAMES}
        for name, metric in metrics.items():
            values = {stack: [metric(r) for r in rs] for stack, rs in runs.items()}
            cells = [spread(values[stack]) for stack in STACK_NAMES]
            if name == "final loss":
                differences = [abs(a - b) for a, b in zip(values["ours"], values["builtin"])]
                compare = [f"abs diff {fmt(max(differences))}", ""]
            else:
                compare = [ratios(values[s], values["builtin"]) for s in ("ours", "ours_padded")]
            lines.append(f"| {stage} | {dtype} | {name} | " + " | ".join(cells + compare) + " |")
        fractions = {s: [r["flops"] / r["seconds"] / peak[dtype] for r in rs] for s, rs in runs.items()}
        lines.append(f"| {stage} | {dtype} | fraction of {dtype} matmul peak | "
                     + " | ".join(f"{100 * statistics.median(fractions[s]):.1f} %" for s in STACK_NAMES) + " | | |")
    return lines


def loss_agreement(results: dict) -> list[str]:
    """The loss curve of both stacks step by step, and the largest per-step difference in every training cell."""
    curves = {stack: runs[0]["losses"] for (stack,), runs in by_key(results["records"], "loss_curve", "stack").items()}
    settings = results["settings"]
    lines = [f"Loss curve, stage 2, fp32, batch {settings['curve_batch_size']}, same batches, step by step:", "",
             "| step | " + " | ".join(str(i + 1) for i in range(len(curves["ours"]))) + " |",
             "|---|" + "---|" * len(curves["ours"])]
    lines += [f"| {STACK_NAMES[stack]} | " + " | ".join(f"{x:.4f}" for x in losses) + " |"
              for stack, losses in curves.items()]
    worst = max(abs(a - b) for a, b in zip(curves["ours"], curves["builtin"]))
    lines += ["", f"Largest difference {worst:.2g}. In the timed runs above, largest per-step loss difference from "
                  "the built-in stack:"]
    train = by_key(results["records"], "train", "dtype", "stage", "stack")
    for stage, dtype in settings["cells"]:
        differences = {stack: max(abs(a - b) for run, ref in zip(train[(dtype, stage, stack)],
                                                                 train[(dtype, stage, "builtin")])
                                  for a, b in zip(run["losses"], ref["losses"]))
                       for stack in ("ours", "ours_padded")}
        lines.append(f"- {stage} {dtype}: " + ", ".join(f"{STACK_NAMES[s]} {d:.2g}" for s, d in differences.items()))
    return lines


def inference_table(results: dict) -> list[str]:
    generate = by_key(results["records"], "generate", "dtype", "batch", "stack")
    lines = ["| dtype | batch | ours tokens/s | built-in tokens/s | ours / built-in | identical outputs |",
             "|---|---|---|---|---|---|"]
    for (dtype, batch, stack), runs in sorted(generate.items()):
        if stack != "ours":
            continue
        theirs = generate[(dtype, batch, "builtin")]
        speed = {name: [r["tokens"] / statistics.median(r["seconds"]) for r in rs]
                 for name, rs in (("ours", runs), ("builtin", theirs))}
        same = [a == b for r, t in zip(runs, theirs) for ra, ta in zip(r["output_ids"], t["output_ids"])
                for a, b in zip(ra, ta)]
        identical = "yes" if all(same) else f"no ({100 * sum(same) / len(same):.0f} % of tokens equal)"
        lines.append(f"| {dtype} | {batch} | {spread(speed['ours'])} | {spread(speed['builtin'])} | "
                     f"{ratios(speed['ours'], speed['builtin'])} | {identical} |")
    return lines


def chat_table(results: dict) -> list[str]:
    turns = by_key(results["records"], "second_turn", "dtype", "method")
    lines = ["| dtype | LlavaChat (s) | re-encode, ours (s) | re-encode, built-in (s) | speed-up vs ours | "
             "speed-up vs built-in | tokens run: chat / re-encode | same first token |", "|---|---|---|---|---|---|---|---|"]
    for dtype in results["settings"]["chat_dtypes"]:
        runs = {method: turns[(dtype, method)] for method in ("chat", "reencode_ours", "reencode_builtin")}
        seconds = {method: [statistics.median(r["seconds"]) for r in rs] for method, rs in runs.items()}
        chat, scratch = runs["chat"][0], runs["reencode_ours"][0]
        same = {r["first_token"] for rs in runs.values() for r in rs}
        lines.append(
            f"| {dtype} | {spread(seconds['chat'])} | {spread(seconds['reencode_ours'])} | "
            f"{spread(seconds['reencode_builtin'])} | {ratios(seconds['reencode_ours'], seconds['chat'])} | "
            f"{ratios(seconds['reencode_builtin'], seconds['chat'])} | {chat['tokens_run']} / {scratch['tokens_run']} | "
            f"{'yes' if len(same) == 1 else 'no: ' + ', '.join(map(repr, sorted(same)))} |")
    return lines


def profile_table(results: dict, dtype: str, stage: str = "stage2") -> list[str]:
    """Seconds per step of each phase, from the round whose step time is the median (so the phases add up)."""
    train = by_key(results["records"], "train", "dtype", "stage", "stack")
    typical = {s: sorted(train[(dtype, stage, s)], key=lambda r: r["phases"]["total"])[len(train[(dtype, stage, s)]) // 2]
               for s in STACK_NAMES}
    lines = [f"| phase ({stage}, {dtype}, s per step) | " + " | ".join(STACK_NAMES.values()) + " |", "|---|---|---|---|"]
    for phase in (p for p in PHASE_ORDER if p in typical["ours"]["phases"]):
        cells = [f"{fmt(run['phases'][phase])} ({100 * run['phases'][phase] / run['phases']['total']:.0f} %)"
                 for run in typical.values()]
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    return lines


def render(results: dict) -> str:
    m, s, w = results["machine"], results["settings"], results["workload"]
    lengths = sorted(w["sequence_lengths"])
    peak = peaks(results["records"])
    wl = w["workload"]
    out = [
        f"## Benchmark: ours vs transformers' built-in Llava + TRL ({results['profile']} run)", "",
        f"Machine: {m['cpu']}, {m['cores']} cores; {s['threads']} torch threads in every measurement; torch "
        f"{m['torch']}, transformers {m['transformers']}, TRL {m['trl']}. Load average (1/5/15 min) before "
        f"{'/'.join(f'{x:.1f}' for x in results['load_average_before'])}, after "
        f"{'/'.join(f'{x:.1f}' for x in results['load_average_after'])}; wall time "
        f"{results['wall_seconds'] / 60:.1f} min. Matmul peak: "
        + ", ".join(f"{dtype} {p / 1e9:.0f} GFLOP/s" for dtype, p in peak.items()) + ".", "",
        f"Workload: CLIP-style tower {wl['vision_layers']}x{wl['vision_hidden']} at {wl['image_size']} px / patch "
        f"{wl['patch_size']} ({wl['image_tokens']} image tokens), Llama-style LLM {wl['text_layers']}x"
        f"{wl['text_hidden']} (GQA {wl['text_heads']}/{wl['text_kv_heads']} heads), {wl['vocab_size']:,}-token "
        f"vocabulary; {len(lengths)} conversations of 1-{wl['max_turns']} turns, {lengths[0]}-{lengths[-1]} tokens "
        f"(median {lengths[len(lengths) // 2]}); batch {s['batch_size']}, {s['warmup']} warm-up + {s['steps']} timed "
        f"steps per measurement, {s['rounds']} rounds. Cells: median (min-max) over rounds.", "",
        "### Training", "", *training_table(results), "", *loss_agreement(results), "",
        "### Greedy generation", "", *inference_table(results), "",
        "### Second chat turn about the same image: time to first token", "", *chat_table(results), "",
        "### Where a stage-2 step spends its time", "",
    ]
    for stage, dtype in s["cells"]:
        out += profile_table(results, dtype, stage) + [""]
    if results.get("problems"):
        out += ["### Problems", ""] + [f"- {p}" for p in results["problems"]] + [""]
    return "\n".join(out)


def main(argv=None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) != 1:
        print("usage: python -m benchmarks.report RESULTS_JSON", file=sys.stderr)
        return 2
    with open(arguments[0]) as stream:
        print(render(json.load(stream)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
