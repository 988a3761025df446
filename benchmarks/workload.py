"""The benchmark's workloads: mini LLaVAs with the paper's proportions and synthetic LLaVA-shaped conversations.

    workload = WORKLOADS["7b"]                 # or "mini", or "smoke" / "smoke_7b" for seconds-long runs
    prepare(workload, "cache/bench")           # writes model/ and data/ once

`7b` keeps the cost shares of LLaVA-1.5-7B where a training step spends its time: 336-px images in 14-px patches
(576 image tokens), a Llama-shaped LLM with full multi-head attention whose LM head is ~2 % of its weights (the
vocabulary shrinks with the width: 512 tokens at width 512, as 32k at 4096), a frozen tower and projector that are a
few percent of the work, and LLaVA-Instruct-158K's mix of conversations (58K, 1-5 turns), detailed descriptions
(23K) and complex reasoning (77K), each type's question and answer lengths drawn from the real LLaVA-Bench COCO
questions and GPT-4 answers of that type (`qa90_*.jsonl`, 4/3 tokens per word, a Llama tokenizer's rate on this
prose). What it cannot keep at this width is attention's share: at 512 it is ~25 % of a step's FLOPs, at 4096 ~4 %.

`mini` (the first workload) is LLaVA-v1-shaped at 224 px (256 image tokens) with a 32k vocabulary, so its LM head
outweighs the LLM's layers; it stays as the workload where the head dominates.

The model keeps LLaVA-v1's shapes where they drive the cost: 224-px images cut into 14-px patches (256 image tokens
per image, CLS dropped), a CLIP-style tower, a Llama-shaped LLM with grouped-query attention, a 32k vocabulary and
the 2-layer GELU projector (the layout transformers' built-in Llava shares, so both stacks load the same weights).

The tokenizer is the package's Llama-like BPE (`tiny.train_tokenizer`) trained on generated pseudo-words: a BPE
trainer needs enough distinct words to learn 32k merges, and pseudo-words built from syllables give them. Answers
are drawn from the vocabulary's whole-word tokens, so an answer of n words is n tokens and the length distribution
below is the token-length distribution: log-normal (median `answer_median`, clipped to `[answer_min,
answer_max]`), a few to a few hundred tokens, most short, a long tail as in LLaVA-Instruct.
"""

import math
import random
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image, ImageDraw
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from transformers_llava import build_llava
from transformers_llava.demo.tiny import BASE_CORPUS, train_tokenizer

SYLLABLES = [c + v + tail for c in "bcdfghjklmnprstvwz" for v in "aeiou" for tail in ("", "n")]


@dataclass(frozen=True)
class Workload:
    image_size: int = 224
    patch_size: int = 14
    vision_hidden: int = 256
    vision_layers: int = 4
    text_hidden: int = 512
    text_layers: int = 4
    text_heads: int = 8
    text_kv_heads: int = 4
    vocab_size: int = 32000
    samples: int = 96
    max_turns: int = 4
    answer_median: int = 40
    answer_sigma: float = 0.9
    answer_min: int = 3
    answer_max: int = 350
    seed: int = 0
    answers: str = "lognormal"  # or "llava_bench": question/answer lengths per instruction type, from qa90_*.jsonl
    corpus_repeats: int = 1  # how often the tokenizer sees the templates' text (a small vocabulary then keeps it whole)

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


SMOKE = Workload(image_size=56, vision_hidden=32, vision_layers=1, text_hidden=64, text_layers=1, text_heads=4,
                 text_kv_heads=2, vocab_size=1200, samples=12, max_turns=2, answer_median=6, answer_max=24)
SEVEN_B = Workload(image_size=336, patch_size=14, vision_hidden=128, vision_layers=2, text_hidden=512, text_layers=4,
                   text_heads=8, text_kv_heads=8, vocab_size=512, samples=48, max_turns=5, answers="llava_bench",
                   corpus_repeats=50)
