"""What vLLM and SGLang require of the files they load, checked on our exports (neither engine runs here: no GPU).

Each requirement names where it was read:
- vLLM (main, read 2026-12): vllm/model_executor/models/llava.py (`LlavaForConditionalGeneration.__init__`,
  `LlavaMultiModalProjector`, `init_vision_tower_for_llava`, `load_weights`), vllm/model_executor/models/vision.py
  (`get_num_selected_vision_tokens`), vllm/model_executor/layers/activation.py (`_ACTIVATION_REGISTRY`).
- SGLang v0.5 (python/sglang/srt/models/llava.py): `LlavaForConditionalGeneration` (the llava-hf adaptor) loads only
  `vision_feature_select_strategy` "patch" / "full" / "cls_patch"; `LlavaLlamaForCausalLM` (original layout).
The BOS / stop / chat-template behaviour is checked against vanilla transformers in test_checkpoints_llava_hf.py.
"""

import json
import re

import pytest
import torch
from checkpoint_layouts import CONVERSATION, towers, v15  # noqa: F401 (fixtures)
from safetensors.torch import load_file
from transformers import LlavaConfig

from transformers_llava import LlavaForConditionalGeneration, LlavaProcessor
from transformers_llava.checkpoints import save_llava_hf
from transformers_llava.demo.tiny import build_tiny_llava

VLLM_ACTIVATIONS = {"gelu", "gelu_fast", "gelu_new", "gelu_pytorch_tanh", "relu", "relu2", "silu", "quick_gelu", "tanh",
                    "sigmoid", "xielu"}
# Parameter names of vLLM's LlavaForConditionalGeneration (a checkpoint name must start with one of them; the
# hf_to_vllm_mapper only renames transformers >= 4.52's `model.*` names into these).
VLLM_PREFIXES = ("language_model.model.", "language_model.lm_head.", "vision_tower.vision_model.",
                 "multi_modal_projector.linear_1.", "multi_modal_projector.linear_2.")
# The vision towers `init_vision_tower_for_llava` builds.
VLLM_TOWERS = {"clip_vision_model", "siglip_vision_model", "pixtral"}
SGLANG_ADAPTOR_STRATEGIES = {"patch", "full", "cls_patch"}


@pytest.fixture(scope="module")
def exports(v15, towers, tmp_path_factory):  # noqa: F811
    """llava-hf exports of a tiny paper-style model (linear projector) and of an llava-v1.5-layout release."""
    root = tmp_path_factory.mktemp("engine_exports")
    torch.manual_seed(0)
    linear = build_tiny_llava(root / "linear")
    release_dir, _ = v15
    release = (LlavaForConditionalGeneration.from_pretrained(release_dir, vision_tower=towers.vision_dir),
               LlavaProcessor.from_pretrained(release_dir, vision_tower=towers.vision_dir))
    built = {"linear": linear, "v1.5-release": release}
    return {name: (model, processor, save_llava_hf(model, processor, root / f"{name}-hf"))
            for name, (model, processor) in built.items()}


