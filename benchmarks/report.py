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
LEVERS = {"ours": "ours: packed rows, per-sample attention (Σ L_i²)",
          "ours_dense": "ours: packed rows, one masked attention per row ((ΣL)²)",
          "ours_padded": "ours: padded rows, LM head on supervised positions only",
          "builtin": "built-in Llava + TRL SFTTrainer"}
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
    for task in ("train", "train_7b"):
        train = by_key(results["records"], task, "dtype", "stage", "stack")
        for (dtype, stage, stack), runs in train.items():
            for round_, (run, reference) in enumerate(zip(runs, train[(dtype, stage, "builtin")])):
                for step, (mine, theirs) in enumerate(zip(run["batches"], reference["batches"])):
                    for field in (f for f in mine if mine[f] != theirs[f]):
                        problems.append(f"{task} {stage} {dtype} round {round_} step {step}: {stack} trained on "
                                        f"other {field} than the built-in stack: {mine[field]} vs {theirs[field]}")
    for task in ("loss_curve", "loss_curve_7b"):
        curves = by_key(results["records"], task, "stack")
        if curves and curves[("ours",)][0]["batches"] != curves[("builtin",)][0]["batches"]:
            problems.append(f"{task}: the stacks trained on different samples")
    return problems


def bandwidth(records: list[dict]) -> float | None:
    values = [r["result"]["bytes_per_s"] for r in records if r["task"] == "bandwidth"]
    return max(values) if values else None


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
    if not curves:
        return []
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


def decode_fraction(run: dict, bytes_per_s: float | None) -> float:
    """Decoding steps/s (prefill excluded) over the memory-bandwidth bound: every step reads every LLM weight once."""
    if not bytes_per_s:
        return float("nan")
    batch = len(run["output_ids"])
    steps = run["tokens"] / batch - 1  # the prefill writes the first token
    decode_seconds = statistics.median(run["seconds"]) - statistics.median(run["prefill_seconds"])
    return steps / max(decode_seconds, 1e-9) * run["weight_bytes"] / bytes_per_s


def inference_table(results: dict) -> list[str]:
    generate = by_key(results["records"], "generate", "dtype", "batch", "stack")
    bound = bandwidth(results["records"])
    lines = ["| dtype | batch | ours tokens/s | built-in tokens/s | ours / built-in | identical outputs | "
             "decoding, share of the bandwidth bound: ours / built-in |", "|---|---|---|---|---|---|---|"]
    for (dtype, batch, stack), runs in sorted(generate.items()):
        if stack != "ours":
            continue
        theirs = generate[(dtype, batch, "builtin")]
        speed = {name: [r["tokens"] / statistics.median(r["seconds"]) for r in rs]
                 for name, rs in (("ours", runs), ("builtin", theirs))}
        same = [a == b for r, t in zip(runs, theirs) for ra, ta in zip(r["output_ids"], t["output_ids"])
                for a, b in zip(ra, ta)]
        identical = "yes" if all(same) else f"no ({100 * sum(same) / len(same):.0f} % of tokens equal)"
        shares = [f"{100 * statistics.median(decode_fraction(r, bound) for r in rs):.0f} %" for rs in (runs, theirs)]
        lines.append(f"| {dtype} | {batch} | {spread(speed['ours'])} | {spread(speed['builtin'])} | "
                     f"{ratios(speed['ours'], speed['builtin'])} | {identical} | {' / '.join(shares)} |")
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


