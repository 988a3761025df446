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
from transformers_llava.checkpoints.llava_hf import EXTRA_KEY, from_llava_hf, to_llava_hf
from transformers_llava.demo.tiny import build_tiny_llava

# vllm/model_executor/layers/activation.py `_ACTIVATION_REGISTRY` (vLLM main, read 2026-12): the names
# `get_act_fn(config.projector_hidden_act)` accepts in vllm/model_executor/models/llava.py.
VLLM_ACTIVATIONS = {"gelu", "gelu_fast", "gelu_new", "gelu_pytorch_tanh", "relu", "relu2", "silu", "quick_gelu", "tanh",
                    "sigmoid", "xielu"}

VANILLA = textwrap.dedent("""
    import importlib.util, json, os, sys
    sys.path = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "transformers_llava"))]
    assert importlib.util.find_spec("transformers_llava") is None, "the plugin must not be importable here"
    import torch
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    job = json.loads(sys.argv[1])
    image = Image.open(job["image"])
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
        inputs = processor(images=[image], text=[prompt], return_tensors="pt")
        result = dict(prompt=prompt, **inputs)
        # The three ways engines tokenise a rendered chat prompt (see checkpoints/engine_prompts.py).
        for special in (True, False):
            ids = processor(images=[image], text=[prompt], add_special_tokens=special, return_tensors="pt")
            result[f"ids_special_{special}"] = ids["input_ids"]
        result["ids_apply_chat_template"] = processor.apply_chat_template(
            job["conversation"], add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
            processor_kwargs=dict(images=[image]))["input_ids"] if not name.endswith("-ours") else inputs["input_ids"]
        # vLLM renders through the tokenizer with the processor's template, content as parts ("openai") or as
        # a string with its "<image>" placeholder in front of the text ("string").
        tokenizer = processor.tokenizer
        as_string = [dict(m, content=m["content"] if isinstance(m["content"], str) else "".join(
            "<image>\\n" if part["type"] == "image" else part["text"] for part in m["content"]))
            for m in job["conversation"]]
        result["vllm_openai"] = tokenizer.apply_chat_template(
            job["conversation"], chat_template=processor.chat_template, add_generation_prompt=True, tokenize=False)
        result["vllm_string"] = tokenizer.apply_chat_template(
            as_string, chat_template=processor.chat_template, add_generation_prompt=True, tokenize=False)
        with torch.no_grad():
            result["logits"] = model(**inputs).logits
            result["tokens"] = model.generate(**inputs, max_new_tokens=6, do_sample=False,
                                              tokenizer=processor.tokenizer)
        results[name] = result
    torch.save(results, job["out"])
""")
FORMATS = ("llava_v0", "llava_v1", "vicuna_v1", "llava_llama_2", "plain")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny LLaVAs with the paper's linear projector in every conversation format, and LLaVA-1.5's MLP with
    pad-to-square, in memory. The tokenizer knows "###" and "####", so llava_v0's stop string has token ids."""
    root = tmp_path_factory.mktemp("hf_models")
    built = {}
    for conversation_format in FORMATS:
        torch.manual_seed(0)
        built[f"linear-{conversation_format}"] = build_tiny_llava(
            root / conversation_format, corpus=["Answer.### Next.####"] * 20, conversation_format=conversation_format)
    torch.manual_seed(0)
    built["mlp2x_gelu"] = build_tiny_llava(root / "mlp", projector_type="mlp2x_gelu", image_aspect_ratio="pad",
                                           conversation_format="vicuna_v1")
    return built


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_exports")
    return {name: save_llava_hf(model.eval(), processor, root / name) for name, (model, processor) in models.items()}


