"""`convert --to original`: the original release layout, lossless back into this package, and what its readers need.

Readers' requirements, read from their sources (see checkpoints/original_writer.py): the original repo
(haotian-liu/LLaVA `llava/model/builder.py`, `llava_arch.py`, `multimodal_projector/builder.py`) and SGLang v0.5's
`LlavaLlamaForCausalLM` (`python/sglang/srt/models/llava.py`, `LlavaBaseForCausalLM.load_weights`).
"""

import json
import re

import pytest
import torch
from checkpoint_layouts import CONVERSATION, sample_image, towers, v15  # noqa: F401 (fixtures)
from safetensors.torch import load_file
from transformers import LlavaConfig
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from transformers_llava import LlavaForConditionalGeneration, LlavaProcessor
from transformers_llava.checkpoints import CheckpointError, detect_layout, save_ours
from transformers_llava.checkpoints.cli import main as convert
from transformers_llava.checkpoints.original_writer import save_original
from transformers_llava.demo.tiny import build_tiny_llava

TOWER = "openai/clip-vit-large-patch14-336"
# SGLang's LlavaBaseForCausalLM.load_weights: the only renames it makes; every other projector / tower name is a
# KeyError there, and the rest goes to its LlamaForCausalLM.
SGLANG_RENAMES = {"model.mm_projector.0": "multi_modal_projector.linear_1",
                  "model.mm_projector.2": "multi_modal_projector.linear_2",
                  "model.vision_tower.vision_tower": "vision_tower"}
LLAMA_KEY = re.compile(r"^(model\.(embed_tokens|norm)\.weight|model\.layers\.\d+\..+|lm_head\.weight)$")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("original_export")
    torch.manual_seed(0)
    linear = build_tiny_llava(root / "linear", conversation_format="llava_v0")
    torch.manual_seed(1)
    mlp = build_tiny_llava(root / "mlp", projector_type="mlp2x_gelu", image_aspect_ratio="pad",
                           conversation_format="vicuna_v1", vision_feature_layer=-1)
    return {"linear": linear, "mlp2x_gelu": mlp}


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("original_out")
    return {name: save_original(model, processor, root / name, vision_tower_name=TOWER)
            for name, (model, processor) in models.items()}


def config_fields(config) -> dict:
    """Everything a config says about the model, not where it (or a tower inside it) was loaded from."""
    saved_as = ("_name_or_path", "dtype", "architectures", "transformers_version")
    fields = {k: v for k, v in config.to_dict().items() if k not in saved_as}
    for tower in ("text_config", "vision_config"):
        fields[tower] = {k: v for k, v in fields[tower].items() if k != "_name_or_path"}
    return fields


def test_ours_original_ours_is_bitwise_lossless(models, exported):
    for name, (model, processor) in models.items():
        assert detect_layout(exported[name]).kind == "original"
        back = LlavaForConditionalGeneration.from_pretrained(exported[name])  # offline: the tower's config is inside
        back_processor = LlavaProcessor.from_pretrained(exported[name])
        before, after = model.state_dict(), back.state_dict()
        assert before.keys() == after.keys(), name
        assert all(torch.equal(before[k], after[k]) for k in before), name
        assert config_fields(back.config) == config_fields(model.config), name
        assert back.generation_config.to_diff_dict() == model.generation_config.to_diff_dict(), name
        assert back_processor.chat_template == processor.chat_template, name
        prompt = processor.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)
        assert back_processor.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False) == prompt
        ours = processor(images=[sample_image()], text=[prompt], return_tensors="pt")
        theirs = back_processor(images=[sample_image()], text=[prompt], return_tensors="pt")
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name


def test_config_has_what_the_original_code_and_sglang_read(models, exported):
    for name, (model, processor) in models.items():
        config = json.loads((exported[name] / "config.json").read_text())
        assert config["architectures"] == ["LlavaLlamaForCausalLM"] and config["model_type"] == "llava"
        assert config["mm_vision_tower"] == TOWER and "clip" in config["mm_vision_tower"]
        assert config["mm_hidden_size"] == model.config.vision_config.hidden_size
        assert re.fullmatch(r"linear|mlp\d+x_gelu", config["mm_projector_type"])
        assert config["mm_projector_type"] == model.config.projector_type
        assert config["mm_vision_select_layer"] == model.config.vision_feature_layer
        assert config["mm_vision_select_feature"] == "patch"  # vision_feature_select_strategy "default"
        assert config["image_aspect_ratio"] == model.config.image_aspect_ratio
        assert config["mm_patch_merge_type"] == "flat" and config["mm_use_im_start_end"] is False
        assert config["image_token_index"] == processor.tokenizer.convert_tokens_to_ids("<image>")
        assert config["hidden_size"] == model.config.text_config.hidden_size
        assert config["vocab_size"] == model.config.text_config.vocab_size
        # llava_v0's "###" as stop token ids where SGLang reads stops (generation_config.json eos_token_id)
        eos = json.loads((exported[name] / "generation_config.json").read_text())["eos_token_id"]
        tokenizer = processor.tokenizer
        stops = [i for i in range(len(tokenizer)) if "###" in tokenizer.decode([i])]
        assert eos == ([tokenizer.eos_token_id, *stops] if name == "linear" else tokenizer.eos_token_id), name
        assert name != "linear" or stops


