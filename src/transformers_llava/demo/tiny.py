"""Tiny pretrained-looking towers built locally, for the embedded demo, the tests and the benchmarks (no downloads).

`save_tiny_towers(dir)` writes a tiny CLIP vision checkpoint, a tiny Llama checkpoint and a BPE tokenizer trained
in-process (SentencePiece-style `▁` word marks, `<s>`/`</s>`/`<unk>` like Llama's), then `build_llava` joins them
through the same loading code a real build uses. The weights are random: only training gives them meaning.
"""

import os
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from ..builder import build_llava
from ..chat_templates import FORMATS, load_chat_template

# Text the tiny tokenizer learns its merges from: the templates' fixed text and everyday caption words.
BASE_CORPUS = [
    "A chat between a curious human and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "A chat between a curious user and an artificial intelligence assistant.",
    "USER: ASSISTANT: Human: Assistant: ### [INST] [/INST] <<SYS>> <</SYS>>",
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language.",
    "What is this? A cat. Color? What is in the image? Describe the image concisely.",
    "There is a man ironing clothes on the back of a yellow taxi in a busy city street.",
    "A wooden dock stretches into a calm lake with mountains and a forest in the background.",
    "Answer with the option's letter from the given choices directly. Context: Options: (A) (B) (C) (D) (E)",
    "red green blue yellow orange purple white black gray circle square triangle star left right top bottom center",
    "one two three four five six seven eight nine ten yes no how many which where what color shape count",
]


def train_tokenizer(corpus: list[str], vocab_size: int = 1000) -> PreTrainedTokenizerFast:
    """A Llama-like BPE tokenizer trained on `corpus` (left padding, `<s>` prepended, `</s>` as EOS)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
        initial_alphabet=list("\n ()[].,:;?!'\"-#<>/_|0123456789")
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", padding_side="left"
    )


def save_tiny_towers(
    directory: str | os.PathLike,
    corpus: list[str] | None = None,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    text_hidden: int = 64,
    text_layers: int = 2,
    vocab_size: int = 1000,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write `directory/vision` (tiny CLIP vision model + image processor) and `directory/text` (tiny Llama +
    tokenizer); returns both paths."""
    torch.manual_seed(seed)
    root = Path(directory)
    vision_dir, text_dir = root / "vision", root / "text"
    vision = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=vision_hidden, intermediate_size=vision_hidden * 2, num_hidden_layers=vision_layers,
        num_attention_heads=4,
        image_size=image_size, patch_size=patch_size, projection_dim=vision_hidden,
    ))
    vision.save_pretrained(vision_dir)
    CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
                          ).save_pretrained(vision_dir)

    tokenizer = train_tokenizer(BASE_CORPUS + list(corpus or []), vocab_size=vocab_size)
    lm = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=text_hidden, intermediate_size=text_hidden * 2,
        num_hidden_layers=text_layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    ))
    lm.generation_config.eos_token_id = tokenizer.eos_token_id
    lm.save_pretrained(text_dir)
    tokenizer.save_pretrained(text_dir)
    return vision_dir, text_dir


def build_tiny_llava(directory: str | os.PathLike, corpus: list[str] | None = None, **build_kwargs):
    """Save tiny towers under `directory` and join them with `build_llava`; returns `(model, processor)`."""
    tower_keys = {"image_size", "patch_size", "vision_hidden", "vision_layers", "text_hidden", "text_layers",
                  "vocab_size", "seed"}
    tower_kwargs = {k: build_kwargs.pop(k) for k in list(build_kwargs) if k in tower_keys}
    vision_dir, text_dir = save_tiny_towers(directory, corpus, **tower_kwargs)
    return build_llava(vision_dir, text_dir, **build_kwargs)


__all__ = ["train_tokenizer", "save_tiny_towers", "build_tiny_llava", "FORMATS", "load_chat_template"]