def test_export_runs_in_vanilla_transformers_without_the_plugin(models, exported, tmp_path):
    """llava-hf exports through the built-in classes; ours (as `save_ours` writes it) through trust_remote_code.

    Every way an engine tokenises an export's rendered prompt gives our ids, with exactly one BOS; logits and greedy
    tokens equal ours."""
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
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    vanilla = torch.load(tmp_path / "vanilla.pt", weights_only=False)
    assert sorted(vanilla) == sorted(directories)
    for name, theirs in vanilla.items():
        model, processor = models[name.removesuffix("-ours")]
        ours_prompt = processor.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)
        bos = processor.tokenizer.bos_token
        # " ": how the tiny Llama-like tokenizer starts a text after BOS; plain prompts start with "<image>"
        written = ours_prompt if name.endswith("-ours") else bos + ("" if "plain" in name else " ") + ours_prompt
        assert theirs["prompt"] == written, name
        assert theirs["vllm_openai"] == theirs["vllm_string"] == theirs["prompt"], name
        inputs = processor(images=[sample_image()], text=[ours_prompt], return_tensors="pt")
        for way in ("input_ids", "ids_special_True", "ids_special_False", "ids_apply_chat_template"):
            expected = inputs["input_ids"]
            if way == "ids_special_False" and name.endswith("-ours"):
                # This package's own format honours an explicit add_special_tokens=False and its template writes no
                # BOS: engines that tokenise that way are given the exports, whose templates write it.
                expected = expected[:, 1:]
            assert torch.equal(expected, theirs[way]), (name, way)
        ids = inputs["input_ids"][0]
        assert ids[0] == processor.tokenizer.bos_token_id != ids[1], name  # exactly one BOS in front
        assert torch.equal(inputs["pixel_values"], theirs["pixel_values"])  # pad-to-square included
        with torch.no_grad():
            ours = model(**inputs).logits
            tokens = model.generate(**inputs, max_new_tokens=6, do_sample=False, tokenizer=processor.tokenizer)
        assert (ours - theirs["logits"]).abs().max() <= 1e-5, name
        assert torch.equal(tokens, theirs["tokens"]), name


def test_export_gives_the_engines_one_bos_and_the_stop_tokens(models, exported):
    """What vLLM / SGLang read from the files: a template that writes BOS, a tokenizer that adds none, and
    llava_v0's "###" as stop token ids in generation_config.json's eos_token_id."""
    for name, directory in exported.items():
        model, processor = models[name]
        tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text())
        template = (directory / "chat_template.jinja").read_text()
        assert tokenizer_config.get("add_bos_token") is False, name
        prefix = "{{ bos_token }}" if "plain" in name else "{{ bos_token ~ ' ' }}"
        assert template == prefix + processor.chat_template, name
        assert json.loads((directory / "config.json").read_text())[EXTRA_KEY]["chat_template_bos_prefix"] == prefix
        generation = json.loads((directory / "generation_config.json").read_text())
        eos = generation["eos_token_id"]
        if name == "linear-llava_v0":
            stops = [i for i in range(len(processor.tokenizer)) if "###" in processor.tokenizer.decode([i])]
            assert len(stops) >= 2 and eos == [processor.tokenizer.eos_token_id, *stops]
            assert generation["stop_strings"] == ["###"]  # transformers still reads the string
        else:
            assert eos == processor.tokenizer.eos_token_id, name


@torch.no_grad()
def test_v0_stops_where_our_stop_string_does(models, exported):
    """Greedy generation with the exported stop ids (vLLM's rule: stop at a listed id, answer without it) ends
    exactly where ours ends with the `###` stop string, on answers forced to say "###"."""
    model, processor = models["linear-llava_v0"]
    generation = json.loads((exported["linear-llava_v0"] / "generation_config.json").read_text())
    stop_ids = set(generation["eos_token_id"])
    tokenizer = processor.tokenizer
    hash_id = min(stop_ids - {tokenizer.eos_token_id})
    assert "###" in tokenizer.decode([hash_id])
    bias = torch.zeros(model.config.text_config.vocab_size)
    bias[hash_id] = 50.0  # make the model say "###" after a few tokens
    inputs = processor(images=[sample_image()], text=[processor.apply_chat_template(
        CONVERSATION, add_generation_prompt=True, tokenize=False)], return_tensors="pt")
    length = inputs["input_ids"].shape[1]
    step = {"n": 0}

    def push_hashes(input_ids, scores):
        step["n"] += 1
        return scores + bias if step["n"] == 3 else scores

    from transformers import LogitsProcessorList
    ours = model.generate(**inputs, max_new_tokens=8, do_sample=False, logits_processor=LogitsProcessorList(
        [push_hashes]), stop_strings=["###"], tokenizer=tokenizer, eos_token_id=tokenizer.eos_token_id)[0, length:]
    step["n"] = 0
    engine = model.generate(**inputs, max_new_tokens=8, do_sample=False, logits_processor=LogitsProcessorList(
        [push_hashes]), stop_strings=None, eos_token_id=sorted(stop_ids))[0, length:]
    assert ours.tolist() == engine.tolist() and ours[-1] == hash_id
    assert tokenizer.decode(ours[:-1]).find("###") == -1


