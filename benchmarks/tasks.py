"""One measurement each, run in a fresh process by `benchmarks.run`; every task returns a JSON-able dict.

    train(root, stack="ours", stage="stage2", dtype="bf16", batch_size=4, steps=2, warmup=1)
    generate(root, stack="builtin", dtype="fp32", batch=8, new_tokens=32, repeats=2)
    second_turn(root, method="chat", dtype="fp32", first_answer=32, repeats=2)
    evaluate(root, method="shared", dtype="fp32", images=30, per_image=3, new_tokens=32, batch_size=12)
    serve(root, max_batch=8, clients=8, requests=16, new_tokens="reference", dtype="bf16")
    matmul(dtype="bf16"); bandwidth()

Every task takes `device` ("cpu" or "cuda"); on a GPU, times are taken after `torch.cuda.synchronize()`.

Peak memory is the process's peak resident set size (Linux `VmHWM`), reset when the task starts, so each number
covers loading the model and the measurement itself and nothing before. Loading is the same in every stack; the
training part is also reported alone (`train_peak_mb - rss_before_train_mb`).
"""

import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from transformers_llava import LlavaForConditionalGeneration, LlavaProcessor
from transformers_llava.chat import LlavaChat

from .flops import ModelShape, copy_bandwidth, matmul_peak, step_flops
from .stacks import builtin_from_ours, load_dataset, load_model, make_stack_trainer, training_args
from .timers import StepTimer, TimedCollator
from .workload import WORKLOADS, prepare, reference_answer_tokens, reference_rows, sequence_lengths, synthetic_image

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_mb(device: str) -> float:
    """Peak memory of this process: the GPU's allocator peak on cuda, else the resident set's (`VmHWM`)."""
    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else memory_mb("VmHWM")


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
          seed: int = 0, device: str = "cpu") -> dict:
    reset_peak_memory()
    args = training_args(tempfile.mkdtemp(prefix="bench-"), batch_size=batch_size, steps=warmup + steps,
                         bf16=dtype == "bf16", seed=seed, device=device)
    trainer = make_stack_trainer(stack, root, stage, args)
    timer = StepTimer(trainer.model, synchronize=device == "cuda")
    trainer.add_callback(timer)
    trainer.data_collator = TimedCollator(trainer.data_collator, timer)
    load_peak, rss_before = memory_mb("VmHWM"), memory_mb("VmRSS")
    reset_peak_memory()
    trainer.train()
    train_peak = peak_mb(device)

    measured = timer.batches[warmup:warmup + steps]
    seconds = float(np.sum(timer.step_seconds()[warmup:]))
    cpu_seconds = float(np.sum(timer.step_cpu_seconds()[warmup:]))
    shape = ModelShape.of(trainer.model)
    flops = sum(step_flops(shape, stage, b.lengths, b.supervised, b.images) for b in measured)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "seconds": seconds, "cpu_seconds": cpu_seconds, "samples": sum(len(b.lengths) for b in measured),
        "useful_tokens": sum(sum(b.lengths) for b in measured), "padded_tokens": sum(b.padded_tokens for b in measured),
        "supervised_tokens": sum(b.supervised for b in measured), "flops": flops,
        "losses": losses, "step_seconds": timer.step_seconds(),
        "batches": [{"ids": b.ids, "lengths": b.lengths, "supervised": b.supervised, "checksums": b.checksums}
                    for b in timer.batches[:warmup + steps]],
        "phases": timer.phases(first=warmup), "peak_mb": max(load_peak, train_peak),
        "rss_before_train_mb": rss_before, "train_peak_mb": train_peak,
    }


def loss_curve(root, *, stack: str, stage: str, batch_size: int, steps: int, device: str = "cpu") -> dict:
    """The per-step training losses of `steps` fp32 steps (timings not used)."""
    result = train(root, stack=stack, stage=stage, dtype="fp32", batch_size=batch_size, steps=steps, warmup=0,
                   device=device)
    return {key: result[key] for key in ("losses", "batches")}


def prompts(root, processor, batch: int, dtype: torch.dtype, device: str = "cpu") -> dict:
    """The first question (with its image) of `batch` conversations, rendered and left-padded by `processor`."""
    rows = load_dataset(root).select(range(batch))
    texts = [processor.apply_chat_template(row["messages"][:1], add_generation_prompt=True) for row in rows]
    inputs = processor(images=[row["images"][0] for row in rows], text=texts, padding=True, return_tensors="pt")
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    return inputs.to(device)


def weight_bytes(model) -> int:
    """Bytes of the weights one decoding step reads: the LLM and its head (the tower and projector run once)."""
    return sum(p.numel() * p.element_size() for p in [*model.model.language_model.parameters(),
                                                       *model.lm_head.parameters()])


