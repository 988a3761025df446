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


def test_one_bos_by_default_and_add_special_tokens_as_given(tiny):
    _, processor = tiny
    bos = processor.tokenizer.bos_token_id
    for text in ("Hello there", "<s>Hello there"):
        ids = processor(text=text)["input_ids"][0]
        assert ids[0] == bos and list(ids).count(bos) == 1
    assert processor(text="Hello there", add_special_tokens=True)["input_ids"][0][0] == bos
    assert bos not in processor(text="Hello there", add_special_tokens=False)["input_ids"][0]
    # A conversation's ids start with one BOS even when the caller expects the template to write it (TRL).
    ids = processor.apply_chat_template([{"role": "user", "content": "Hello there"}], tokenize=True,
                                        processor_kwargs={"add_special_tokens": False})
    ids = ids["input_ids"][0] if hasattr(ids, "keys") else ids[0]
    assert ids[0] == bos and list(ids).count(bos) == 1


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


def test_num_multimodal_tokens_as_builtin_llava_processor_reports_them(tiny):
    from transformers import LlavaProcessor as BuiltinLlavaProcessor

    _, processor = tiny
    builtin = BuiltinLlavaProcessor(image_processor=processor.image_processor, tokenizer=processor.tokenizer,
                                    patch_size=processor.patch_size,
                                    vision_feature_select_strategy=processor.vision_feature_select_strategy,
                                    num_additional_image_tokens=processor.num_additional_image_tokens)
    sizes = [[30, 40], [500, 120]]
    assert processor._get_num_multimodal_tokens(image_sizes=sizes) == builtin._get_num_multimodal_tokens(image_sizes=sizes)
    assert processor._get_num_multimodal_tokens(image_sizes=sizes).num_image_tokens == [processor.tokens_per_image] * 2


def test_explicit_add_special_tokens_false_is_honoured(tiny):
    _, processor = tiny
    text = "USER: <image>\nWhat is this? ASSISTANT:"
    out = processor(images=Image.new("RGB", (40, 30)), text=text, add_special_tokens=False,
                    return_text_replacement_offsets=True, return_mm_token_type_ids=True)
    ids = out["input_ids"][0]
    expanded = text.replace("<image>", "<image>" * processor.tokens_per_image)
    assert ids == processor.tokenizer(expanded, add_special_tokens=False)["input_ids"]
    assert ids[0] != processor.tokenizer.bos_token_id
    # The image tokens sit where the replacement offsets put them in the text.
    span = out["text_replacement_offsets"][0][0]["new_span"]
    encoding = processor.tokenizer(expanded, add_special_tokens=False, return_offsets_mapping=True)
    inside = [span[0] <= start < span[1] for start, _ in encoding["offset_mapping"]]
    assert out["mm_token_type_ids"][0] == [int(flag) for flag in inside]
    # Left to itself, the processor still starts every prompt with one BOS.
    assert processor(text=text.replace("<image>\n", ""))["input_ids"][0][0] == processor.tokenizer.bos_token_id
