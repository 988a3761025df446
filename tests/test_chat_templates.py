"""The paper's conversation formats: rendered text byte-identical to the original, and the assistant mask (what
TRL's `assistant_only_loss` supervises) is exactly each answer and its stop token."""

import re

import pytest
from PIL import Image

from conftest import reference_path
from transformers_llava import load_chat_template

CONVERSATION = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
    {"role": "user", "content": [{"type": "text", "text": "Color?"}]},
]


def reference_prompts() -> dict[str, str]:
    """The rendered blocks of CONVERSATIONS.md by format name (literal `\\n` turned into newlines)."""
    text = reference_path("paper", "CONVERSATIONS.md").read_text()
    blocks = dict(re.findall(r"\*\*(\w+)\*\*[^\n]*\n```\n(.*?)\n```", text, flags=re.S))
    prompts = {name: block.replace("\\n", "\n") for name, block in blocks.items()}
    # vicuna_v1 is stated as "identical except the system text says a curious user / the user's questions".
    prompts["vicuna_v1"] = prompts["llava_v1"].replace("a curious human", "a curious user").replace(
        "the human's questions", "the user's questions")
    return prompts


@pytest.mark.parametrize("name", ["llava_v0", "llava_v1", "vicuna_v1", "llava_llama_2"])
def test_rendered_text_is_byte_identical_to_the_original(tiny, name):
    _, processor = tiny
    expected = reference_prompts()[name]
    rendered = processor.apply_chat_template(CONVERSATION, chat_template=load_chat_template(name),
                                             add_generation_prompt=True)
    assert rendered == expected


def test_plain_format_is_image_then_caption_and_newline(tiny):
    _, processor = tiny
    messages = [{"role": "user", "content": "<image>\nDescribe the image concisely."},
                {"role": "assistant", "content": "A cat on a mat."}]
    assert processor.apply_chat_template(messages, chat_template=load_chat_template("plain")) == \
        "<image>A cat on a mat.\n"


def test_string_content_and_system_override(tiny):
    _, processor = tiny
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "<image>\nWhat is this?"}]
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == \
        "Be brief. USER: <image>\nWhat is this? ASSISTANT:"


def test_roles_must_alternate(tiny):
    _, processor = tiny
    with pytest.raises(Exception, match="message 1 has role user"):
        processor.apply_chat_template([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


@pytest.mark.parametrize("name, supervised", [
    ("llava_v1", ["▁A", "▁cat.", "</s>", "▁Black.", "</s>"]),
    ("llava_v0", ["▁A", "▁cat.", "###", "▁Black.", "###"]),
    ("llava_llama_2", ["▁A", "▁cat.", "▁", "</s>", "▁Black.", "▁", "</s>"]),
])
def test_assistant_mask_is_each_answer_and_its_stop_token(tiny, name, supervised):
    """Multi-turn, with an image expanded into its tokens before the answers (the mask must stay aligned)."""
    _, processor = tiny
    image = Image.new("RGB", (40, 30), "red")
    messages = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        {"role": "user", "content": [{"type": "text", "text": "Color?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Black."}]},
    ]
    # As TRL's collator calls it.
    out = processor.apply_chat_template(
        messages, chat_template=load_chat_template(name), tokenize=True, return_dict=True,
        return_assistant_tokens_mask=True, processor_kwargs={"add_special_tokens": False, "padding": True},
    )
    tokens = processor.tokenizer.convert_ids_to_tokens(out["input_ids"][0])
    picked = "".join(t for t, m in zip(tokens, out["assistant_masks"][0]) if m)
    assert picked.replace("▁", " ").split() == "".join(supervised).replace("▁", " ").split()
    assert tokens[0] == "<s>" and tokens.count("<s>") == (2 if name == "llava_llama_2" else 1)
    assert tokens.count("<image>") == 16
    assert not any(m for t, m in zip(tokens, out["assistant_masks"][0]) if t == "<image>")


def test_batched_chat_template_with_images(tiny):
    _, processor = tiny
    conversations = [
        [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (32, 32))},
                                      {"type": "text", "text": "What is this?"}]}],
        [{"role": "user", "content": [{"type": "text", "text": "Hello there, how are you?"}]}],
    ]
    out = processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True, return_dict=True,
                                        return_tensors="pt", processor_kwargs={"padding": True})
    assert out["input_ids"].shape[0] == 2 and out["pixel_values"].shape == (1, 3, 32, 32)
    assert out["attention_mask"][1, 0] == 0  # left padded for generation
    assert (out["input_ids"][0] == processor.image_token_id).sum() == 16