WORKLOADS = {"mini": Workload(), "7b": SEVEN_B, "smoke": SMOKE,
             "smoke_7b": replace(SEVEN_B, image_size=84, vision_hidden=32, vision_layers=1, text_hidden=64,
                                 text_layers=1, text_heads=4, text_kv_heads=4, vocab_size=400, samples=12)}

# LLaVA-Instruct-158K: 58K conversations, 23K detailed descriptions, 77K complex reasoning.
INSTRUCTION_MIX = {"conv": 58, "detail": 23, "complex": 77}
TOKENS_PER_WORD = 4 / 3
# The shared reference folder beside the checkout, or a copy inside it (a machine that gets only the checkout).
REFERENCES = [Path(__file__).resolve().parents[level] / "shared" / "reference" / "llava" / "llava_bench_coco"
              for level in (2, 1)]


def reference_file(name: str) -> Path:
    """A LLaVA-Bench COCO file from the reference folder (`../shared/reference/llava/llava_bench_coco/`)."""
    for folder in REFERENCES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{name} is in none of {', '.join(map(str, REFERENCES))}: the benchmark's LLaVA-Bench "
                            "workloads need the shared reference folder beside the checkout (../shared/reference).")


def reference_rows(name: str) -> list[dict]:
    """The rows of a LLaVA-Bench COCO jsonl file (`qa90_questions.jsonl`, `qa90_gpt4_answer.jsonl`)."""
    return [json.loads(line) for line in reference_file(name).read_text().splitlines()]


def text_tokens(text: str) -> int:
    """A text's length in Llama tokens, estimated from its words (4/3 tokens per word)."""
    return max(1, round(len(text.split()) * TOKENS_PER_WORD))


def llava_bench_lengths() -> dict[str, dict[str, list[int]]]:
    """{type: {"question": [tokens...], "answer": [tokens...]}} of LLaVA-Bench COCO's questions and GPT-4 answers."""
    lengths = {kind: {"question": [], "answer": []} for kind in INSTRUCTION_MIX}
    for role, name in (("question", "qa90_questions.jsonl"), ("answer", "qa90_gpt4_answer.jsonl")):
        for row in reference_rows(name):
            lengths[row["category"]][role].append(text_tokens(row["text"]))
    return lengths


def reference_answer_tokens() -> dict[int, int]:
    """{question_id: token length of LLaVA-Bench COCO's GPT-4 answer to it} (as `llava_bench_lengths` counts)."""
    return {row["question_id"]: text_tokens(row["text"]) for row in reference_rows("qa90_gpt4_answer.jsonl")}


def pseudo_words(count: int, rng: random.Random) -> list[str]:
    words = set()
    while len(words) < count:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def build_tokenizer(workload: Workload):
    rng = random.Random(workload.seed)
    words = pseudo_words(2 * workload.vocab_size, rng)
    corpus = BASE_CORPUS * workload.corpus_repeats + [" ".join(words[i:i + 16]) for i in range(0, len(words), 16)]
    return train_tokenizer(corpus, vocab_size=workload.vocab_size)


def whole_word_tokens(tokenizer) -> list[str]:
    """Words the tokenizer keeps as one token (`▁word`), so n of them joined by spaces are exactly n tokens."""
    return sorted(token[1:] for token in tokenizer.get_vocab() if token.startswith("▁") and token[1:].isalpha())


def build_model(workload: Workload):
    """(model, processor): the mini LLaVA, random weights, built through `build_llava` like a real one."""
    torch.manual_seed(workload.seed)
    vision = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=workload.vision_hidden, intermediate_size=4 * workload.vision_hidden,
        num_hidden_layers=workload.vision_layers, num_attention_heads=max(1, workload.vision_hidden // 64),
        image_size=workload.image_size, patch_size=workload.patch_size, projection_dim=workload.vision_hidden,
    ))
    tokenizer = build_tokenizer(workload)
    lm = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=workload.text_hidden,
        intermediate_size=int(workload.text_hidden * 2.6875),  # Llama-7B's 11008 / 4096
        num_hidden_layers=workload.text_layers, num_attention_heads=workload.text_heads,
        num_key_value_heads=workload.text_kv_heads, max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    ))
    lm.generation_config.eos_token_id = tokenizer.eos_token_id
    return build_llava(vision, lm, tokenizer, projector_type="mlp2x_gelu")