def test_vllm_reads_the_config(exports):
    for name, (model, processor, directory) in exports.items():
        config = json.loads((directory / "config.json").read_text())
        assert config["architectures"] == ["LlavaForConditionalGeneration"] and config["model_type"] == "llava"
        # init_vllm_registered_model(hf_config=text_config) resolves the language model by these
        assert config["text_config"]["architectures"] == ["LlamaForCausalLM"], name
        assert config["vision_config"]["model_type"] in VLLM_TOWERS
        assert config["projector_hidden_act"] in VLLM_ACTIVATIONS, name  # get_act_fn raises on anything else
        assert isinstance(config["multimodal_projector_bias"], bool)
        assert isinstance(config["vision_feature_layer"], int)
        assert config["vision_feature_select_strategy"] in ("default", "full")  # get_num_selected_vision_tokens
        assert config["image_token_index"] == processor.tokenizer.convert_tokens_to_ids("<image>")
        # vLLM counts (image_size / patch_size)^2 + 1 CLIP tokens, minus the CLS for "default": ours must agree
        vision = config["vision_config"]
        patches = (vision["image_size"] // vision["patch_size"]) ** 2
        assert model.config.image_seq_length == patches, name
        processor_config = json.loads((directory / "processor_config.json").read_text())
        assert processor_config["patch_size"] == vision["patch_size"]
        assert processor_config["vision_feature_select_strategy"] == config["vision_feature_select_strategy"]
        assert (directory / "chat_template.jinja").is_file()  # vLLM takes the processor's chat template


def test_vllm_maps_every_weight_with_its_shape(exports):
    for name, (model, _, directory) in exports.items():
        weights = {}
        for shard in sorted(directory.glob("*.safetensors")):
            weights.update(load_file(shard))
        assert [key for key in weights if not key.startswith(VLLM_PREFIXES)] == [], name
        d_vision, d_llm = model.config.vision_config.hidden_size, model.config.text_config.hidden_size
        # LlavaMultiModalProjector: ColumnParallelLinear(D_vision, D_llm), RowParallelLinear(D_llm, D_llm)
        assert weights["multi_modal_projector.linear_1.weight"].shape == (d_llm, d_vision), name
        assert weights["multi_modal_projector.linear_2.weight"].shape == (d_llm, d_llm), name
        pattern = re.compile(r"vision_tower\.vision_model\.encoder\.layers\.(\d+)\.")
        layers = {int(m[1]) for key in weights if (m := pattern.match(key))}
        # vLLM builds the tower up to vision_feature_layer (-2: all but the last layer) and skips the rest
        assert len(layers) == model.config.vision_config.num_hidden_layers


def test_sglang_adaptor_cannot_take_llava_hf_with_our_outputs(exports):
    """SGLang's llava-hf adaptor accepts patch / full / cls_patch; transformers' LlavaConfig (which vLLM and
    transformers read) accepts default / full; "full" keeps the CLS token, which LLaVA drops. No llava-hf export
    serves our outputs there: the original layout does (`convert --to original`, test_checkpoints_original_export)."""
    for _, _, directory in exports.values():
        config = json.loads((directory / "config.json").read_text())
        assert config["vision_feature_select_strategy"] == "default" not in SGLANG_ADAPTOR_STRATEGIES
    with pytest.raises(Exception, match="expected one of .*default.*full"):
        LlavaConfig(vision_feature_select_strategy="patch")


def test_release_round_trips_through_the_vllm_ready_export(exports):
    """The language model's class added for vLLM, and every other change of the export, are undone on import."""
    model, processor, directory = exports["v1.5-release"]
    assert model.config.text_config.architectures is None  # what an original release gives
    back = LlavaForConditionalGeneration.from_pretrained(directory)
    assert back.config.text_config.to_dict() == model.config.text_config.to_dict()
    before, after = model.state_dict(), back.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert LlavaProcessor.from_pretrained(directory).chat_template == processor.chat_template


@pytest.mark.parametrize("conversation_format", ["llava_v0", "vicuna_v1", "llava_llama_2", "plain"])
def test_bos_rule_holds_for_the_releases_sentencepiece_tokenizer(conversation_format, tmp_path):
    """The releases' LlamaTokenizer (tokenizer.model, `legacy: false`): the template's BOS prefix, saved and read back
    by AutoTokenizer as an engine does, gives our ids with and without special tokens."""
    from checkpoint_layouts import write_sentencepiece_tokenizer
    from transformers import AutoTokenizer

    from transformers_llava.chat_templates import load_chat_template
    from transformers_llava.checkpoints.engine_prompts import bos_in_template
    from transformers_llava.demo.tiny import BASE_CORPUS

    write_sentencepiece_tokenizer(tmp_path / "release", BASE_CORPUS)
    ours = AutoTokenizer.from_pretrained(tmp_path / "release")
    ours.add_special_tokens({"extra_special_tokens": ["<image>"]}, replace_extra_special_tokens=False)
    template = load_chat_template(conversation_format)
    exported, exported_template, prefix = bos_in_template(ours, template)
    assert prefix is not None
    exported.save_pretrained(tmp_path / "export")
    engine = AutoTokenizer.from_pretrained(tmp_path / "export")
    assert engine("a b")["input_ids"][0] != engine.bos_token_id
    with_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "<image>\nWhat now?"}]
    for conversation in (CONVERSATION, with_system):  # not the probes the prefix was chosen on
        expected = ours(ours.apply_chat_template(conversation, chat_template=template, add_generation_prompt=True,
                                                 tokenize=False))["input_ids"]
        rendered = engine.apply_chat_template(conversation, chat_template=exported_template, add_generation_prompt=True,
                                              tokenize=False)
        for special in (True, False):
            assert engine(rendered, add_special_tokens=special)["input_ids"] == expected
