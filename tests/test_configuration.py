"""LlavaConfig: defaults are the paper's model, presets give the releases, bad values fail with the field named."""

import pytest

from transformers_llava import PRESETS, LlavaConfig


def test_defaults_reproduce_the_paper():
    config = LlavaConfig()
    vision = config.vision_config
    assert (vision.model_type, vision.image_size, vision.patch_size, vision.hidden_size) == (
        "clip_vision_model", 224, 14, 1024)
    assert config.image_seq_length == 256  # 16 x 16 patches, CLS dropped
    assert config.vision_feature_layer == -2 and config.vision_feature_select_strategy == "default"
    assert config.projector_type == "linear" and config.image_aspect_ratio == "square"
    assert config.text_config.model_type == "llama" and config.text_config.hidden_size == 5120  # Vicuna-13B
    assert config.image_token_id == config.image_token_index


@pytest.mark.parametrize("name, size, projector, aspect, tokens", [
    ("llava-v1", 224, "linear", "square", 256),
    ("llava-v1-7b", 224, "linear", "square", 256),
    ("llava-v1.5-7b", 336, "mlp2x_gelu", "pad", 576),
    ("llava-v1.5-13b", 336, "mlp2x_gelu", "pad", 576),
])
def test_presets(name, size, projector, aspect, tokens):
    config = LlavaConfig.from_preset(name)
    assert config.vision_config.image_size == size
    assert (config.projector_type, config.image_aspect_ratio, config.image_seq_length) == (projector, aspect, tokens)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="llava-v1.5-7b"):
        LlavaConfig.from_preset("llava-v2")


def test_full_strategy_keeps_cls_token():
    assert LlavaConfig(vision_feature_select_strategy="full").image_seq_length == 257


def test_round_trip_through_dict():
    config = LlavaConfig.from_preset("llava-v1.5-7b", vision_feature_layer=[-3, -2])
    again = LlavaConfig.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()


@pytest.mark.parametrize("kwargs, message", [
    (dict(projector_type="mlp"), r"projector_type='mlp'.*'linear'.*'mlp2x_gelu'"),
    (dict(projector_type="mlp0x_gelu"), r"projector_type='mlp0x_gelu'"),
    (dict(vision_feature_layer=30), r"vision_feature_layer=30.*24 layers.*-25\.\.24"),
    (dict(vision_feature_layer=[-2, -40]), r"\[-40\] out of range"),
    (dict(vision_feature_layer=[]), r"empty list"),
    (dict(vision_feature_select_strategy="cls"), r"vision_feature_select_strategy"),
    (dict(image_aspect_ratio="stretch"), r"image_aspect_ratio"),
])
def test_bad_values_fail_in_the_constructor_naming_the_field(kwargs, message):
    with pytest.raises(Exception, match=message):
        LlavaConfig(**kwargs)


def test_mlp_depths_are_accepted():
    assert LlavaConfig(projector_type="mlp3x_gelu").projector_type == "mlp3x_gelu"
    assert set(PRESETS) >= {"llava-v1", "llava-v1.5"}
