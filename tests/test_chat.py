"""LlavaChat: later turns reuse the KV cache and the encoded image, and answer exactly as re-encoding the whole
conversation would."""

import torch
from PIL import Image

from transformers_llava.chat import LlavaChat

IRONING, BLUE = Image.new("RGB", (60, 40), "orange"), Image.new("RGB", (40, 50), "blue")


def recompute(model, processor, ids, images, **kwargs):
    """The conversation's ids run from scratch (no cache), every image encoded again."""
    pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"] if images else None
    return model.generate(input_ids=ids[None], pixel_values=pixels, do_sample=False, **kwargs)[0, len(ids):]


def test_each_turn_equals_recomputing_the_whole_conversation(tiny):
    model, processor = tiny
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # peaked logits: greedy choices not decided by float noise
    encodings = {"chat": [], "scratch": []}
    who = ["chat"]
    model.model.vision_tower.register_forward_hook(lambda module, args, out: encodings[who[0]].append(args[0].shape[0]))
    kwargs = dict(max_new_tokens=8, min_new_tokens=8)
    chat = LlavaChat(model, processor, **kwargs)
    turns = [("What is this?", [IRONING]), ("What color is it?", []), ("And this one?", [BLUE]), ("Why?", [])]
    images = []
    for text, new_images in turns:
        who[0] = "chat"
        answer = chat.ask(text, images=new_images)
        images += new_images
        who[0] = "scratch"
        prompt = chat.ids[: chat.prompt_length]
        again = recompute(model, processor, prompt, images, **kwargs)
        assert torch.equal(again, chat.ids[chat.prompt_length: chat.prompt_length + len(again)])
        assert answer == processor.tokenizer.decode(again, skip_special_tokens=True).strip()
    # The chat encoded each image once; a recompute encodes every image of the conversation each turn.
    assert encodings == {"chat": [1, 1], "scratch": [1, 1, 2, 2]}
    # Each turn's prompt is the previous turns' exact ids, then the new turn tokenised as in the whole text.
    whole = processor.apply_chat_template(chat.messages[:-1], add_generation_prompt=True)
    assert whole.endswith(processor.tokenizer.decode(chat.ids[chat.prompt_length - 5: chat.prompt_length]))


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
    # The cache holds every id but the last generated one and the stop token that closes an answer cut short.
    assert len(chat.ids) - chat.cache.get_seq_length() == 2


def test_finished_answers_are_kept_as_generated_and_only_the_new_turn_runs(tiny):
    """When an answer ends with its stop token, the next turn appends its own tokens to exactly what the model
    read and wrote: the model then runs on the new turn alone, and answers as a full recompute of those ids does."""
    model, processor = tiny
    tokenizer = processor.tokenizer
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
        model.lm_head.weight[tokenizer.eos_token_id] *= 0  # then bias the stop token so it wins once allowed
        model.lm_head.bias = torch.nn.Parameter(torch.zeros(model.lm_head.out_features))
        model.lm_head.bias[tokenizer.eos_token_id] = 1e4
    kwargs = dict(max_new_tokens=12, min_new_tokens=4)
    chat = LlavaChat(model, processor, **kwargs)
    chat.ask("What is this?", images=[IRONING])
    assert int(chat.ids[-1]) == tokenizer.eos_token_id and chat.rendered  # finished: kept as generated
    first = chat.ids.clone()
    seen = []
    handle = model.model.language_model.register_forward_hook(
        lambda module, args, kw, out: seen.append(kw["inputs_embeds"].shape[1]), with_kwargs=True)
    chat.ask("And the color?")
    handle.remove()
    # The new turn's tokens as they fall after a stop token in the whole conversation's tokenisation.
    prompt = processor.apply_chat_template(chat.messages[:-1], add_generation_prompt=True)
    suffix = prompt[len(processor.apply_chat_template(chat.messages[:2])):]
    expected = tokenizer(tokenizer.eos_token + suffix, add_special_tokens=False)["input_ids"][1:]
    turn = len(first) + len(expected)
    assert torch.equal(chat.ids[: len(first)], first)
    assert chat.ids[len(first): turn].tolist() == expected
    assert seen[0] == 1 + len(expected)  # the first answer's stop token, not yet in the cache, and the new turn
    pixels = processor.image_processor([IRONING], return_tensors="pt")["pixel_values"]
    recomputed = model.generate(input_ids=chat.ids[None, :turn], pixel_values=pixels, do_sample=False, **kwargs)
    assert torch.equal(recomputed[0], chat.ids)
