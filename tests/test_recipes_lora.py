"""A LoRA run (examples/lora.yaml through examples/train_llava.py) saves an adapter that loads four ways:
`AutoModelForImageTextToText`, `PeftModel`, `pipeline("image-text-to-text")`, and merged with `merge_and_unload`."""

import runpy

import pytest
import torch
from peft import PeftModel
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

from training_fixtures import EXAMPLES, base_checkpoint, tiny_data, tiny_overrides, towers  # noqa: F401

QUESTION = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is it?"}]}]


@pytest.fixture(scope="module")
def adapter_dir(towers, base_checkpoint, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "adapter"
    # r=8 keeps the tiny run fast; a larger rate makes two steps move the adapter visibly.
    overrides = tiny_overrides(EXAMPLES / "lora.yaml", towers, base_checkpoint, tiny_data, out,
                               learning_rate=0.05, warmup_steps=0) + ["lora.r=8", "lora.alpha=16"]
    script = runpy.run_path(str(EXAMPLES / "train_llava.py"))
    assert script["main"]([str(EXAMPLES / "lora.yaml"), *[a for o in overrides for a in ("--override", o)]]) == 0
    return out


@pytest.fixture(scope="module")
def inputs(adapter_dir):
    processor = AutoProcessor.from_pretrained(adapter_dir)
    text = processor.apply_chat_template(QUESTION, add_generation_prompt=True)
    return processor(images=[Image.new("RGB", (32, 32), "red")], text=[text], return_tensors="pt")


def logits(model, inputs):
    with torch.no_grad():
        return model.eval()(**inputs).logits


def test_adapter_folder_holds_adapter_projector_processor_and_card(adapter_dir):
    names = {p.name for p in adapter_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "processor_config.json", "README.md"} <= names
    assert "model.safetensors" not in names  # the base weights stay in the base checkpoint
    assert "LoRA adapter** (r=8, alpha=16)" in (adapter_dir / "README.md").read_text()


def test_adapter_loads_through_auto_peft_and_pipeline_and_merges(adapter_dir, base_checkpoint, inputs):
    base = AutoModelForImageTextToText.from_pretrained(base_checkpoint)
    base_logits = logits(base, inputs)
    adapted = PeftModel.from_pretrained(base, adapter_dir)
    expected = logits(adapted, inputs)
    assert not torch.allclose(expected, base_logits, atol=1e-3), "the adapter should change the model"

    auto = AutoModelForImageTextToText.from_pretrained(adapter_dir)
    assert torch.equal(logits(auto, inputs), expected)

    pipe = pipeline("image-text-to-text", model=str(adapter_dir))
    assert torch.equal(logits(pipe.model, inputs), expected)
    chat = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (32, 32), "red")},
                                         {"type": "text", "text": "What color is it?"}]}]
    assert pipe(text=chat, max_new_tokens=2)[0]["generated_text"][-1]["role"] == "assistant"

    merged = adapted.merge_and_unload()
    assert type(merged).__name__ == "TransformersLlavaForConditionalGeneration"
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    # Merging folds B @ A * alpha / r into each weight: the same numbers summed in another order, so equal up to
    # float32 rounding (observed ~3e-7), not bit for bit.
    torch.testing.assert_close(logits(merged, inputs), expected, rtol=1e-5, atol=1e-5)
