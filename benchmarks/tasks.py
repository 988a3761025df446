"""One measurement each, run in a fresh process by `benchmarks.run`; every task returns a JSON-able dict.

    train(root, stack="ours", stage="stage2", dtype="bf16", batch_size=4, steps=2, warmup=1)
    generate(root, stack="builtin", dtype="fp32", batch=8, new_tokens=32, repeats=2)
    second_turn(root, method="chat", dtype="fp32", first_answer=32, repeats=2)
    matmul(dtype="bf16")

Peak memory is the process's peak resident set size (Linux `VmHWM`), reset when the task starts, so each number
covers loading the model and the measurement itself and nothing before. Loading is the same in every stack; the
training part is also reported alone (`train_peak_mb - rss_before_train_mb`).
"""

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from transformers_llava import LlavaProcessor
from transformers_llava.chat import LlavaChat

from .flops import ModelShape, matmul_peak, step_flops
from .stacks import builtin_from_ours, load_dataset, load_model, make_stack_trainer, training_args
from .timers import StepTimer, TimedCollator
from .workload import SMOKE, Workload, prepare, sequence_lengths

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def memory_mb(field: str) -> float:
    """`VmRSS` / `VmHWM` of this process in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field} line; peak memory needs Linux.")


def reset_peak_memory() -> None:
    """Restart `VmHWM` from the current RSS (Linux >= 4.0: writing 5 to /proc/self/clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def train(root, *, stack: str, stage: str, dtype: str, batch_size: int, steps: int, warmup: int,
          seed: int = 0) -> dict:
    reset_peak_memory()
    args = training_args(tempfile.mkdtemp(prefix="bench-"), batch_size=batch_size, steps=warmup + steps,
                         bf16=dtype == "bf16", seed=seed)
    trainer = make_stack_trainer(stack, root, stage, args)
    timer = StepTimer(trainer.model)
    trainer.add_callback(timer)
    trainer.data_collator = TimedCollator(trainer.data_collator, timer)
    load_peak, rss_before = memory_mb("VmHWM"), memory_mb("VmRSS")
    reset_peak_memory()
    trainer.train()
    train_peak = memory_mb("VmHWM")

    measured = timer.batches[warmup:warmup + steps]
    seconds = float(np.sum(timer.step_seconds()[warmup:]))
    shape = ModelShape.of(trainer.model)
    flops = sum(step_flops(shape, stage, b.lengths, b.supervised, b.images) for b in measured)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "seconds": seconds, "samples": sum(len(b.lengths) for b in measured),
        "useful_tokens": sum(sum(b.lengths) for b in measured), "padded_tokens": sum(b.padded_tokens for b in measured),
        "supervised_tokens": sum(b.supervised for b in measured), "flops": flops,
        "losses": losses, "step_seconds": timer.step_seconds(),
        "batches": [{"ids": b.ids, "lengths": b.lengths, "supervised": b.supervised, "checksums": b.checksums}
                    for b in timer.batches[:warmup + steps]],
        "phases": timer.phases(first=warmup), "peak_mb": max(load_peak, train_peak),
        "rss_before_train_mb": rss_before, "train_peak_mb": train_peak,
    }


def loss_curve(root, *, stack: str, stage: str, batch_size: int, steps: int) -> dict:
    """The per-step training losses of `steps` fp32 steps (timings not used)."""
    result = train(root, stack=stack, stage=stage, dtype="fp32", batch_size=batch_size, steps=steps, warmup=0)
    return {key: result[key] for key in ("losses", "batches")}


def prompts(root, processor, batch: int, dtype: torch.dtype) -> dict:
    """The first question (with its image) of `batch` conversations, rendered and left-padded by `processor`."""
    rows = load_dataset(root).select(range(batch))
    texts = [processor.apply_chat_template(row["messages"][:1], add_generation_prompt=True) for row in rows]
    inputs = processor(images=[row["images"][0] for row in rows], text=texts, padding=True, return_tensors="pt")
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    return inputs