def seven_b_table(results: dict) -> list[str]:
    """Every lever's stack on the 7B-proportioned workload, side by side with the built-in in each round."""
    train = by_key(results["records"], "train_7b", "dtype", "stage", "stack")
    peak = peaks(results["records"])
    lines = ["| stage | dtype | stack | samples/s | useful tokens/s | padded tokens | / built-in (samples/s) | "
             "/ built-in (CPU time) | peak memory (MB) | useful FLOP/s (share of matmul peak) | "
             "max loss diff vs built-in |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for stage, dtype in results["settings"]["seven_b"]["cells"]:
        reference = train[(dtype, stage, "builtin")]
        base = [r["samples"] / r["seconds"] for r in reference]
        for stack in results["settings"]["seven_b"]["stacks"]:
            runs = train[(dtype, stage, stack)]
            speed = [r["samples"] / r["seconds"] for r in runs]
            flops = statistics.median(r["flops"] / r["seconds"] for r in runs)
            diff = max(abs(a - b) for run, ref in zip(runs, reference) for a, b in zip(run["losses"], ref["losses"]))
            lines.append(
                f"| {stage} | {dtype} | {LEVERS[stack]} | {spread(speed)} | "
                f"{spread([r['useful_tokens'] / r['seconds'] for r in runs])} | {runs[0]['padded_tokens']:,} | "
                f"{ratios(speed, base)} | {cpu_ratio(runs, reference)} | {spread([r['peak_mb'] for r in runs])} | "
                f"{flops / 1e9:.3g} G "
                f"({100 * flops / peak[dtype]:.0f} %) | {diff:.2g} |")
    curves = {stack: runs[0]["losses"] for (stack,), runs in by_key(results["records"], "loss_curve_7b", "stack").items()}
    if curves:
        worst = max(abs(a - b) for a, b in zip(curves["ours"], curves["builtin"]))
        lines += ["", f"Loss curve, stage 2, fp32, {len(curves['ours'])} steps of batch "
                      f"{results['settings']['seven_b']['curve_batch_size']}, same batches: ours "
                      + ", ".join(f"{x:.4f}" for x in curves["ours"]) + "; built-in "
                      + ", ".join(f"{x:.4f}" for x in curves["builtin"]) + f" (largest difference {worst:.2g})."]
    return lines


def eval_table(results: dict) -> list[str]:
    runs = by_key(results["records"], "evaluate", "method")
    one, shared = runs[("one_at_a_time",)], runs[("shared",)]
    speed = {name: [r["questions"] / r["seconds"] for r in rs] for name, rs in (("one", one), ("shared", shared))}
    same = [a == b for r, t in zip(shared, one) for a, b in zip(r["answers"], t["answers"])]
    identical = "yes" if all(same) else f"no ({sum(same)} of {len(same)} answers equal)"
    settings = results["settings"]["eval"]
    return [f"{settings['images']} images x {settings['per_image']} questions (LLaVA-Bench COCO's texts, synthetic "
            f"images), greedy, at most {settings['new_tokens']} new tokens, {settings['dtype']}; batched: up to "
            f"{settings['batch_size']} questions per batch.", "",
            "| | one at a time (the original loop) | batched, image + prefix shared | ratio |", "|---|---|---|---|",
            f"| questions/s | {spread(speed['one'])} | {spread(speed['shared'])} | "
            f"{ratios(speed['shared'], speed['one'])} |",
            f"| questions per CPU second | | | {cpu_ratio(shared, one)} |",
            f"| images encoded | {one[0]['images_encoded']} | {shared[0]['images_encoded']} | |",
            f"| answer tokens | {one[0]['answer_tokens']} | {shared[0]['answer_tokens']} | |",
            f"| identical greedy answers | | {identical} | |"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def serve_table(results: dict) -> list[str]:
    runs = by_key(results["records"], "serve", "clients", "max_batch")
    settings = results["settings"]["serve"]
    asked = [n for rs in runs.values() for r in rs for n in r.get("max_tokens", [])]
    choice = results.get("dtype_choices", {}).get("serve")
    dtype = f"{choice['dtype']} ({choice['reason']})" if choice else settings["dtype"]
    limit = (f"max_tokens = the token length of LLaVA-Bench's GPT-4 answer to that question "
             f"({min(asked)}-{max(asked)} tokens)"
             if settings["new_tokens"] == "reference" else f"at most {settings['new_tokens']} tokens")
    lines = [f"Requests: one LLaVA-Bench question with its (synthetic) image each, greedy, {limit}; served in {dtype}; "
             "each client sends its requests one after another. Mean batch: rows per decoding step; useful rows: tokens "
             "returned / rows computed over all forwards (the engine batches continuously: between decoding steps "
             "finished rows leave the batch and waiting requests join it).",
             "", "| clients | requests | requests/s, batch 1 | requests/s, batched | ratio | ratio (CPU time) | "
             "p50 / p95 latency (s), batch 1 | p50 / p95 latency (s), batched | mean batch (useful rows), batched | "
             "tokens returned | identical outputs |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for clients in settings["clients"]:
        one, batched = runs[(clients, 1)], runs[(clients, settings["max_batch"])]
        speed = {name: [r["requests"] / r["seconds"] for r in rs] for name, rs in (("one", one), ("batched", batched))}
        latency = {name: [x for r in rs for x in r["latencies"]] for name, rs in (("one", one), ("batched", batched))}
        identical = agreement(batched, one)
        widths = [w for r in batched for w in r.get("step_widths", r.get("batch_widths", []))]
        mean_batch = ""
        if widths:
            useful = sum(sum(r["completion_tokens"]) for r in batched) / sum(r["row_slots"] for r in batched)
            mean_batch = f"{statistics.mean(widths):.1f} ({100 * useful:.0f} %)"
        returned = f"{sum(one[0]['completion_tokens'])} of {sum(one[0]['max_tokens'])}" if "max_tokens" in one[0] else ""
        lines.append(f"| {clients} | {one[0]['requests']} | {spread(speed['one'])} | {spread(speed['batched'])} | "
                     f"{ratios(speed['batched'], speed['one'])} | {cpu_ratio(batched, one)} | "
                     + " | ".join(f"{percentile(latency[n], 0.5):.2f} / {percentile(latency[n], 0.95):.2f}"
                                  for n in ("one", "batched")) + f" | {mean_batch} | {returned} | {identical} |")
    return lines


def agreement(batched: list[dict], one: list[dict]) -> str:
    """"yes" when every batched answer equals its one-at-a-time answer, else how many do and where the others part."""
    pairs = [(a, b) for r, t in zip(batched, one) for a, b in zip(r["texts"], t["texts"])]
    differing = [(next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))), len(b))
                 for a, b in pairs if a != b]
    if not differing:
        return "yes"
    return (f"no: {len(pairs) - len(differing)} of {len(pairs)} equal; the others part after "
            + ", ".join(f"{k} of {n}" for k, n in differing) + " characters")