def test_linear_projector_export_is_exact(models):
    """vLLM's projector: linear_1 -> act (from its table, which has relu and no identity) -> linear_2, widths
    D_vision -> D_llm -> D_llm. The relu construction fits those shapes and reproduces ours bit for bit."""
    model, _ = models["linear-llava_v1"]
    hf_config, state = to_llava_hf(model.config, model.state_dict())
    assert hf_config.projector_hidden_act == "relu" and hf_config.projector_hidden_act in VLLM_ACTIVATIONS
    d_vision, d_llm = model.config.vision_config.hidden_size, model.config.text_config.hidden_size
    assert state["model.multi_modal_projector.linear_1.weight"].shape == (d_llm, d_vision)
    assert state["model.multi_modal_projector.linear_2.weight"].shape == (d_llm, d_llm)
    builtin = BuiltinLlava(hf_config).eval()
    builtin.load_state_dict(state, strict=True)
    features = torch.randn(2, 16, d_vision)
    with torch.no_grad():
        assert torch.equal(builtin.model.multi_modal_projector(features), model.model.multi_modal_projector(features))
        # the same thing written as vLLM's LlavaMultiModalProjector computes it
        first = torch.nn.functional.linear(features, state["model.multi_modal_projector.linear_1.weight"],
                                           state["model.multi_modal_projector.linear_1.bias"])
        engine = torch.nn.functional.linear(torch.relu(first), state["model.multi_modal_projector.linear_2.weight"],
                                            state["model.multi_modal_projector.linear_2.bias"])
        assert torch.equal(engine, model.model.multi_modal_projector(features))


def test_linear_projector_too_wide_for_relu_keeps_the_identity_form(tmp_path, capsys):
    """D_llm < 2 D_vision: no room for the relu construction; the identity form is written and the user told."""
    model, processor = build_tiny_llava(tmp_path / "wide", vision_hidden=48, text_hidden=64)
    save_llava_hf(model, processor, tmp_path / "wide-hf")
    assert "note: the linear projector is written with projector_hidden_act='linear'" in capsys.readouterr().out
    notes = []
    hf_config, state = to_llava_hf(model.config, model.state_dict(), notes)
    assert hf_config.projector_hidden_act == "linear" and "vLLM refuses" in notes[0] and "2 x the vision" in notes[0]
    config, back = from_llava_hf(hf_config.to_dict(), state)
    assert config.projector_type == "linear"
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


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
        assert back_processor.chat_template == processor.chat_template, name
        assert back_processor.image_processor.image_aspect_ratio == processor.image_processor.image_aspect_ratio
        assert back_processor.image_token_id == processor.image_token_id
        for text in ("USER: <image>\nWhat is this? ASSISTANT:", "<s><image>Hi"):  # BOS added exactly when missing
            ids = back_processor(images=[sample_image()], text=[text], return_tensors="pt")["input_ids"]
            assert torch.equal(ids, processor(images=[sample_image()], text=[text], return_tensors="pt")["input_ids"])


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


def test_llava_hf_with_relu_but_trained_second_layer_stays_two_layers(models, tmp_path):
    """A relu export fine-tuned elsewhere is no longer the exact construction: it imports as the two layers it is."""
    model, _ = models["linear-llava_v1"]
    hf_config, state = to_llava_hf(model.config, model.state_dict())
    state["model.multi_modal_projector.linear_2.weight"][:, 1] += 0.1  # column 1 no longer -column 0
    builtin = BuiltinLlava(hf_config).eval()
    builtin.load_state_dict(state, strict=True)
    builtin.save_pretrained(tmp_path / "tuned")
    loaded = LlavaForConditionalGeneration.from_pretrained(tmp_path / "tuned")
    assert (loaded.config.projector_type, loaded.config.projector_hidden_act) == ("mlp2x_gelu", "relu")
    features = torch.randn(1, 16, model.config.vision_config.hidden_size)
    with torch.no_grad():
        assert torch.equal(loaded.model.multi_modal_projector(features), builtin.model.multi_modal_projector(features))


def test_deeper_projector_cannot_be_exported(tmp_path):
    model, processor = build_tiny_llava(tmp_path / "towers", projector_type="mlp3x_gelu")
    with pytest.raises(CheckpointError, match="mlp3x_gelu.*exactly two"):
        save_llava_hf(model, processor, tmp_path / "out")