def generate(root, *, stack: str, dtype: str, batch: int, new_tokens: int, repeats: int, device: str = "cpu") -> dict:
    """Greedy generation of exactly `new_tokens` per prompt (min = max, so no early stop), timed `repeats` times
    after a warm-up call; tokens/s counts generated tokens only, prefill time included."""
    reset_peak_memory()
    model, processor = load_model(stack, root, DTYPES[dtype])
    model.to(device)
    inputs = prompts(root, processor, batch, DTYPES[dtype], device)
    settings = dict(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, num_beams=1)
    times, prefill = [], []
    with torch.inference_mode():
        model.generate(**inputs, **{**settings, "max_new_tokens": 2, "min_new_tokens": 2})
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            model.generate(**inputs, **{**settings, "max_new_tokens": 1, "min_new_tokens": 1})
            synchronize(device)
            prefill.append(time.perf_counter() - start)
            start = time.perf_counter()
            output = model.generate(**inputs, **settings)
            synchronize(device)
            times.append(time.perf_counter() - start)
    generated = output[:, inputs["input_ids"].shape[1]:]
    return {"seconds": times, "prefill_seconds": prefill, "tokens": generated.numel(),
            "prompt_tokens": int(inputs["attention_mask"].sum()), "output_ids": generated.tolist(),
            "weight_bytes": weight_bytes(model), "peak_mb": peak_mb(device)}


def second_turn(root, *, method: str, dtype: str, first_answer: int, repeats: int, device: str = "cpu") -> dict:
    """Time to the first token of a chat's second turn about the same image.

    Every method first holds the same first turn with `LlavaChat` (untimed, `first_answer` tokens). Then `chat`
    asks the second question through the same `LlavaChat` (cached keys/values and image reused); `reencode_ours`
    and `reencode_builtin` render the whole conversation and run our / the built-in model's `generate` on it from
    scratch, image included. Timed from the question text to the first new token, processing included."""
    torch_dtype = DTYPES[dtype]
    model, processor = load_model("ours", root, torch_dtype)
    model.to(device)
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
            synchronize(device)
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
                inputs = inputs.to(device)
                output = answerer.generate(**inputs, do_sample=False, max_new_tokens=1, min_new_tokens=1)
                first_tokens.append(processor.tokenizer.decode(output[0, -1:], skip_special_tokens=True).strip())
                run_tokens = inputs["input_ids"].shape[1]
            times.append(time.perf_counter() - start)
    return {"seconds": times[1:], "tokens_run": run_tokens, "first_token": first_tokens[-1],
            "context_tokens": chat.prompt_length if method == "chat" else run_tokens}


def bench_questions(images: int, per_image: int) -> list[dict]:
    """LLaVA-Bench COCO's real questions, `per_image` of each of its first `images` images (in the file's order)."""
    rows = reference_rows("qa90_questions.jsonl")
    by_image: dict[str, list[dict]] = {}
    for row in rows:
        by_image.setdefault(row["image"], []).append(row)
    if len(by_image) < images or min(len(group) for group in by_image.values()) < per_image:
        raise ValueError(f"qa90_questions.jsonl has {len(by_image)} images with at least "
                         f"{min(len(g) for g in by_image.values())} questions each; {images} x {per_image} were asked")
    return [row for group in list(by_image.values())[:images] for row in group[:per_image]]


def synthetic_images(questions: list[dict], size: int, folder: Path) -> None:
    """One synthetic photo under each question's image name (COCO itself is not here)."""
    import random

    rng = random.Random(0)
    for name in dict.fromkeys(q["image"] for q in questions):
        synthetic_image(rng, size).save(folder / name)


def evaluate(root, *, method: str, dtype: str, images: int, per_image: int, new_tokens: int, batch_size: int,
             device: str = "cpu") -> dict:
    """Answer LLaVA-Bench-shaped questions (`images` x `per_image`, real texts, synthetic images) with
    `answer_questions`: `one_at_a_time` is the original loop (batch 1, nothing shared), `shared` batches them and
    shares each image's encoding and prefix. Timed from the question list to the written answers, after a one-question
    warm-up; answers are greedy, at most `new_tokens` tokens."""
    from transformers_llava.evaluation.generation import answer_questions

    model, processor = load_model("ours", root, DTYPES[dtype])
    model.to(device)
    processor.tokenizer.padding_side = "left"
    questions = bench_questions(images, per_image)
    folder = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    synthetic_images(questions, processor.image_processor.crop_size["height"], folder)
    shared = method == "shared"
    settings = dict(max_new_tokens=new_tokens, progress=False, share_prefix=shared,
                    batch_size=batch_size if shared else 1)
    encoded = []
    model.model.vision_tower.register_forward_hook(lambda module, args, output: encoded.append(len(args[0])))
    answer_questions(model, processor, questions[:1], folder, folder / "warmup.jsonl", **settings)
    encoded.clear()
    synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    answer_questions(model, processor, questions, folder, folder / "answers.jsonl", **settings)
    synchronize(device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    answers = {row["question_id"]: row["text"] for row in map(json.loads, (folder / "answers.jsonl").open())}
    tokens = sum(len(processor.tokenizer(text, add_special_tokens=False)["input_ids"]) for text in answers.values())
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "questions": len(questions),
            "answers": [answers[q["question_id"]] for q in questions],
            "answer_tokens": tokens, "images_encoded": sum(encoded), "peak_mb": peak_mb(device)}


