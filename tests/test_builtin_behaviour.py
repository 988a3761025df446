"""Where users and tools rely on transformers' built-in Llava behaving a certain way, ours behaves the same:
tuple outputs, `get_image_features`' optional outputs, image tokens without images, assisted generation, a decode
step that compiles as one graph, and generation that never emits (or crashes on) the `<image>` token."""

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, StaticCache

from test_modeling_parity import IMAGE_TOKEN, make_pair, prompt


def image_prompt(processor):
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}],
        add_generation_prompt=True,
    )
    return processor(images=Image.new("RGB", (40, 30), "red"), text=text, return_tensors="pt")


def test_return_dict_false_gives_the_builtin_tuples():
    ours, builtin = make_pair(-2, "default")
    ids, pixels = prompt(2, 16), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for mine, theirs in ((ours, builtin), (ours.model, builtin.model)):
            got, want = mine(input_ids=ids, pixel_values=pixels, return_dict=False), theirs(
                input_ids=ids, pixel_values=pixels, return_dict=False)
            assert isinstance(got, tuple) and len(got) == len(want)
            for a, b in zip(got, want):
                if isinstance(a, torch.Tensor):
                    torch.testing.assert_close(a, b)
        ours.config.return_dict = False  # the config's default, as `can_return_tuple` reads it
        assert isinstance(ours(input_ids=ids, pixel_values=pixels), tuple)


def test_get_image_features_optional_outputs_match_builtin():
    ours, builtin = make_pair([-3, -1], "default")
    pixels = torch.randn(2, 3, 32, 32)
    for model in (ours, builtin):
        model.set_attn_implementation("eager")
    with torch.no_grad():
        got = ours.get_image_features(pixel_values=pixels, output_attentions=True, output_hidden_states=True)
        want = builtin.get_image_features(pixel_values=pixels, output_attentions=True, output_hidden_states=True)
        assert len(got.attentions) == len(want.attentions) == 3
        assert len(got.hidden_states) == len(want.hidden_states) == 4
        for a, b in zip(got.pooler_output, want.pooler_output):
            torch.testing.assert_close(a, b)
        as_tuple = ours.get_image_features(pixel_values=pixels, return_dict=False)
        assert isinstance(as_tuple, tuple)
        # The vision config's flag asks for every hidden state, as with the built-in.
        ours.config.vision_config.output_hidden_states = True
        assert len(ours.get_image_features(pixel_values=pixels).hidden_states) == 4


def test_image_tokens_without_images_embed_as_text_like_builtin():
    ours, builtin = make_pair(-2, "default")
    ids = prompt(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids).logits, builtin(input_ids=ids).logits)
        # Features given but counts differ stays an error naming both counts.
        with pytest.raises(ValueError, match=r"hold 32 image tokens.*1 images give 16 features"):
            ours(input_ids=ids, pixel_values=torch.randn(1, 3, 32, 32))


def test_assisted_generation_with_our_model_as_assistant(tiny, tiny_dir):
    model, processor = tiny
    assistant = AutoModelForImageTextToText.from_pretrained(tiny_dir).eval()
    inputs = image_prompt(processor)
    plain = model.generate(**inputs, max_new_tokens=8, do_sample=False, suppress_tokens=[])
    assisted = model.generate(**inputs, max_new_tokens=8, do_sample=False, suppress_tokens=[],
                              assistant_model=assistant)
    assert torch.equal(plain, assisted)  # greedy assisted decoding gives exactly the greedy answer


def biased_to_image_token(model):
    """The LM head made to prefer `<image>` after every token."""
    bias = torch.zeros(model.config.text_config.vocab_size)
    bias[model.config.image_token_id] = 1e4
    model.lm_head.bias = torch.nn.Parameter(bias)
    return model


def test_generation_suppresses_the_image_token_by_default_and_survives_save(tiny, tmp_path):
    model, processor = tiny
    assert model.generation_config.suppress_tokens == [model.config.image_token_id]
    model = biased_to_image_token(model)
    inputs = image_prompt(processor)
    prompt_length = inputs["input_ids"].shape[1]
    new = model.generate(**inputs, max_new_tokens=6, do_sample=False)[0, prompt_length:]
    assert model.config.image_token_id not in new.tolist()

    model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert reloaded.generation_config.suppress_tokens == [model.config.image_token_id]
    new = reloaded.generate(**inputs, max_new_tokens=6, do_sample=False)[0, prompt_length:]
    assert model.config.image_token_id not in new.tolist()


def test_generating_the_image_token_when_allowed_never_crashes(tiny):
    model, processor = tiny
    model = biased_to_image_token(model)
    inputs = image_prompt(processor)
    prompt_length = inputs["input_ids"].shape[1]
    runs = {use_cache: model.generate(**inputs, max_new_tokens=4, do_sample=False, suppress_tokens=[],
                                      use_cache=use_cache, output_logits=True, return_dict_in_generate=True)
            for use_cache in (True, False)}
    assert runs[True].sequences[0, prompt_length:].tolist() == [model.config.image_token_id] * 4
    # Without a cache each step re-reads the image for the prompt's placeholders; generated ones stay text.
    assert torch.equal(runs[True].sequences, runs[False].sequences)
    for cached, recomputed in zip(runs[True].logits, runs[False].logits):
        torch.testing.assert_close(cached - cached.max(), recomputed - recomputed.max(), atol=1e-3, rtol=0)


def test_a_decode_step_compiles_as_one_graph_with_a_static_cache(tiny):
    model, processor = tiny
    assert model._can_compile_fullgraph
    inputs = image_prompt(processor)
    length = inputs["input_ids"].shape[1]
    cache = StaticCache(config=model.config, max_cache_len=length + 4)
    step = torch.compile(model.forward, fullgraph=True, backend="eager")  # graph capture only: no C++ build
    with torch.no_grad():
        token = model(**inputs, past_key_values=cache).logits[:, -1:].argmax(-1)
        eager_cache = StaticCache(config=model.config, max_cache_len=length + 4)
        model(**inputs, past_key_values=eager_cache)
        for offset in range(2):
            position = torch.tensor([length + offset])
            compiled = step(input_ids=token, past_key_values=cache, position_ids=position[None]).logits
            eager = model(input_ids=token, past_key_values=eager_cache, position_ids=position[None]).logits
            torch.testing.assert_close(compiled, eager)
            token = compiled[:, -1:].argmax(-1)


def test_from_pretrained_with_loading_info_returns_model_and_info(tiny_dir):
    model, info = AutoModelForImageTextToText.from_pretrained(tiny_dir, output_loading_info=True)
    assert model.generation_config.suppress_tokens == [model.config.image_token_id]
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