def cpu_ratio(ours: list[dict], theirs: list[dict]) -> str:
    """Work per second by CPU time (baseline CPU seconds / ours, per unit of work), where both sides recorded it."""
    if not all("cpu_seconds" in r for r in ours + theirs):
        return ""
    unit = next(k for k in ("samples", "questions", "requests") if k in ours[0])
    return ratios([r[unit] / r["cpu_seconds"] for r in ours], [r[unit] / r["cpu_seconds"] for r in theirs])


def headline(results: dict) -> list[str]:
    """The README's rows: each a ratio measured side by side within a round, median (min-max) over rounds."""
    records, settings = results["records"], results["settings"]
    rows = []
    train = by_key(records, "train_7b", "dtype", "stage", "stack")
    if train:
        stage, dtype = settings["seven_b"]["cells"][0]
        ours, theirs = train[(dtype, stage, "ours")], train[(dtype, stage, "builtin")]
        speed = [[r["samples"] / r["seconds"] for r in rs] for rs in (ours, theirs)]
        diff = max(abs(a - b) for run, ref in zip(ours, theirs) for a, b in zip(run["losses"], ref["losses"]))
        rows.append(f"| 7B proportions: stage-2 training, {dtype}, samples/s | {spread(speed[0])} | "
                    f"{spread(speed[1])} (built-in + TRL) | **{ratios(*speed)}** | {cpu_ratio(ours, theirs)} | "
                    f"losses equal to {diff:.1g} |")
    runs = by_key(records, "evaluate", "method")
    if runs:
        speed = [[r["questions"] / r["seconds"] for r in runs[(m,)]] for m in ("shared", "one_at_a_time")]
        same = all(a == b for r, t in zip(runs[("shared",)], runs[("one_at_a_time",)])
                   for a, b in zip(r["answers"], t["answers"]))
        rows.append(f"| evaluation throughput: LLaVA-Bench-shaped, questions/s | {spread(speed[0])} | "
                    f"{spread(speed[1])} (one at a time) | **{ratios(*speed)}** | "
                    f"{cpu_ratio(runs[('shared',)], runs[('one_at_a_time',)])} | "
                    f"{'identical' if same else 'NOT identical'} greedy answers |")
    runs = by_key(records, "serve", "clients", "max_batch")
    if runs:
        clients, batch = max(settings["serve"]["clients"]), settings["serve"]["max_batch"]
        speed = [[r["requests"] / r["seconds"] for r in runs[(clients, b)]] for b in (batch, 1)]
        same = agreement(runs[(clients, batch)], runs[(clients, 1)])
        choice = results.get("dtype_choices", {}).get("serve")
        dtype = choice["dtype"] if choice else settings["serve"]["dtype"]
        rows.append(f"| server throughput: {clients} concurrent clients, {dtype}, requests/s | {spread(speed[0])} | "
                    f"{spread(speed[1])} (engine batch 1) | **{ratios(*speed)}** | "
                    f"{cpu_ratio(runs[(clients, batch)], runs[(clients, 1)])} | "
                    + ("identical greedy outputs |" if same == "yes" else f"NOT identical greedy outputs ({same[4:]}) |"))
    train = by_key(records, "train", "dtype", "stage", "stack")
    if ("fp32", "stage2", "ours") in train:
        speed = [[r["samples"] / r["seconds"] for r in train[("fp32", "stage2", s)]] for s in ("ours", "builtin")]
        rows.append(f"| mini workload (32k-vocabulary head): stage-2 training, fp32, samples/s | {spread(speed[0])} | "
                    f"{spread(speed[1])} (built-in + TRL) | {ratios(*speed)} | "
                    f"{cpu_ratio(train[('fp32', 'stage2', 'ours')], train[('fp32', 'stage2', 'builtin')])} | |")
    if not rows:
        return []
    return ["| | ours | baseline | ratio (wall time) | ratio (CPU time) | results |", "|---|---|---|---|---|---|",
            *rows]


