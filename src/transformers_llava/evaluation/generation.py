"""Answers from a LLaVA checkpoint for a list of questions, in batches, written to a resumable JSONL.

    from transformers_llava.evaluation.generation import load_model, answer_questions
    model, processor = load_model("checkpoints/llava-13b")
    answer_questions(model, processor, questions, "images/", "answers.jsonl", batch_size=8)

`questions` are `{question_id, text, image}` (image: a path under the image folder, or None for text-only). Each
prompt is one user turn whose image (if any) comes first, as in the training data, encoded by the checkpoint's
processor (`processor.encode_conversation`, the package's one path from a conversation to ids) and padded on the
left so that a batch is generated at once. A batch never splits a run of
consecutive questions about the same image unless the run is longer than the batch, and such a run shares its
image's encoding and its prompt prefix's keys and values (`shared_prefix.py`): LLaVA-Bench asks three questions of
each image. The greedy answers are those of the one-question-at-a-time loop (`--batch-size 1 --no-share-prefix`). An answer line is
`{question_id, prompt, text, answer_id, model_id, metadata}` like the original's. Questions already in the answers
file are skipped, so a re-run after a crash or a kill continues where it stopped and never writes one twice.

With `answer_prompter` (the original's `--answer-prompter`, used for the paper's ScienceQA numbers), the first
generation is the reasoning, cut at "###"; the prompt is then continued with " " + that reasoning + " ###\\nANSWER:"
(tokenised after the prompt's ids) and the short second generation is the answer; the stored text is
`reasoning + "\\n The answer is " + answer`.
"""

import os
import uuid
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..image_processing_llava import open_image
from .jsonl_store import JsonlStore
from .shared_prefix import generate_shared, left_padded, pad_id

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
    parser.add_argument("--no-share-prefix", dest="share_prefix", action="store_false",
                        help="do not share an image's encoding and prompt prefix between the questions about it "
                             "(with --batch-size 1: the original one-question-at-a-time loop)")
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
                           args.max_new_tokens, args.temperature, answer_prompter, str(args.model), args.progress,
                           args.share_prefix)
    print(f"{new} new answers ({len(questions) - new} already there) -> {args.answers}")
    return 0


def question_messages(question: dict) -> list[dict]:
    """One user turn: the question's image (if any) first, then its text, as in the training data."""
    content = ([{"type": "image"}] if question.get("image") else []) + [{"type": "text", "text": question["text"]}]
    return [{"role": "user", "content": content}]


def encode_questions(processor, questions: list[dict]) -> list[list[int]]:
    """Each question's ids (images expanded) in the checkpoint's chat template, generation prompt open, through
    `processor.encode_conversation`."""
    return [processor.encode_conversation(question_messages(q), add_generation_prompt=True).input_ids.tolist()
            for q in questions]


def continued(processor, ids: list[list[int]], texts: list[str]) -> list[list[int]]:
    """Prompts continued with raw text (the answer prompter's second step): each text tokenised after its prompt."""
    return [row + processor.tokenizer(text, add_special_tokens=False)["input_ids"] for row, text in zip(ids, texts)]


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


def sampling_settings(temperature: float) -> dict:
    return {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}


@torch.inference_mode()
def generate(model, processor, ids: list[list[int]], images: list, max_new_tokens: int, temperature: float,
             stops: list[str]) -> list[str]:
    """Continuations of a batch of prompts (`ids`, left-padded here; `images`: the images of the prompts that have
    one, in order)."""
    input_ids, attention_mask = left_padded(ids, pad_id(processor), model.device)
    width = input_ids.shape[1]
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if images:
        pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
        inputs["pixel_values"] = pixels.to(model.device, model.dtype)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, stop_strings=stops or None, tokenizer=processor.tokenizer,
                            **sampling_settings(temperature))
    texts = processor.batch_decode(output[:, width:], skip_special_tokens=True)
    return [cut_at(text, stops) for text in texts]


