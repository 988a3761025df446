"""What a new user sees: building a LLaVA prints no embedding warnings, and a batch through `apply_chat_template`
with `padding=True` (as transformers' docs write it) is padded without a warning about `processor_kwargs`."""

import logging

from PIL import Image

from transformers_llava.demo.tiny import build_tiny_llava


def test_build_llava_prints_no_embedding_warning(tmp_path, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="transformers"):
        build_tiny_llava(tmp_path / "towers")
    printed = capsys.readouterr()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "multivariate normal" not in printed.out + printed.err and not warnings, warnings


def test_batched_chat_template_with_padding_does_not_warn(tiny, caplog):
    model, processor = tiny
    conversations = [[{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (40, 30), color)},
                                                   {"type": "text", "text": text}]}]
                     for color, text in (((255, 0, 0), "What is this?"),
                                         ((0, 0, 255), "Describe the image concisely, with every color."))]
    with caplog.at_level(logging.WARNING, logger="transformers"):
        inputs = processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True,
                                               return_dict=True, padding=True, return_tensors="pt")
    assert not [r.getMessage() for r in caplog.records if "processor_kwargs" in r.getMessage()]
    lengths = inputs["attention_mask"].sum(1).tolist()
    assert lengths[0] < lengths[1] == inputs["input_ids"].shape[1]  # padded (on the left) to the longer prompt
    assert inputs["attention_mask"][0, 0] == 0
    assert model.generate(**inputs, max_new_tokens=2, do_sample=False).shape[0] == 2
