"""Generation: KV cache, batched left-padded prompts equal one-at-a-time greedy output, several images per prompt,
text-only prompts, streaming, and `pipeline("image-text-to-text")` on the real demo photos."""

from threading import Thread

import pytest
import torch
from PIL import Image
from transformers import TextIteratorStreamer, pipeline

from conftest import reference_path

RED, BLUE = Image.new("RGB", (40, 30), "red"), Image.new("RGB", (30, 50), "blue")


@pytest.fixture
def peaked(tiny):
    """The tiny model with a sharper LM head, so greedy choices are not decided by float noise."""
    model, processor = tiny
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    return model, processor


def chat(processor, text, images=0):
    content = [{"type": "image"}] * images + [{"type": "text", "text": text}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def greedy(model, inputs, **kwargs):
    out = model.generate(**inputs, max_new_tokens=10, do_sample=False, min_new_tokens=10, **kwargs)
    return out[:, inputs["input_ids"].shape[1]:]


def test_kv_cache_gives_the_same_tokens_as_recomputing(peaked):
    model, processor = peaked
    inputs = processor(images=[RED], text=[chat(processor, "What is this?", 1)], return_tensors="pt")
    assert torch.equal(greedy(model, inputs), greedy(model, inputs, use_cache=False))


def test_batched_left_padded_equals_one_at_a_time(peaked):
    model, processor = peaked
    prompts = [chat(processor, "What is this?", 1), chat(processor, "Describe the colors and shapes in detail.", 1)]
    images = [[RED], [BLUE]]
    batch = processor(images=images, text=prompts, padding=True, return_tensors="pt")
    assert batch["attention_mask"][0, 0] == 0  # the shorter prompt is padded on the left
    together = greedy(model, batch)
    for row, (prompt, image) in enumerate(zip(prompts, images)):
        alone = greedy(model, processor(images=image, text=[prompt], return_tensors="pt"))
        assert torch.equal(together[row], alone[0]), row


def test_several_images_in_one_prompt_and_text_only_prompts(peaked):
    model, processor = peaked
    two = processor(images=[[RED, BLUE]], text=[chat(processor, "Compare them.", 2)], return_tensors="pt")
    assert two["pixel_values"].shape[0] == 2
    assert (two["input_ids"] == processor.image_token_id).sum() == 32
    swapped = processor(images=[[BLUE, RED]], text=[chat(processor, "Compare them.", 2)], return_tensors="pt")
    with torch.no_grad():
        assert not torch.allclose(model(**two).logits[0, -1], model(**swapped).logits[0, -1])
    assert greedy(model, two).shape == (1, 10)
    text_only = processor(text=[chat(processor, "Hello, how are you?")], return_tensors="pt")
    assert "pixel_values" not in text_only
    assert greedy(model, text_only).shape == (1, 10)


def test_streaming_yields_the_generated_text(peaked):
    model, processor = peaked
    inputs = processor(images=[RED], text=[chat(processor, "What is this?", 1)], return_tensors="pt")
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    thread = Thread(target=model.generate, kwargs=dict(**inputs, streamer=streamer, max_new_tokens=10,
                                                       min_new_tokens=10, do_sample=False))
    thread.start()
    streamed = "".join(streamer)
    thread.join()
    expected = processor.tokenizer.decode(greedy(model, inputs)[0], skip_special_tokens=True)
    assert streamed.strip() == expected.strip() and streamed.strip()


def test_pipeline_with_chat_messages_and_raw_prompts_on_real_photos(tiny_dir):
    ironing = reference_path("llava", "images", "extreme_ironing.jpg")
    waterview = reference_path("llava", "images", "waterview.jpg")
    pipe = pipeline("image-text-to-text", model=str(tiny_dir))
    assert type(pipe.model).__name__ == "TransformersLlavaForConditionalGeneration"
    messages = [{"role": "user", "content": [{"type": "image", "path": str(ironing)},
                                             {"type": "text", "text": "What is unusual about this image?"}]}]
    def greedy_kwargs():  # a fresh dict per call: the pipeline writes into generate_kwargs
        return {"generate_kwargs": {"do_sample": False, "max_new_tokens": 5}}

    out = pipe(text=messages, **greedy_kwargs())
    assert out[0]["generated_text"][-1]["role"] == "assistant"
    raw = "USER: <image>\nWhat is this? ASSISTANT:"
    batched = pipe(images=[str(ironing), str(waterview)], text=[raw, raw], return_full_text=False, **greedy_kwargs())
    assert len(batched) == 2 and all(item["generated_text"] for item in batched)
    # Each row of the batch is what that prompt gives alone.
    alone = pipe(images=str(waterview), text=raw, return_full_text=False, **greedy_kwargs())
    assert batched[1]["generated_text"] == alone[0]["generated_text"]
    conversations = [messages, [{"role": "user", "content": [{"type": "image", "path": str(waterview)},
                                                              {"type": "text", "text": "Where is this?"}]}]]
    assert len(pipe(text=conversations, batch_size=2, **greedy_kwargs())) == 2