def generate(root, *, stack: str, dtype: str, batch: int, new_tokens: int, repeats: int) -> dict:
    """Greedy generation of exactly `new_tokens` per prompt (min = max, so no early stop), timed `repeats` times
    after a warm-up call; tokens/s counts generated tokens only, prefill time included."""
    reset_peak_memory()
    model, processor = load_model(stack, root, DTYPES[dtype])
    inputs = prompts(root, processor, batch, DTYPES[dtype])
    settings = dict(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, num_beams=1)
    times = []
    with torch.inference_mode():
        model.generate(**inputs, **{**settings, "max_new_tokens": 2, "min_new_tokens": 2})
        for _ in range(repeats):
            start = time.perf_counter()
            output = model.generate(**inputs, **settings)
            times.append(time.perf_counter() - start)
    generated = output[:, inputs["input_ids"].shape[1]:]
    return {"seconds": times, "tokens": generated.numel(), "prompt_tokens": int(inputs["attention_mask"].sum()),
            "output_ids": generated.tolist(), "peak_mb": memory_mb("VmHWM")}


def second_turn(root, *, method: str, dtype: str, first_answer: int, repeats: int) -> dict:
    """Time to the first token of a chat's second turn about the same image.

    Every method first holds the same first turn with `LlavaChat` (untimed, `first_answer` tokens). Then `chat`
    asks the second question through the same `LlavaChat` (cached keys/values and image reused); `reencode_ours`
    and `reencode_builtin` render the whole conversation and run our / the built-in model's `generate` on it from
    scratch, image included. Timed from the question text to the first new token, processing included."""
    torch_dtype = DTYPES[dtype]
    model, processor = load_model("ours", root, torch_dtype)
    answerer, answerer_processor = model, processor
    if method == "reencode_builtin":
        answerer, answerer_processor = builtin_from_ours(model, processor)
    row = load_dataset(root)[0]
    image, question = row["images"][0], "And what is next to it, and why?"
    first_question = next(part["text"] for part in row["messages"][0]["content"] if part["type"] == "text")
    seen = []
    model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True)
    times, first_tokens = [], []
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first round warms up
            chat = LlavaChat(model, processor, max_new_tokens=first_answer, min_new_tokens=first_answer)
            chat.ask(first_question, images=[image])
            seen.clear()
            start = time.perf_counter()
            if method == "chat":
                chat.ask(question, max_new_tokens=1, min_new_tokens=1)
                first_tokens.append(chat.messages[-1]["content"][0]["text"])
                run_tokens = seen[0]
            else:
                messages = chat.messages + [{"role": "user", "content": [{"type": "text", "text": question}]}]
                text = answerer_processor.apply_chat_template(messages, add_generation_prompt=True)
                inputs = answerer_processor(images=[image], text=[text], return_tensors="pt")
                inputs["pixel_values"] = inputs["pixel_values"].to(torch_dtype)
                output = answerer.generate(**inputs, do_sample=False, max_new_tokens=1, min_new_tokens=1)
                first_tokens.append(processor.tokenizer.decode(output[0, -1:], skip_special_tokens=True).strip())
                run_tokens = inputs["input_ids"].shape[1]
            times.append(time.perf_counter() - start)
    return {"seconds": times[1:], "tokens_run": run_tokens, "first_token": first_tokens[-1],
            "context_tokens": chat.prompt_length if method == "chat" else run_tokens}


def prepare_workload(*, smoke: bool, cache: str) -> dict:
    """Build (or reuse) the workload under `cache`; returns where it is and what its samples look like."""
    workload = SMOKE if smoke else Workload()
    root = prepare(workload, Path(cache) / ("smoke" if smoke else "full"))
    processor = LlavaProcessor.from_pretrained(Path(root) / "model")
    lengths = sequence_lengths(load_dataset(root), processor)
    return {"root": str(root), "workload": vars(workload) | {"image_tokens": workload.image_tokens},
            "sequence_lengths": lengths.tolist()}


def matmul(*, dtype: str, size: int) -> dict:
    return {"flops_per_s": matmul_peak(DTYPES[dtype], size=size)}


TASKS = {"prepare_workload": prepare_workload, "train": train, "loss_curve": loss_curve, "generate": generate,
         "second_turn": second_turn, "matmul": matmul}
