"""Auto classes, side by side with transformers' built-in llava, remote code for machines without the package,
and `push_to_hub` through huggingface_hub's own upload path."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
)
from transformers import LlavaConfig as BuiltinLlavaConfig
from transformers import LlavaForConditionalGeneration as BuiltinLlava
from transformers import LlavaProcessor as BuiltinLlavaProcessor

import transformers_llava
from fake_hub import FakeHub

PACKAGE_PARENT = str(Path(transformers_llava.__file__).resolve().parents[1])

# Run in a child process where `import transformers_llava` fails: its folder is off sys.path and the import blocked.
WITHOUT_PACKAGE = textwrap.dedent(f"""
    import sys, importlib.abc
    sys.path = [p for p in sys.path if p and p != {PACKAGE_PARENT!r}]
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "transformers_llava":
                raise ModuleNotFoundError(name)
    sys.meta_path.insert(0, Block())
""")


def run_python(code: str, *args, env=None) -> str:
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def sample_inputs(processor):
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}],
        add_generation_prompt=True)
    return processor(images=[Image.new("RGB", (40, 30), "orange")], text=[text], return_tensors="pt")


def test_auto_classes_load_our_checkpoint(tiny_dir, tiny):
    model, processor = tiny
    assert type(AutoConfig.from_pretrained(tiny_dir)).__name__ == "TransformersLlavaConfig"
    assert type(model) is transformers_llava.LlavaForConditionalGeneration
    assert type(processor) is transformers_llava.LlavaProcessor
    assert type(processor.image_processor) is transformers_llava.LlavaImageProcessor
    backbone = AutoModel.from_pretrained(tiny_dir)
    assert type(backbone) is transformers_llava.LlavaModel
    inputs = sample_inputs(processor)
    with torch.no_grad():
        hidden = backbone(**inputs).last_hidden_state
        torch.testing.assert_close(model.lm_head(hidden), model(**inputs).logits)


def test_saved_names_never_resolve_to_builtin_classes(tiny_dir):
    config = json.loads((tiny_dir / "config.json").read_text())
    processor_config = json.loads((tiny_dir / "processor_config.json").read_text())
    assert config["model_type"] == "transformers_llava"
    assert config["architectures"] == ["TransformersLlavaForConditionalGeneration"]
    assert processor_config["image_processor"]["image_processor_type"] == "TransformersLlavaImageProcessor"
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForImageTextToText"}


def test_builtin_llava_still_loads_as_builtin_in_the_same_process(tmp_path, tiny_dir):
    torch.manual_seed(0)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=32)
    text = LlamaConfig(vocab_size=600, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2)
    builtin = BuiltinLlava(BuiltinLlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                                              image_token_index=489)).eval()
    builtin.save_pretrained(tmp_path)
    tokenizer = AutoProcessor.from_pretrained(tiny_dir).tokenizer
    BuiltinLlavaProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32},
                                                                crop_size={"height": 32, "width": 32}),
                          tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1).save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert type(loaded) is BuiltinLlava and type(AutoConfig.from_pretrained(tmp_path)) is BuiltinLlavaConfig
    assert type(AutoProcessor.from_pretrained(tmp_path)) is BuiltinLlavaProcessor
    torch.testing.assert_close(loaded.lm_head.weight, builtin.lm_head.weight)


def test_checkpoint_keeps_every_weight_through_a_save_load_cycle(tiny, tmp_path):
    model, _ = tiny
    model.save_pretrained(tmp_path)
    again = AutoModelForImageTextToText.from_pretrained(tmp_path)
    for (name, mine), (_, theirs) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(mine, theirs), name


def test_remote_code_loads_without_the_package(tiny_dir, tiny, tmp_path):
    model, processor = tiny
    inputs = sample_inputs(processor)
    with torch.no_grad():
        expected = model(**inputs).logits
    out = tmp_path / "logits.pt"
    run_python(WITHOUT_PACKAGE + textwrap.dedent("""
        import sys, torch
        from PIL import Image
        from transformers import AutoModelForImageTextToText, AutoProcessor
        model = AutoModelForImageTextToText.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model)
        assert type(processor).__module__.startswith("transformers_modules"), type(processor)
        text = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}],
            add_generation_prompt=True)
        inputs = processor(images=[Image.new("RGB", (40, 30), "orange")], text=[text], return_tensors="pt")
        with torch.no_grad():
            torch.save(model(**inputs).logits, sys.argv[2])
    """), tiny_dir, out)
    torch.testing.assert_close(torch.load(out), expected)


def test_installed_package_wins_over_remote_code(tiny_dir):
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(tiny_dir, trust_remote_code=True)
    assert type(model) is transformers_llava.LlavaForConditionalGeneration
    assert type(processor) is transformers_llava.LlavaProcessor


def test_push_to_hub_uploads_what_save_pretrained_writes(tiny_dir, tmp_path):
    with FakeHub() as hub:
        run_python(textwrap.dedent("""
            import sys
            import transformers_llava
            from transformers import AutoModelForImageTextToText, AutoProcessor
            AutoModelForImageTextToText.from_pretrained(sys.argv[1]).push_to_hub("user/tiny-llava")
            AutoProcessor.from_pretrained(sys.argv[1]).push_to_hub("user/tiny-llava")
        """), tiny_dir, env={"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "hf_test", "HF_HUB_OFFLINE": "0",
                             "HF_HUB_DISABLE_XET": "1"})
        uploaded = hub.files["user/tiny-llava"]
    saved = {p.name for p in tiny_dir.iterdir()}
    assert saved - {"README.md"} <= set(uploaded), saved - set(uploaded)
    assert {"modeling_llava.py", "configuration_llava.py", "processing_llava.py",
            "image_processing_llava.py"} <= set(uploaded)
    for name, content in uploaded.items():
        (tmp_path / name).write_bytes(content)
    # What was uploaded loads on a machine without the package.
    run_python(WITHOUT_PACKAGE + textwrap.dedent("""
        import sys
        from transformers import AutoModelForImageTextToText, AutoProcessor
        AutoModelForImageTextToText.from_pretrained(sys.argv[1], trust_remote_code=True)
        AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
    """), tmp_path)