def workload_line(name: str, prepared: dict, batch_size: int | None = None) -> str:
    wl, lengths, shape = prepared["workload"], sorted(prepared["sequence_lengths"]), prepared.get("shape")
    head = ""
    if shape:
        head_params = shape["vocab"] * shape["llm_hidden"]
        head = f" (LM head {100 * head_params / (shape['llm_linear'] + 2 * head_params):.1f} % of the LLM's weights)"
    return (f"Workload `{name}`: CLIP-style tower {wl['vision_layers']}x{wl['vision_hidden']} at {wl['image_size']} px / "
            f"patch {wl['patch_size']} ({wl['image_tokens']} image tokens), Llama-style LLM {wl['text_layers']}x"
            f"{wl['text_hidden']} ({wl['text_heads']}/{wl['text_kv_heads']} heads), {wl['vocab_size']:,}-token "
            f"vocabulary{head}; {len(lengths)} conversations ({wl['answers']} lengths, up to {wl['max_turns']} turns), "
            f"{lengths[0]}-{lengths[-1]} tokens (median {lengths[len(lengths) // 2]})"
            + (f"; batch {batch_size}." if batch_size else "."))


def render(results: dict) -> str:
    m, s, workloads = results["machine"], results["settings"], results["workloads"]
    peak, bytes_per_s = peaks(results["records"]), bandwidth(results["records"])
    where = f"GPU {m['gpu']} (host CPU {m['cpu']})" if m.get("gpu") else f"{m['cpu']}, {m['cores']} cores"
    out = [
        f"## Benchmark: ours vs transformers' built-in Llava + TRL ({results['profile']} run, {s['device']})", "",
        f"Machine: {where}; bf16 instructions: {', '.join(m['bf16_flags']) or 'none'}; {s['threads']} torch threads "
        f"in every measurement; torch {m['torch']}, transformers {m['transformers']}, TRL {m['trl']}. Measured in this "
        "run: matmul peak " + ", ".join(f"{dtype} {p / 1e9:,.0f} GFLOP/s" for dtype, p in sorted(peak.items()))
        + (f", memory bandwidth {bytes_per_s / 1e9:.1f} GB/s (copy, read + write)" if bytes_per_s else "")
        + f". Load average (1/5/15 min) before {'/'.join(f'{x:.1f}' for x in results['load_average_before'])}, after "
        f"{'/'.join(f'{x:.1f}' for x in results['load_average_after'])}; wall time {results['wall_seconds'] / 60:.1f} "
        f"min; {s['rounds']} round(s), stacks alternating within each; cells: median (min-max) over rounds.", "",
        *headline(results), "",
    ]
    if "7b" in s["parts"]:
        name = s["seven_b"]["workload"]
        out += ["### 7B proportions: stage-2 training, each lever", "",
                workload_line(name, workloads[name], s["seven_b"]["batch_size"]), "", *seven_b_table(results), ""]
    if "eval" in s["parts"]:
        out += ["### Evaluation throughput", "", *eval_table(results), ""]
    if "serve" in s["parts"]:
        out += ["### Server throughput", "", *serve_table(results), ""]
    if "mini" in s["parts"]:
        name = "smoke" if s.get("smoke") else "mini"
        out += [f"### Mini workload", "", workload_line(name, workloads[name], s["batch_size"]) + f" {s['warmup']} "
                f"warm-up + {s['steps']} timed steps per measurement.", "",
                "### Training", "", *training_table(results), "", *loss_agreement(results), "",
                "### Greedy generation", "", *inference_table(results), "",
                "### Second chat turn about the same image: time to first token", "", *chat_table(results), "",
                "### Where a stage-2 step spends its time", ""]
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