def serve(root, *, max_batch: int, clients: int, requests: int, new_tokens: int | str, dtype: str,
          device: str = "cpu") -> dict:
    """The OpenAI-compatible server under a real uvicorn, `clients` threads each sending its share of `requests`
    chat completions (one LLaVA-Bench question with its image each, greedy) one after the other; `max_batch` is the
    engine's batch limit (1: one request at a time). Each request's `max_tokens` is `new_tokens`, or with
    "reference" the token length of LLaVA-Bench's GPT-4 answer to that question (a random-weight model stops early
    only where it happens to emit EOS; `completion_tokens` says what ran). Latency per request, first byte to last,
    as the client sees it. The LLM's forward calls are counted: `batch_widths` holds the rows of every `generate`
    the engine ran (its prefill), `row_slots` the rows summed over every forward, so `completion_tokens /
    row_slots` is the share of the batched work that produced a token someone waits for."""
    import socket

    import httpx
    import uvicorn

    from transformers_llava.serving.engine import LlavaEngine
    from transformers_llava.serving.server import build_app

    from .serving_load import request_body

    model, processor = load_model("ours", root, DTYPES[dtype])
    engine = LlavaEngine(model.to(device), processor, max_batch_size=max_batch)
    questions = bench_questions(30, 3)[:requests]
    answer_tokens = reference_answer_tokens()
    size = processor.image_processor.crop_size["height"]
    bodies = [request_body(question, size, answer_tokens[question["question_id"]] if new_tokens == "reference"
                           else new_tokens) for question in questions]
    forwards = []  # (rows, positions) of every LLM forward, in the engine's thread
    model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: forwards.append(tuple(kwargs["inputs_embeds"].shape[:2])), with_kwargs=True)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(build_app(engine, "bench"), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/chat/completions"
    texts, latencies, tokens = [None] * len(bodies), [None] * len(bodies), [None] * len(bodies)

    def client(index: int, http: httpx.Client) -> None:
        for k in range(index, len(bodies), clients):
            begin = time.perf_counter()
            response = http.post(url, json=bodies[k], timeout=600)
            response.raise_for_status()
            latencies[k] = time.perf_counter() - begin
            answer = response.json()
            texts[k], tokens[k] = answer["choices"][0]["message"]["content"], answer["usage"]["completion_tokens"]

    with httpx.Client() as http:
        warmup = dict(bodies[0], max_tokens=2)
        http.post(url, json=warmup, timeout=600).raise_for_status()
        forwards.clear()
        threads = [threading.Thread(target=client, args=(i, http)) for i in range(clients)]
        start, cpu_start = time.perf_counter(), time.process_time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    server.should_exit = True
    thread.join(timeout=10)
    if any(text is None for text in texts):
        raise RuntimeError(f"{sum(t is None for t in texts)} of {len(texts)} requests got no answer")
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "requests": len(bodies), "latencies": latencies,
            "texts": texts, "max_tokens": [body["max_tokens"] for body in bodies], "completion_tokens": tokens,
            "batch_widths": [rows for rows, positions in forwards if positions > 1],  # rows per prefill
            "step_widths": [rows for rows, positions in forwards if positions == 1],  # rows per decoding step
            "row_slots": sum(rows for rows, _ in forwards)}


def prepare_workload(*, name: str, cache: str) -> dict:
    """Build (or reuse) the workload `name` under `cache`; returns where it is and what its samples look like."""
    workload = WORKLOADS[name]
    root = prepare(workload, Path(cache) / name)
    processor = LlavaProcessor.from_pretrained(Path(root) / "model")
    lengths = sequence_lengths(load_dataset(root), processor)
    model = LlavaForConditionalGeneration.from_pretrained(Path(root) / "model")
    return {"root": str(root), "workload": vars(workload) | {"image_tokens": workload.image_tokens},
            "sequence_lengths": lengths.tolist(), "shape": vars(ModelShape.of(model))}


def matmul(*, dtype: str, size: int, device: str = "cpu") -> dict:
    return {"flops_per_s": matmul_peak(DTYPES[dtype], size=size, device=device)}


def bandwidth(*, megabytes: int = 256, device: str = "cpu") -> dict:
    return {"bytes_per_s": copy_bandwidth(megabytes, device=device)}


TASKS = {"prepare_workload": prepare_workload, "train": train, "train_7b": train, "loss_curve": loss_curve,
         "loss_curve_7b": loss_curve, "generate": generate, "second_turn": second_turn, "evaluate": evaluate,
         "serve": serve, "matmul": matmul, "bandwidth": bandwidth}
