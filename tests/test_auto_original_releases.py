"""`AutoModel*.from_pretrained`, `AutoProcessor` and `pipeline` on original LLaVA releases give this package's
classes (the same as its own `from_pretrained`), while llava-hf checkpoints still load as the built-in classes.

Every test checks what `AutoConfig` resolves before any model is built: a release read as the built-in config would
build a default 7B model."""

import json
import subprocess
import sys

import pytest
import torch
import transformers
from PIL import Image
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor, pipeline

from checkpoint_layouts import towers, write_v15_release  # noqa: F401  (fixture)
from transformers_llava import LlavaForConditionalGeneration, LlavaModel, LlavaProcessor
from transformers_llava.checkpoints import save_llava_hf


@pytest.fixture(scope="module")
def releases(tmp_path_factory, towers):  # noqa: F811
    """A v1.5 release (model_type "llava") naming a local tower, and a later one (model_type "llava_llama") naming
    the Hub tower, which the tests point at a local copy with `vision_tower=`."""
    root = tmp_path_factory.mktemp("auto_releases")
    paths = {"llava": root / "llava-v1.5-7b", "llava_llama": root / "llava-v1.5-13b"}
    write_v15_release(paths["llava"], towers, model_type="llava", mm_vision_tower=str(towers.vision_dir))
    write_v15_release(paths["llava_llama"], towers, model_type="llava_llama")
    return paths


def tower_option(path, towers):  # noqa: F811
    return {} if path.name == "llava-v1.5-7b" else {"vision_tower": towers.vision_dir}


def assert_not_builtin_config(path):
    config = AutoConfig.from_pretrained(path)
    assert not isinstance(config, transformers.LlavaConfig), "read as the built-in llava: would build a 7B model"
    return config


@pytest.mark.parametrize("model_type", ["llava", "llava_llama"])
def test_auto_classes_load_original_releases_as_ours(releases, towers, model_type):  # noqa: F811
    path = releases[model_type]
    option = tower_option(path, towers)
    config = assert_not_builtin_config(path)
    assert config.mm_projector_type == "mlp2x_gelu" and config.architectures == ["LlavaLlamaForCausalLM"]

    ours = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32, **option)
    auto = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32, **option)
    assert type(auto) is type(ours) and auto.config.to_dict() == ours.config.to_dict()
    for (name, mine), (_, theirs) in zip(auto.state_dict().items(), ours.state_dict().items()):
        assert torch.equal(mine, theirs), name

    backbone = AutoModel.from_pretrained(path, dtype=torch.float32, **option)
    assert type(backbone) is LlavaModel
    torch.testing.assert_close(backbone.multi_modal_projector.linear_2.weight,
                               ours.model.multi_modal_projector.linear_2.weight)

    processor = AutoProcessor.from_pretrained(path, **option)
    assert type(processor) is LlavaProcessor
    assert processor.chat_template == LlavaProcessor.from_pretrained(path, **option).chat_template


def test_pipeline_on_an_original_release_answers_as_our_model(releases):
    path = releases["llava"]
    assert_not_builtin_config(path)
    pipe = pipeline("image-text-to-text", model=str(path), dtype=torch.float32)
    assert type(pipe.model) is LlavaForConditionalGeneration
    image = Image.new("RGB", (40, 30), "red")
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What?"}]}]
    answer = pipe(text=messages, generate_kwargs={"max_new_tokens": 5, "do_sample": False},
                  return_full_text=False)[0]["generated_text"]

    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    processor = LlavaProcessor.from_pretrained(path)
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    ids = model.generate(**inputs, max_new_tokens=5, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    assert answer.strip() == processor.decode(ids, skip_special_tokens=True).strip() != ""


def test_a_release_config_alone_cannot_build_a_model_and_says_what_works(releases):
    config = assert_not_builtin_config(releases["llava_llama"])
    for auto in (AutoModel, AutoModelForImageTextToText):
        with pytest.raises(ValueError, match=r"mm_vision_tower.*AutoModelForImageTextToText.from_pretrained\(path\)"):
            auto.from_config(config)


def test_llava_hf_checkpoints_still_load_as_the_builtin_classes(releases, tmp_path):
    model = LlavaForConditionalGeneration.from_pretrained(releases["llava"], dtype=torch.float32)
    exported = save_llava_hf(model, LlavaProcessor.from_pretrained(releases["llava"]), tmp_path / "hf")
    config = AutoConfig.from_pretrained(exported)
    assert type(config) is transformers.LlavaConfig
    vanilla = subprocess.run(  # the same call in a process that never imported this package
        [sys.executable, "-c", f"from transformers import AutoConfig; "
                               f"print(AutoConfig.from_pretrained({str(exported)!r}).to_json_string())"],
        capture_output=True, text=True, check=True).stdout
    assert json.loads(config.to_json_string()) == json.loads(vanilla)
    assert type(AutoConfig.for_model("llava")) is transformers.LlavaConfig
    assert type(AutoModelForImageTextToText.from_pretrained(exported)) is transformers.LlavaForConditionalGeneration
    assert type(AutoModel.from_pretrained(exported)) is transformers.LlavaModel
    assert type(AutoProcessor.from_pretrained(exported)) is transformers.LlavaProcessor
