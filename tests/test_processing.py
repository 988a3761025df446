"""The processor: `<image>` expanded into exactly the tower's token count, one BOS per prompt, and errors that
name the sample: images vs placeholders, truncation that would cut image tokens."""

import pytest
from PIL import Image

IMAGE = Image.new("RGB", (48, 32), "green")


def test_each_placeholder_becomes_the_towers_token_count(tiny):
    model, processor = tiny
    out = processor(images=[IMAGE, IMAGE], text="<image>\nA <image>\nB", return_tensors="pt")
    assert (out["input_ids"] == processor.image_token_id).sum().item() == 2 * model.config.image_seq_length == 32
    assert out["pixel_values"].shape == (2, 3, 32, 32)


def test_exactly_one_bos_whatever_the_caller_asks(tiny):
    _, processor = tiny
    bos = processor.tokenizer.bos_token_id
    for kwargs in ({}, {"add_special_tokens": False}, {"add_special_tokens": True}):
        ids = processor(text="Hello there", **kwargs)["input_ids"][0]
        assert ids[0] == bos and list(ids).count(bos) == 1
    ids = processor(text="<s>Hello there")["input_ids"][0]
    assert list(ids).count(bos) == 1


def test_more_images_than_placeholders_names_the_sample(tiny):
    _, processor = tiny
    with pytest.raises(ValueError, match=r"Sample 1 has 2 image\(s\) but 1 <image> placeholder"):
        processor(images=[[IMAGE], [IMAGE, IMAGE]], text=["<image>\nA", "<image>\nB"])
    with pytest.raises(ValueError, match=r"3 image\(s\) were given but the text holds 2 .*sample 0: 1, sample 1: 1"):
        processor(images=[IMAGE, IMAGE, IMAGE], text=["<image>\nA", "<image>\nB"])
    with pytest.raises(ValueError, match="no images were passed"):
        processor(text=["<image>\nA"])


def test_truncation_that_would_cut_image_tokens_is_refused(tiny):
    _, processor = tiny
    with pytest.raises(ValueError, match=r"Sample 0: truncation keeps 2 of its 16 image tokens \(12 tokens kept\).*never be cut"):
        processor(images=[IMAGE], text=["A long prompt <image>\nwith text"], truncation=True, max_length=12)
    out = processor(images=[IMAGE], text=["<image>\nok"], truncation=True, max_length=40)
    assert len(out["input_ids"][0]) < 40


def test_processor_config_round_trip(tiny, tmp_path):
    _, processor = tiny
    processor.save_pretrained(tmp_path)
    from transformers import AutoProcessor

    again = AutoProcessor.from_pretrained(tmp_path)
    assert type(again) is type(processor)
    assert (again.patch_size, again.num_additional_image_tokens, again.vision_feature_select_strategy) == (
        processor.patch_size, processor.num_additional_image_tokens, processor.vision_feature_select_strategy)
    assert again.chat_template == processor.chat_template
    assert again.tokenizer.padding_side == "left"
    assert again.image_processor.image_aspect_ratio == processor.image_processor.image_aspect_ratio