def synthetic_image(rng: random.Random, size: int) -> Image.Image:
    """A few filled shapes on a colored background, at a random size around the tower's (resize + crop do work)."""
    width, height = (rng.randint(size, 2 * size) for _ in range(2))
    image = Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, 6)):
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randint(size // 16, size // 3)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
    return image


def answer_length(rng: random.Random, workload: Workload) -> int:
    length = round(math.exp(rng.gauss(math.log(workload.answer_median), workload.answer_sigma)))
    return min(max(length, workload.answer_min), workload.answer_max)


def turn_lengths(rng: random.Random, workload: Workload, reference: dict | None) -> tuple[str, list[tuple[int, int]]]:
    """(instruction type, [(question tokens, answer tokens) per turn])."""
    if workload.answers == "lognormal":
        turns = rng.randint(1, workload.max_turns)
        return "conv", [(rng.randint(4, 20), answer_length(rng, workload)) for _ in range(turns)]
    kind = rng.choices(list(INSTRUCTION_MIX), weights=list(INSTRUCTION_MIX.values()))[0]
    turns = rng.randint(1, workload.max_turns) if kind == "conv" else 1
    return kind, [(rng.choice(reference[kind]["question"]), rng.choice(reference[kind]["answer"])) for _ in range(turns)]


def conversation(index: int, rng: random.Random, words: list[str], workload: Workload,
                 reference: dict | None = None) -> dict:
    """One row `{"id", "messages", "images"}` as `training.data` produces: one image, 1..max_turns turns."""
    def text(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n))

    kind, lengths = turn_lengths(rng, workload, reference)
    messages = []
    for turn, (question_tokens, answer_tokens) in enumerate(lengths):
        question = [{"type": "text", "text": text(question_tokens) + "?"}]
        if turn == 0:
            question.insert(0, {"type": "image", "text": None})
        messages.append({"role": "user", "content": question})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": text(answer_tokens)}]})
    return {"id": f"{kind}-{index}", "messages": messages, "images": [synthetic_image(rng, workload.image_size)]}


def build_dataset(workload: Workload, tokenizer) -> datasets.Dataset:
    rng = random.Random(workload.seed + 1)
    words = whole_word_tokens(tokenizer)
    reference = llava_bench_lengths() if workload.answers == "llava_bench" else None
    rows = [conversation(i, rng, words, workload, reference) for i in range(workload.samples)]
    features = datasets.Features({
        "id": datasets.Value("string"),
        "messages": [{"role": datasets.Value("string"),
                      "content": [{"type": datasets.Value("string"), "text": datasets.Value("string")}]}],
        "images": [datasets.Image()],
    })
    return datasets.Dataset.from_list(rows, features=features)


def prepare(workload: Workload, directory: str | Path) -> Path:
    """Write the model, its processor and the dataset under `directory` (reused when the workload is unchanged)."""
    root = Path(directory)
    stamp = root / "workload.json"
    if stamp.exists() and stamp.read_text() == repr(asdict(workload)):
        return root
    model, processor = build_model(workload)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    build_dataset(workload, processor.tokenizer).save_to_disk(root / "data")
    stamp.write_text(repr(asdict(workload)))
    return root


def sequence_lengths(dataset: datasets.Dataset, processor) -> np.ndarray:
    """Token count of each sample with its image expanded (what both stacks feed the LLM)."""
    from transformers_llava.training.data import sequence_length

    return np.array([sequence_length(row["messages"], len(row["images"]), processor) for row in dataset])
