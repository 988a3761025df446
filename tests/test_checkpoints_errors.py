"""Bad checkpoints fail loudly, naming the file, the tensor and the numbers involved."""

import json
import shutil

import pytest
import torch
import checkpoint_layouts as layouts
from checkpoint_layouts import towers, v15  # noqa: F401  (fixtures)
from safetensors.torch import save_file

from transformers_llava import LlavaForConditionalGeneration, LlavaProcessor
from transformers_llava.checkpoints import CheckpointError, UnknownLayoutError
from transformers_llava.checkpoints.safe_load import load_weight_file, read_weights, weight_files


@pytest.fixture(scope="module")
def release(v15):
    return v15[0]


def copy_of(release, tmp_path, name="llava-v1.5-7b"):
    return shutil.copytree(release, tmp_path / name)


def edit_config(root, **changes):
    config = json.loads((root / "config.json").read_text())
    config.update(changes)
    layouts.write_json(root / "config.json", config)


def load(root, **kwargs):
    return LlavaForConditionalGeneration.from_pretrained(root, **kwargs)


def test_unknown_config_says_what_was_expected(tmp_path):
    layouts.write_json(tmp_path / "config.json", {"model_type": "bert", "hidden_size": 8})
    with pytest.raises(UnknownLayoutError, match=r"model_type 'transformers_llava'.*mm_vision_tower.*found model_type "
                                                 r"'bert' with keys \['hidden_size', 'model_type'\]"):
        load(tmp_path)
    (tmp_path / "config.json").unlink()
    (tmp_path / "weights.pt").write_bytes(b"")
    with pytest.raises(UnknownLayoutError, match="has no config.json.*Files found: weights.pt"):
        load(tmp_path)


def test_unknown_tensor_names_are_listed_with_the_expected_ones(tmp_path, towers):
    root = tmp_path / "llava-v1.5-7b"
    llama = {k.replace("model.layers.", "transformer.h."): v for k, v in layouts.random_llama(towers.vocab, 5).items()}
    layouts.write_bin_shards(root, {**llama, **layouts.random_projector("mlp2x_gelu", 32, 64, 6)})
    layouts.write_json(root / "config.json", layouts.release_config(towers.vocab))
    towers.tokenizer.save_pretrained(root)
    with pytest.raises(UnknownLayoutError, match=r"18 tensors fit no known key.*transformer\.h\.0\..*"
                                                 r"Expected keys: model\.embed_tokens\.weight; model\.layers\.<i>\.\*"):
        load(root, vision_tower=towers.vision_dir)


