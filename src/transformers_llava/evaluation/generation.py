"""Answers from a LLaVA checkpoint for a list of questions, in batches, written to a resumable JSONL.

    from transformers_llava.evaluation.generation import load_model, answer_questions
    model, processor = load_model("checkpoints/llava-13b")
    answer_questions(model, processor, questions, "images/", "answers.jsonl", batch_size=8)

`questions` are `{question_id, text, image}` (image: a path under the image folder, or None for text-only). Each
prompt is the checkpoint's own chat template applied to one user turn whose image (if any) comes first, as in the
training data; the tokenizer pads on the left so a batch can be generated at once. An answer line is
`{question_id, prompt, text, answer_id, model_id, metadata}` like the original's. Questions already in the answers
file are skipped, so a re-run after a crash or a kill continues where it stopped and never writes one twice.

With `answer_prompter` (the original's `--answer-prompter`, used for the paper's ScienceQA numbers), the first
generation is the reasoning, cut at "###"; the prompt is then continued with that reasoning and " ###\\nANSWER:"
and the short second generation is the answer; the stored text is `reasoning + "\\n The answer is " + answer`.
"""

import os
import uuid
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..image_processing_llava import open_image
from .jsonl_store import JsonlStore

REASONING_STOP = "###"
ANSWER_PROMPT = " ###\nANSWER:"
ANSWER_MAX_NEW_TOKENS = 64


def load_model(path: str | Path, dtype: str = "float32"):
    """(model, processor) from a checkpoint directory through the Auto classes; left padding for batches."""
    import transformers_llava  # noqa: F401  (registers our model type with the Auto classes)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    processor = AutoProcessor.from_pretrained(path)
    processor.tokenizer.padding_side = "left"
    return model, processor


def add_generation_arguments(parser) -> None:
    """The options of every `answer` command: checkpoint, images, answers file and generation settings."""
    parser.add_argument("--model", required=True, type=Path, help="a LLaVA checkpoint directory")
    parser.add_argument("--image-folder", type=Path, default=Path("."), help="where the questions' images are")
    parser.add_argument("--answers", required=True, type=Path, help="answers JSONL (appended to; resumes)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (the original sampled at 0.7)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--limit", type=int, help="answer only the first N questions (a smoke run)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def check_checkpoint(path: Path) -> None:
    """`--model` must be a checkpoint directory; say so before transformers fails deep inside its loader."""
    if not (Path(path) / "config.json").is_file():
        what = "is not a directory" if not Path(path).is_dir() else "holds no config.json"
        raise FileNotFoundError(f"--model {path} {what}; give a LLaVA checkpoint directory (save_pretrained output)")


def check_answers_model(answers_path: str | Path, model_id: str) -> None:
    """Refuse to resume an answers file written by another model: its answers would be reported under this one."""
    recorded = {str(record.get("model_id", "")) for record in JsonlStore(answers_path).load().values()}
    others = sorted(other for other in recorded if os.path.realpath(other) != os.path.realpath(model_id))
    if others:
        raise ValueError(
            f"{answers_path} holds answers from --model {others[0]}, not from --model {model_id}; a run resumes only "
            "its own answers. Give this model its own --answers file (and --reviews), or delete that one."
        )


def answer_from_args(args, questions: list[dict], answer_prompter: bool = False) -> int:
    """An `answer` command: load `args.model`, answer what `args.answers` does not hold yet, say how many."""
    check_checkpoint(args.model)
    check_answers_model(args.answers, str(args.model))
    model, processor = load_model(args.model, args.dtype)
    new = answer_questions(model, processor, questions, args.image_folder, args.answers, args.batch_size,
                           args.max_new_tokens, args.temperature, answer_prompter, str(args.model), args.progress)
    print(f"{new} new answers ({len(questions) - new} already there) -> {args.answers}")
    return 0


def render_prompt(processor, text: str, has_image: bool) -> str:
    """One user turn (image first, then the text) in the checkpoint's chat template, generation prompt open."""
    content = ([{"type": "image"}] if has_image else []) + [{"type": "text", "text": text}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False)


def load_image(image_folder: str | Path, name: str, question_id, processor=None) -> Image.Image:
    """The question's image opened by the processor's own loader (`fetch_images`), as in training: the pixel
    guard, and later the same RGB conversion (transparency on the mean color, EXIF orientation, 16-bit)."""
    path = Path(image_folder) / name
    if not path.is_file():
        raise FileNotFoundError(f"question {question_id}: image {path} not found (image folder {image_folder})")
    if processor is None:
        return open_image(path)
    return processor.image_processor.fetch_images(str(path))


def cut_at(text: str, stops: list[str]) -> str:
    """The text before the first stop string, stripped."""
    for stop in stops:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text.strip()


@torch.inference_mode()
def generate(model, processor, prompts: list[str], images: list, max_new_tokens: int, temperature: float,
             stops: list[str]) -> list[str]:
    """Continuations of a batch of rendered prompts (images: the images of the prompts that have one, in order)."""
    inputs = processor(text=prompts, images=images or None, padding=True, return_tensors="pt").to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, stop_strings=stops or None,
                            tokenizer=processor.tokenizer, **sampling)
    texts = processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return [cut_at(text, stops) for text in texts]


def answer_questions(model, processor, questions: list[dict], image_folder: str | Path | None,
                     answers_path: str | Path, batch_size: int = 8, max_new_tokens: int = 1024,
                     temperature: float = 0.0, answer_prompter: bool = False, model_id: str = "",
                     progress: bool = True) -> int:
    """Answer every question not yet in `answers_path`; returns how many were answered now."""
    store = JsonlStore(answers_path, key="question_id")
    done = store.load()
    todo = [q for q in questions if str(q["question_id"]) not in done]
    stops = list(getattr(model.generation_config, "stop_strings", None) or [])
    first_stops = stops + [REASONING_STOP] * (answer_prompter and REASONING_STOP not in stops)
    with store.appender() as append, tqdm(total=len(todo), desc="answering", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start: start + batch_size]
            prompts = [render_prompt(processor, q["text"], bool(q.get("image"))) for q in batch]
            images = [load_image(image_folder, q["image"], q["question_id"], processor)
                      for q in batch if q.get("image")]
            texts = generate(model, processor, prompts, images, max_new_tokens, temperature, first_stops)
            if answer_prompter:
                follow = [f"{prompt} {text}{ANSWER_PROMPT}" for prompt, text in zip(prompts, texts)]
                answers = generate(model, processor, follow, images, ANSWER_MAX_NEW_TOKENS, temperature, first_stops)
                texts = [f"{text}\n The answer is {answer}" for text, answer in zip(texts, answers)]
            for question, text in zip(batch, texts):
                append({"question_id": question["question_id"], "prompt": question["text"], "text": text,
                        "answer_id": uuid.uuid4().hex, "model_id": model_id, "metadata": {}})
            bar.update(len(batch))
    return len(todo)
