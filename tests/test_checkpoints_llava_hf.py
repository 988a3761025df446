"""llava-hf interoperability: export loads in vanilla transformers (no plugin), import back is lossless.

The vanilla check runs in a subprocess whose sys.path holds no copy of this package: transformers' own
`LlavaForConditionalGeneration` and `AutoProcessor` read the exported directory (and `trust_remote_code` reads this
package's format), and their inputs, logits and greedy generations must equal ours.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from checkpoint_layouts import CONVERSATION, sample_image
from transformers import LlavaForConditionalGeneration as BuiltinLlava

from transformers_llava import LlavaForConditionalGeneration, LlavaProcessor
from transformers_llava.checkpoints import CheckpointError, detect_layout, save_llava_hf, save_ours
from transformers_llava.checkpoints.llava_hf import EXTRA_KEY, to_llava_hf
from transformers_llava.demo.tiny import build_tiny_llava

VANILLA = textwrap.dedent("""
    import importlib.util, json, os, sys
    sys.path = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "transformers_llava"))]
    assert importlib.util.find_spec("transformers_llava") is None, "the plugin must not be importable here"
    import torch
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    job = json.loads(sys.argv[1])
    results = {}
    for name, directory in job["models"].items():
        if name.endswith("-ours"):  # this package's format: its own code travels with it
            from transformers import AutoModelForImageTextToText
            model = AutoModelForImageTextToText.from_pretrained(directory, trust_remote_code=True).eval()
            processor = AutoProcessor.from_pretrained(directory, trust_remote_code=True)
        else:
            model = LlavaForConditionalGeneration.from_pretrained(directory).eval()
            processor = AutoProcessor.from_pretrained(directory)
        prompt = processor.apply_chat_template(job["conversation"], add_generation_prompt=True, tokenize=False)
        inputs = processor(images=[Image.open(job["image"])], text=[prompt], return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits
            tokens = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        results[name] = dict(prompt=prompt, logits=logits, tokens=tokens, **inputs)
    torch.save(results, job["out"])
""")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny LLaVAs with the paper's linear projector and LLaVA-1.5's MLP (+ pad-to-square), in memory."""
    root = tmp_path_factory.mktemp("hf_models")
    torch.manual_seed(0)
    linear = build_tiny_llava(root / "linear")
    mlp = build_tiny_llava(root / "mlp", projector_type="mlp2x_gelu", image_aspect_ratio="pad",
                           conversation_format="vicuna_v1")
    return {"linear": linear, "mlp2x_gelu": mlp}


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_exports")
    return {name: save_llava_hf(model.eval(), processor, root / name) for name, (model, processor) in models.items()}


def test_export_runs_in_vanilla_transformers_without_the_plugin(models, exported, tmp_path):
    """llava-hf exports through the built-in classes; ours (as `save_ours` writes it) through trust_remote_code."""
    image_path = tmp_path / "image.png"
    sample_image().save(image_path)
    directories = {name: str(path) for name, path in exported.items()}
    model, processor = models["mlp2x_gelu"]
    directories["mlp2x_gelu-ours"] = str(save_ours(model, processor, tmp_path / "ours"))
    # what every save of ours writes: the backbone in auto_map and the model card, without touching `model`
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert "AutoModel" in saved["auto_map"] and (tmp_path / "ours" / "README.md").is_file()
    assert "AutoModel" not in (getattr(model.config, "auto_map", None) or {})
    job = dict(models=directories, conversation=CONVERSATION, image=str(image_path), out=str(tmp_path / "vanilla.pt"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-c", VANILLA, json.dumps(job)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    vanilla = torch.load(tmp_path / "vanilla.pt", weights_only=False)
    for name, theirs in vanilla.items():
        model, processor = models[name.removesuffix("-ours")]
        assert theirs["prompt"] == processor.apply_chat_template(CONVERSATION, add_generation_prompt=True,
                                                                 tokenize=False)
        inputs = processor(images=[sample_image()], text=[theirs["prompt"]], return_tensors="pt")
        assert torch.equal(inputs["input_ids"], theirs["input_ids"])
        assert torch.equal(inputs["pixel_values"], theirs["pixel_values"])  # pad-to-square included
        with torch.no_grad():
            ours = model(**inputs).logits
            tokens = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        assert (ours - theirs["logits"]).abs().max() <= 1e-5, name
        assert torch.equal(tokens, theirs["tokens"]), name


def test_linear_projector_export_is_exact(models):
    model, _ = models["linear"]
    hf_config, state = to_llava_hf(model.config, model.state_dict())
    assert hf_config.projector_hidden_act == "linear"
    width = model.config.text_config.hidden_size
    assert torch.equal(state["model.multi_modal_projector.linear_2.weight"], torch.eye(width))
    builtin = BuiltinLlava(hf_config).eval()
    builtin.load_state_dict(state, strict=True)
    features = torch.randn(2, 16, model.config.vision_config.hidden_size)
    with torch.no_grad():
        assert torch.equal(builtin.model.multi_modal_projector(features), model.model.multi_modal_projector(features))


def config_fields(config) -> dict:
    """Everything a config says about the model (not where it was loaded from, nor how it was saved)."""
    saved_as = ("_name_or_path", "dtype", "architectures", "transformers_version")
    return {k: v for k, v in config.to_dict().items() if k not in saved_as}


def test_round_trip_ours_llava_hf_ours_is_lossless(models, exported):
    for name, (model, processor) in models.items():
        assert detect_layout(exported[name]).kind == "llava-hf"
        back = LlavaForConditionalGeneration.from_pretrained(exported[name])
        back_processor = LlavaProcessor.from_pretrained(exported[name])
        before, after = model.state_dict(), back.state_dict()
        assert before.keys() == after.keys(), name
        assert all(torch.equal(before[k], after[k]) for k in before), name
        assert config_fields(back.config) == config_fields(model.config), name
        assert back.generation_config.to_diff_dict() == model.generation_config.to_diff_dict()
        assert back_processor.chat_template == processor.chat_template
        assert back_processor.image_processor.image_aspect_ratio == processor.image_processor.image_aspect_ratio
        assert back_processor.image_token_id == processor.image_token_id


def test_checkpoint_written_by_vanilla_transformers_imports(models, tmp_path):
    """The reverse direction: a directory saved by the built-in class itself (its own key names)."""
    model, processor = models["mlp2x_gelu"]
    hf_config, state = to_llava_hf(model.config, model.state_dict())
    delattr(hf_config, EXTRA_KEY)  # a checkpoint from elsewhere carries none of this package's fields
    builtin = BuiltinLlava(hf_config).eval()
    builtin.load_state_dict(state, strict=True)
    builtin.save_pretrained(tmp_path / "vanilla-saved")
    loaded = LlavaForConditionalGeneration.from_pretrained(tmp_path / "vanilla-saved").eval()
    assert loaded.config.projector_type == "mlp2x_gelu"
    inputs = processor(images=[sample_image()], text=["USER: <image>\nWhat is this? ASSISTANT:"], return_tensors="pt")
    with torch.no_grad():
        assert (loaded(**inputs).logits - builtin(**inputs).logits).abs().max() <= 1e-5


def test_llava_hf_with_linear_activation_but_trained_second_layer_stays_two_layers(models, tmp_path):
    model, _ = models["linear"]
    hf_config, state = to_llava_hf(model.config, model.state_dict())
    state["model.multi_modal_projector.linear_2.weight"] = state["model.multi_modal_projector.linear_2.weight"] * 1.5
    builtin = BuiltinLlava(hf_config).eval()
    builtin.load_state_dict(state, strict=True)
    builtin.save_pretrained(tmp_path / "tuned")
    loaded = LlavaForConditionalGeneration.from_pretrained(tmp_path / "tuned")
    assert (loaded.config.projector_type, loaded.config.projector_hidden_act) == ("mlp2x_gelu", "linear")
    features = torch.randn(1, 16, model.config.vision_config.hidden_size)
    with torch.no_grad():
        assert torch.equal(loaded.model.multi_modal_projector(features), builtin.model.multi_modal_projector(features))


def test_deeper_projector_cannot_be_exported(tmp_path):
    model, processor = build_tiny_llava(tmp_path / "towers", projector_type="mlp3x_gelu")
    with pytest.raises(CheckpointError, match="mlp3x_gelu.*exactly two"):
        save_llava_hf(model, processor, tmp_path / "out")