def test_missing_vision_tower(release, towers, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no machine running the tests may reach the Hub
    with pytest.raises(CheckpointError, match=r"vision_tower='/nowhere/clip' does not exist"):
        load(release, vision_tower="/nowhere/clip")
    with pytest.raises(CheckpointError, match=r"vision tower 'openai/clip-vit-large-patch14-336'.*mm_vision_tower.*"
                                              r"Pass vision_tower='/path/to/local/copy' \(CLI: --vision-tower\)"):
        load(release)  # offline: the Hub name cannot be resolved
    with pytest.raises(CheckpointError, match="vision tower 'openai/clip-vit-large-patch14-336'"):
        LlavaProcessor.from_pretrained(release)
    root = copy_of(release, tmp_path)
    edit_config(root, mm_vision_tower=str(towers.vision_dir))  # a local path in the config itself works
    assert load(root).config.vision_config.hidden_size == 32


def test_projector_that_does_not_fit_the_towers(release, towers, tmp_path):
    root = copy_of(release, tmp_path)
    edit_config(root, mm_hidden_size=48)
    with pytest.raises(CheckpointError, match="mm_hidden_size=48 but the vision tower .* has hidden_size 32"):
        load(root, vision_tower=towers.vision_dir)
    shard = sorted(root.glob("pytorch_model-*.bin"))
    for path in shard:
        part = torch.load(path, weights_only=True)
        if "model.mm_projector.0.weight" in part:
            part["model.mm_projector.0.weight"] = torch.zeros(64, 48, dtype=torch.float16)
            torch.save(part, path)
    edit_config(root, mm_hidden_size=32)
    with pytest.raises(CheckpointError, match=r"model\.mm_projector\.0\.weight \(model\.multi_modal_projector\.linear_1"
                                              r"\.weight\) has shape \[64, 48\] but this model needs \[64, 32\]: the "
                                              r"vision tower gives 32 features x 1 layer\(s\) and the language model "
                                              r"has hidden size 64"):
        load(root, vision_tower=towers.vision_dir)


def test_projector_type_without_its_layers(release, towers, tmp_path):
    root = copy_of(release, tmp_path)
    edit_config(root, mm_projector_type="mlp3x_gelu")
    with pytest.raises(CheckpointError, match=r"2 tensors this model needs are missing.*model\.mm_projector\.4\.bias"):
        load(root, vision_tower=towers.vision_dir)


def delta_release(tmp_path, towers, base_vocab_extra=0, base_hidden=None):
    tokenizer = towers.tokenizer.__class__.from_pretrained(towers.text_dir)
    tokenizer.add_tokens(["<im_patch>", "<im_start>", "<im_end>"], special_tokens=True)
    delta = {k: 0.01 * torch.randn_like(v) for k, v in layouts.random_llama(len(tokenizer), 50).items()}
    release = tmp_path / "LLaVA-7b-delta-v0"
    layouts.write_bin_shards(release, {**delta, **layouts.random_projector("linear", 32, 64, 51)})
    layouts.write_json(release / "config.json", layouts.release_config(len(tokenizer), mm_use_im_start_end=True,
                                                       mm_projector_type="linear", image_aspect_ratio="square"))
    tokenizer.save_pretrained(release)
    base_dir = tmp_path / "llama-base"
    base_dir.mkdir()
    config = layouts.llama_config(towers.vocab + base_vocab_extra)
    if base_hidden:
        config.hidden_size, config.intermediate_size, config.head_dim = base_hidden, 2 * base_hidden, base_hidden // 4
    torch.manual_seed(52)
    from transformers import LlamaForCausalLM
    save_file(LlamaForCausalLM(config).state_dict(), base_dir / "model.safetensors")
    return release, base_dir


def test_delta_on_a_base_of_another_size_is_refused(tmp_path, towers):
    release, base_dir = delta_release(tmp_path, towers, base_hidden=32)
    with pytest.raises(CheckpointError, match=r"does not fit base .*llama-base: lm_head\.weight is \[492, 64\] in the "
                                              r"delta but \[489, 32\] in the base; the base is a different model size"):
        load(release, base_model=base_dir, vision_tower=towers.vision_dir)


def test_delta_on_a_base_with_a_larger_vocabulary_is_refused(tmp_path, towers):
    release, base_dir = delta_release(tmp_path, towers, base_vocab_extra=10)
    with pytest.raises(CheckpointError, match=r"is \[492, 64\] in the delta but \[499, 64\] in the base; the base "
                                              r"vocabulary \(499 tokens\) is larger than the delta's \(492\)"):
        load(release, base_model=base_dir, vision_tower=towers.vision_dir)


def test_delta_without_its_base_is_refused(tmp_path, towers):
    release, _ = delta_release(tmp_path, towers)
    with pytest.raises(CheckpointError, match=r"looks like delta weights: model\.norm\.weight averages \|w\| = 0\.0\d+"
                                              r".*Pass base_model="):
        load(release, vision_tower=towers.vision_dir)


def test_complete_weights_given_a_base_are_refused(release, towers, tmp_path):
    base = tmp_path / "llama-base"
    base.mkdir()
    save_file(layouts.random_llama(towers.vocab, 53), base / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"base_model was given, but .*llava-v1\.5-7b holds complete weights, not "
                                              r"a delta: model\.norm\.weight averages \|w\| = 1\.\d+"):
        load(release, base_model=base, vision_tower=towers.vision_dir)


def test_lora_release_without_base_names_the_adapters_base(tmp_path, towers):
    root = tmp_path / "llava-v1.5-7b-lora"
    root.mkdir()
    torch.save({}, root / "adapter_model.bin")
    adapter_config = {"base_model_name_or_path": "lmsys/vicuna-7b-v1.5", "peft_type": "LORA"}
    layouts.write_json(root / "adapter_config.json", adapter_config)
    layouts.write_json(root / "config.json", layouts.release_config(towers.vocab))
    with pytest.raises(CheckpointError, match=r"is a LoRA release.*base_model=.*adapter_config\.json names "
                                              r"'lmsys/vicuna-7b-v1\.5'"):
        load(root, vision_tower=towers.vision_dir)


def test_any_resolution_release_is_refused(release, tmp_path):
    root = copy_of(release, tmp_path, "llava-v1.6-vicuna-7b")
    edit_config(root, image_aspect_ratio="anyres", mm_patch_merge_type="spatial_unpad")
    with pytest.raises(UnknownLayoutError, match="LLaVA-NeXT.*not implement"):
        load(root)


def test_truncated_safetensors_shard_names_the_missing_bytes(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(100, 100)}, path)
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match=rf"model\.safetensors is truncated: its header describes {size:,} bytes "
                                              rf"but the file has {size - 1000:,} \(1,000 missing\)"):
        load_weight_file(path)