def generate_grouped(model, processor, ids: list[list[int]], images: list, max_new_tokens: int, temperature: float,
                     stops: list[str]) -> list[str]:
    """Like `generate` (`images`: one image or None per prompt), with each run of prompts about the same image
    prefilled together: the image is encoded once and the shared prefix's keys/values computed once
    (`shared_prefix.generate_shared`)."""
    groups, firsts = [], []
    for index, image in enumerate(images):
        if not firsts or image is not images[firsts[-1]]:
            firsts.append(index)
        groups.append(len(firsts) - 1)
    present = [images[first] for first in firsts if images[first] is not None]
    pixels = iter(processor.image_processor(present, return_tensors="pt")["pixel_values"] if present else [])
    group_pixels = [next(pixels) if images[first] is not None else None for first in firsts]
    output, width = generate_shared(
        model, processor, ids, groups, group_pixels, max_new_tokens=max_new_tokens, stop_strings=stops or None,
        tokenizer=processor.tokenizer, **sampling_settings(temperature))
    texts = processor.batch_decode(output[:, width:], skip_special_tokens=True)
    return [cut_at(text, stops) for text in texts]


def batches(questions: list[dict], batch_size: int) -> list[list[dict]]:
    """Consecutive questions, at most `batch_size` per batch, never splitting a run of questions about the same
    image (or of text-only ones) unless the run alone is longer than a batch."""
    runs = []
    for question in questions:
        if runs and runs[-1][-1].get("image") == question.get("image") and len(runs[-1]) < batch_size:
            runs[-1].append(question)
        else:
            runs.append([question])
    out = []
    for run in runs:
        if out and len(out[-1]) + len(run) <= batch_size:
            out[-1] += run
        else:
            out.append(list(run))
    return out


def answer_questions(model, processor, questions: list[dict], image_folder: str | Path | None,
                     answers_path: str | Path, batch_size: int = 8, max_new_tokens: int = 1024,
                     temperature: float = 0.0, answer_prompter: bool = False, model_id: str = "",
                     progress: bool = True, share_prefix: bool = True) -> int:
    """Answer every question not yet in `answers_path`; returns how many were answered now.

    With `share_prefix` (default), questions about the same image in a batch share its encoding and the keys and
    values of their common prefix; `share_prefix=False, batch_size=1` is the original one-question-at-a-time loop.
    The greedy answers are the same either way."""
    store = JsonlStore(answers_path, key="question_id")
    done = store.load()
    todo = [q for q in questions if str(q["question_id"]) not in done]
    stops = list(getattr(model.generation_config, "stop_strings", None) or [])
    first_stops = stops + [REASONING_STOP] * (answer_prompter and REASONING_STOP not in stops)
    with store.appender() as append, tqdm(total=len(todo), desc="answering", disable=not progress) as bar:
        for batch in batches(todo, batch_size):
            ids = encode_questions(processor, batch)
            loaded = {}  # one image object per file in a batch: its questions are grouped by it
            for q in batch:
                if q.get("image") and q["image"] not in loaded:
                    loaded[q["image"]] = load_image(image_folder, q["image"], q["question_id"], processor)
            images = [loaded.get(q.get("image")) for q in batch]

            def run(prompts: list[list[int]], new_tokens: int) -> list[str]:
                if share_prefix:
                    return generate_grouped(model, processor, prompts, images, new_tokens, temperature, first_stops)
                present = [image for image in images if image is not None]
                return generate(model, processor, prompts, present, new_tokens, temperature, first_stops)

            texts = run(ids, max_new_tokens)
            if answer_prompter:
                follow = continued(processor, ids, [f" {text}{ANSWER_PROMPT}" for text in texts])
                answers = run(follow, ANSWER_MAX_NEW_TOKENS)
                texts = [f"{text}\n The answer is {answer}" for text, answer in zip(texts, answers)]
            for question, text in zip(batch, texts):
                append({"question_id": question["question_id"], "prompt": question["text"], "text": text,
                        "answer_id": uuid.uuid4().hex, "model_id": model_id, "metadata": {}})
            bar.update(len(batch))
    return len(todo)