def test_weights_have_the_names_sglang_maps(models, exported):
    """Every tensor is a Llama tensor or one SGLang renames; an MLP projector computes ours inside transformers'
    LlavaMultiModalProjector, the module SGLang builds."""
    for name, (model, _) in models.items():
        weights = load_file(exported[name] / "model.safetensors")
        for key in weights:
            assert LLAMA_KEY.match(key) or key.startswith(("model.mm_projector.", "model.vision_tower.vision_tower."))
        tower = [k for k in weights if k.startswith("model.vision_tower.vision_tower.vision_model.")]
        assert len(tower) == len([k for k in model.state_dict() if k.startswith("model.vision_tower.")])
        if name == "linear":  # the original's nn.Linear, which SGLang's two-layer projector cannot take
            assert sorted(k for k in weights if "mm_projector" in k) == ["model.mm_projector.bias",
                                                                         "model.mm_projector.weight"]
            continue
        config = json.loads((exported[name] / "config.json").read_text())
        # as LlavaLlamaForCausalLM.__init__ does: the flat config read as transformers' LlavaConfig, widths set
        llava = LlavaConfig(**{k: v for k, v in config.items() if k != "model_type"})
        llava.vision_config.hidden_size, llava.text_config.hidden_size = config["mm_hidden_size"], config["hidden_size"]
        assert llava.projector_hidden_act == "gelu" and llava.multimodal_projector_bias
        projector = LlavaMultiModalProjector(llava)
        renamed = {}
        for key, tensor in weights.items():
            for old, new in SGLANG_RENAMES.items():
                if key.startswith(old) and "projector" in key:
                    renamed[key.replace(old, new).removeprefix("multi_modal_projector.")] = tensor
        projector.load_state_dict(renamed, strict=True)
        features = torch.randn(2, 4, config["mm_hidden_size"])
        with torch.no_grad():
            assert torch.equal(projector(features), model.model.multi_modal_projector(features))


def test_a_release_read_and_written_again_keeps_its_tensors(v15, towers, tmp_path):  # noqa: F811
    """llava-v1.5-7b's layout -> ours -> original: every tensor of the release comes back under its own name."""
    root, release = v15
    model = LlavaForConditionalGeneration.from_pretrained(root, vision_tower=towers.vision_dir)
    processor = LlavaProcessor.from_pretrained(root, vision_tower=towers.vision_dir)
    out = save_original(model, processor, tmp_path / "again", vision_tower_name=TOWER)
    weights = load_file(out / "model.safetensors")
    for key, tensor in release.items():
        if key in ("model.embed_tokens.weight", "lm_head.weight"):  # grown by the rows of <image>
            assert torch.equal(weights[key][: tensor.shape[0]], tensor), key
        else:
            assert torch.equal(weights[key], tensor), key
    config = json.loads((out / "config.json").read_text())
    written = json.loads((root / "config.json").read_text())
    for key in ("mm_projector_type", "mm_vision_select_layer", "mm_vision_select_feature", "mm_hidden_size",
                "image_aspect_ratio", "mm_use_im_start_end", "hidden_size", "num_hidden_layers", "rms_norm_eps"):
        assert config[key] == written[key], key


def test_cli_writes_original_and_refuses_what_the_original_cannot_compute(models, tmp_path, capsys):
    model, processor = models["mlp2x_gelu"]
    save_ours(model, processor, tmp_path / "ours")
    assert convert([str(tmp_path / "ours"), str(tmp_path / "orig"), "--to", "original",
                    "--vision-tower-name", TOWER]) == 0
    assert detect_layout(tmp_path / "orig").kind == "original"
    relu, relu_processor = build_tiny_llava(tmp_path / "relu", projector_type="mlp2x_gelu", projector_hidden_act="relu")
    with pytest.raises(CheckpointError, match="projector_hidden_act='relu'"):
        save_original(relu, relu_processor, tmp_path / "relu-out", vision_tower_name=TOWER)