def test_truncated_bin_shard_is_named(release, towers, tmp_path):
    root = copy_of(release, tmp_path)
    shard = sorted(root.glob("pytorch_model-*.bin"))[1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"{shard.name} \(\d[\d,]* bytes\) is truncated or not a PyTorch "
                                              "weights file"):
        load(root, vision_tower=towers.vision_dir)


def test_sharded_index_with_missing_shard_or_tensor(release, tmp_path):
    root = copy_of(release, tmp_path)
    shards = sorted(root.glob("pytorch_model-*.bin"))
    index = json.loads((root / "pytorch_model.bin.index.json").read_text())
    index["weight_map"]["model.extra.weight"] = shards[0].name
    layouts.write_json(root / "pytorch_model.bin.index.json", index)
    with pytest.raises(CheckpointError, match=rf"{shards[0].name} lacks 1 tensors its index assigns to it \(e\.g\. "
                                              r"model\.extra\.weight\)"):
        read_weights(weight_files(root))
    shards[1].unlink()
    with pytest.raises(CheckpointError, match=rf"lists 2 shards but 1 are missing .*: {shards[1].name}"):
        weight_files(root)


class Tagged(torch.Tensor):
    """A tensor subclass: plain-tensor unpickling (weights_only) refuses it."""


def test_pickles_beyond_plain_tensors_need_an_explicit_opt_in(tmp_path):
    path = tmp_path / "mm_projector.bin"
    torch.save({"model.mm_projector.weight": torch.zeros(2, 2).as_subclass(Tagged)}, path)
    with pytest.raises(CheckpointError, match="needs more than plain tensors.*allow_pickle=True"):
        load_weight_file(path)
    with pytest.warns(UserWarning, match="full pickle support"):
        assert load_weight_file(path, allow_pickle=True)["model.mm_projector.weight"].shape == (2, 2)
    torch.save({"model.mm_projector.weight": torch.zeros(2), "args": 3}, path)
    with pytest.raises(CheckpointError, match="1 entries that are not tensors \\(args\\)"):
        load_weight_file(path)


def test_loading_options_on_our_own_format_are_refused(tiny_dir):
    with pytest.raises(CheckpointError, match="base_model=.*applies to original LLaVA delta, LoRA and projector-only"):
        load(tiny_dir, base_model="/some/base")


def test_truncated_safetensors_in_our_own_format_names_the_file(tiny_dir, tmp_path):
    root = shutil.copytree(tiny_dir, tmp_path / "ours")
    weights = root / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:-4096])
    with pytest.raises(CheckpointError, match=rf"ours/model\.safetensors is truncated: its header describes {size:,} "
                                              rf"bytes but the file has {size - 4096:,} \(4,096 missing\)"):
        load(root)


def test_allow_pickle_on_our_own_format_is_accepted(tiny_dir):
    model = load(tiny_dir, allow_pickle=True)
    assert type(model).__name__ == "TransformersLlavaForConditionalGeneration"
    assert LlavaProcessor.from_pretrained(tiny_dir, allow_pickle=True).tokens_per_image == 16


def pickled_own_format(tiny_dir, tmp_path):
    """Our format with its weights in a `.bin` pickle holding one tensor subclass (needs more than weights_only)."""
    from safetensors.torch import load_file

    root = shutil.copytree(tiny_dir, tmp_path / "ours-bin")
    state = load_file(root / "model.safetensors")
    state["lm_head.weight"] = state["lm_head.weight"].as_subclass(Tagged)
    torch.save(state, root / "pytorch_model.bin")
    (root / "model.safetensors").unlink()
    return root, state


def test_pickles_in_our_own_format_are_refused_by_us_and_allowed_by_the_flag(tiny_dir, tmp_path, capsys):
    from transformers_llava.checkpoints.cli import main as convert

    root, state = pickled_own_format(tiny_dir, tmp_path)
    with pytest.raises(CheckpointError, match=r"ours-bin/pytorch_model\.bin is a pickle that needs more than plain "
                                              r"tensors.*pass allow_pickle=True \(CLI: --allow-pickle\)"):
        load(root)
    with pytest.warns(UserWarning, match="full pickle support"):
        model = load(root, allow_pickle=True)
    torch.testing.assert_close(model.lm_head.weight.data, state["lm_head.weight"].as_subclass(torch.Tensor))
    assert convert([str(root), str(tmp_path / "refused"), "--to", "ours"]) == 1
    assert "pytorch_model.bin is a pickle" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="full pickle support"):
        assert convert([str(root), str(tmp_path / "converted"), "--to", "ours", "--allow-pickle"]) == 0
    converted = load(tmp_path / "converted")
    torch.testing.assert_close(converted.lm_head.weight, model.lm_head.weight)
