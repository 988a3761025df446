"""LlavaChat: later turns reuse the KV cache and the encoded image, and answer exactly as re-encoding the whole
conversation would."""

import torch
from PIL import Image

from transformers_llava.chat import LlavaChat

IRONING, BLUE = Image.new("RGB", (60, 40), "orange"), Image.new("RGB", (40, 50), "blue")


def from_scratch(model, processor, messages, images):
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=images or None, text=[text], return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    return processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_each_turn_equals_re_encoding_the_whole_conversation(tiny):
    model, processor = tiny
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # peaked logits: greedy choices not decided by float noise
    encodings = {"chat": [], "scratch": []}
    who = ["chat"]
    model.model.vision_tower.register_forward_hook(lambda module, args, out: encodings[who[0]].append(args[0].shape[0]))
    chat = LlavaChat(model, processor, max_new_tokens=8, min_new_tokens=8)
    turns = [("What is this?", [IRONING]), ("What color is it?", []), ("And this one?", [BLUE]), ("Why?", [])]
    images = []
    for text, new_images in turns:
        who[0] = "chat"
        answer = chat.ask(text, images=new_images)
        images += new_images
        who[0] = "scratch"
        assert answer == from_scratch(model, processor, chat.messages[:-1], images)
    # The chat encoded each image once; re-encoding from scratch encodes every image of the conversation each turn.
    assert encodings == {"chat": [1, 1], "scratch": [1, 1, 2, 2]}


def test_second_turn_runs_only_the_new_tokens(tiny):
    model, processor = tiny
    chat = LlavaChat(model, processor, max_new_tokens=4)
    chat.ask("What is this?", images=[IRONING])
    seen = []
    handle = model.model.language_model.register_forward_hook(
        lambda module, args, kwargs, out: seen.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True)
    chat.ask("And the color?")
    handle.remove()
    assert seen[0] < 20  # the new user turn only, not the ~60 tokens of image and first turn
    assert chat.cache.get_seq_length() == len(chat.cached_ids)
