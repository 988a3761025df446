"""Logits and generations against transformers' built-in Llava with the same weights; the projector's arithmetic;
packed sequences (several samples in one row) give each sample the hidden states it has alone."""

import pytest
import torch
from transformers import CLIPVisionConfig, LlamaConfig
from transformers import LlavaConfig as BuiltinLlavaConfig
from transformers import LlavaForConditionalGeneration as BuiltinLlava

from transformers_llava import LlavaConfig, LlavaForConditionalGeneration

IMAGE_TOKEN = 100
VISION = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                          image_size=32, patch_size=8, projection_dim=32).to_dict()
TEXT = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2).to_dict()


def make_pair(layer, strategy):
    torch.manual_seed(0)
    kwargs = dict(vision_config=VISION, text_config=TEXT, image_token_index=IMAGE_TOKEN,
                  vision_feature_layer=layer, vision_feature_select_strategy=strategy)
    ours = LlavaForConditionalGeneration(LlavaConfig(projector_type="mlp2x_gelu", **kwargs)).eval()
    builtin = BuiltinLlava(BuiltinLlavaConfig(**kwargs)).eval()
    builtin.load_state_dict(ours.state_dict(), strict=True)
    return ours, builtin


def prompt(batch, tokens_per_image, length=40, start=3):
    ids = torch.randint(0, IMAGE_TOKEN, (batch, length))
    ids[:, start:start + tokens_per_image] = IMAGE_TOKEN
    return ids


@pytest.mark.parametrize("layer", [-2, [-3, -1]])
@pytest.mark.parametrize("strategy", ["default", "full"])
def test_logits_and_greedy_generation_match_builtin_llava(layer, strategy):
    ours, builtin = make_pair(layer, strategy)
    tokens = ours.config.image_seq_length
    assert tokens == (16 if strategy == "default" else 17)
    ids, pixels = prompt(2, tokens), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        diff = (ours(input_ids=ids, pixel_values=pixels).logits
                - builtin(input_ids=ids, pixel_values=pixels).logits).abs().max().item()
    assert diff <= 1e-5
    mine = ours.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=12, do_sample=False)
    theirs = builtin.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=12, do_sample=False)
    assert torch.equal(mine, theirs)


def test_linear_projector_is_exactly_w_z_plus_b():
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=VISION, text_config=TEXT,
                                                      image_token_index=IMAGE_TOKEN)).eval()
    projector = model.model.multi_modal_projector
    assert [name for name, _ in projector.named_children()] == ["linear_1"]
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        expected = hidden @ projector.linear_1.weight.T + projector.linear_1.bias
        features = model.get_image_features(pixels).pooler_output
    assert len(features) == 2 and features[0].shape == (16, 64)
    torch.testing.assert_close(torch.stack(features), expected, rtol=0, atol=1e-6)


def test_packed_samples_get_the_hidden_states_they_have_alone():
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=VISION, text_config=TEXT,
                                                      image_token_index=IMAGE_TOKEN)).eval()
    lengths, pixels = [30, 45, 24], torch.randn(3, 3, 32, 32)
    samples = [prompt(1, 16, length=n, start=2 + i)[0] for i, n in enumerate(lengths)]
    with torch.no_grad():
        alone = [model.model(input_ids=s[None], pixel_values=pixels[i:i + 1]).last_hidden_state[0]
                 for i, s in enumerate(samples)]
        packed = model.model(
            input_ids=torch.cat(samples)[None],
            position_ids=torch.cat([torch.arange(n) for n in lengths])[None],
            pixel_values=pixels,
        ).last_hidden_state[0]
    for sample, chunk in zip(alone, packed.split(lengths)):
        torch.testing.assert_close(chunk, sample, rtol=1e-5, atol=1e-5)


def test_trl_structure():
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=VISION, text_config=TEXT,
                                                      image_token_index=IMAGE_TOKEN))
    assert model.base_model_prefix == "model" and model.base_model is model.model
    assert isinstance(model.get_output_embeddings(), torch.nn.Linear)
    ids, pixels = prompt(1, 16), torch.randn(1, 3, 32, 32)
    out = model.model(input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids),
                      position_ids=torch.arange(40)[None])
    assert out.last_hidden_state.shape == (1, 40, 64)


def test_image_token_count_mismatch_is_reported_per_row():
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=VISION, text_config=TEXT,
                                                      image_token_index=IMAGE_TOKEN))
    ids = prompt(2, 16)
    ids[1, 3:10] = 5  # row 1 lost 7 of its image tokens
    with pytest.raises(ValueError, match=r"25 image tokens \(row 0: 16, row 1: 9\).*2 images give 32 features"):
        model(input_ids=ids, pixel_values=torch.randn(2, 3, 32, 32))
