"""Original LLaVA releases load directly: v1.5, v1 (tower weights inside), v0 delta, LoRA, projector-only.

Each test writes a tiny checkpoint in one release's layout, loads it with `LlavaForConditionalGeneration` /
`LlavaProcessor.from_pretrained`, and compares with the original forward pass computed from the same weights
(`checkpoint_layouts.OriginalLlava`) and with transformers' built-in Llava: logits within 1e-5, identical greedy
generations, and the prompt of the release's conversation format byte for byte.
"""

import re

import pytest
import torch
from checkpoint_layouts import (
    CONVERSATION,
    OriginalLlava,
    assert_matches_original,
    random_llama,
    random_projector,
    release_config,
    tower_weights,
    towers,  # noqa: F401  (fixture)
    v15,  # noqa: F401  (fixture)
    write_bin_shards,
    write_json,
)
from conftest import reference_path
from safetensors.torch import save_file

from transformers_llava import LlavaForConditionalGeneration, LlavaProcessor, load_chat_template
from transformers_llava.checkpoints.templates import conversation_format

LLAMA_ONLY = re.compile(r"^(model\.(embed_tokens|layers|norm)\.|lm_head\.)")


def llm_part(state):
    return {k: v for k, v in state.items() if LLAMA_ONLY.match(k) and "inv_freq" not in k}


def projector_part(state):
    return {k: v for k, v in state.items() if k.startswith("model.mm_projector.")}


@pytest.fixture(scope="module")
def base_llm(tmp_path_factory, towers):
    """A base language model directory (LlamaForCausalLM layout, safetensors) with its tokenizer."""
    from checkpoint_layouts import llama_config

    root = tmp_path_factory.mktemp("bases") / "vicuna-7b-v1.5"
    weights = random_llama(towers.vocab, seed=20)
    root.mkdir()
    llama_config(towers.vocab).save_pretrained(root)
    save_file(weights, root / "model.safetensors", metadata={"format": "pt"})
    towers.tokenizer.save_pretrained(root)
    return root, weights


@pytest.fixture(scope="module")
def v1(tmp_path_factory, towers):
    """A LLaVA v1 release: linear projector, `<im_patch>` in the vocabulary, unfrozen tower saved inside."""
    root = tmp_path_factory.mktemp("releases") / "llava-v1-0719-336px-vicuna-7b"
    tokenizer = towers.tokenizer.__class__.from_pretrained(towers.text_dir)
    tokenizer.add_tokens(["<im_patch>"], special_tokens=True)
    tower = {f"model.vision_tower.vision_tower.vision_model.{k}": v + 0.05 * torch.randn_like(v)
             for k, v in tower_weights(towers.vision_dir).items()}
    state = {**random_llama(len(tokenizer), seed=3), **random_projector("linear", 32, 64, seed=4), **tower}
    write_bin_shards(root, state, shards=3)
    config = release_config(len(tokenizer), mm_projector_type="linear", image_aspect_ratio="square",
                            mm_use_im_patch_token=True, unfreeze_mm_vision_tower=True, torch_dtype="float32",
                            model_type="llava_llama")
    write_json(root / "config.json", config)
    tokenizer.save_pretrained(root)
    return root, state, tower


def test_v15_release_matches_original_and_builtin(v15, towers):
    root, state = v15
    default = LlavaForConditionalGeneration.from_pretrained(root, vision_tower=towers.vision_dir)
    assert default.dtype == torch.float16  # the release's own dtype unless asked otherwise
    model = LlavaForConditionalGeneration.from_pretrained(root, vision_tower=towers.vision_dir, dtype=torch.float32)
    processor = LlavaProcessor.from_pretrained(root, vision_tower=towers.vision_dir)
    assert model.config.projector_type == "mlp2x_gelu" and model.config.image_aspect_ratio == "pad"
    assert processor.image_processor.image_aspect_ratio == "pad"
    assert processor.image_token_id == model.config.image_token_id == towers.vocab  # `<image>` appended
    assert model.config.text_config.vocab_size % 64 == 0
    reference = OriginalLlava({k: v.float() for k, v in llm_part(state).items()}, projector_part(state),
                              towers.vision_dir)
    assert_matches_original(model.eval(), processor, reference, towers.vocab)


def test_v1_release_uses_tower_weights_found_inside(v1, towers):
    root, state, tower = v1
    model = LlavaForConditionalGeneration.from_pretrained(root, vision_tower=towers.vision_dir).eval()
    processor = LlavaProcessor.from_pretrained(root, vision_tower=towers.vision_dir)
    assert model.config.projector_type == "linear"
    saved = tower["model.vision_tower.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"]
    assert torch.equal(model.model.vision_tower.encoder.layers[0].mlp.fc1.weight, saved)
    vocab = state["model.embed_tokens.weight"].shape[0]
    reference = OriginalLlava(llm_part(state), projector_part(state), towers.vision_dir, tower=tower)
    assert_matches_original(model, processor, reference, vocab)


def test_v0_delta_with_image_start_end_tokens_end_to_end(tmp_path, towers):
    """LLaVA-7b-delta-v0: delta + base LLaMA, `<im_start><image><im_end>`, the `###` format and its stop string."""
    base_dir = tmp_path / "llama-7b"
    base = random_llama(towers.vocab, seed=10)
    base_dir.mkdir()
    save_file(base, base_dir / "model.safetensors")
    tokenizer = towers.tokenizer.__class__.from_pretrained(towers.text_dir)
    tokenizer.add_tokens(["<im_patch>", "<im_start>", "<im_end>"], special_tokens=True)
    target = random_llama(len(tokenizer), seed=11)  # the trained model: base + small updates, plus new token rows
    for key, tensor in base.items():
        target[key][tuple(slice(0, n) for n in tensor.shape)] = tensor + 0.02 * torch.randn_like(tensor)
    delta = {}
    for key, tensor in target.items():
        delta[key] = tensor.clone()
        delta[key][tuple(slice(0, n) for n in base[key].shape)] -= base[key]
    inv_freq = {f"model.layers.{i}.self_attn.rotary_emb.inv_freq": torch.ones(8) for i in range(2)}  # 4.28 saved it
    projector = random_projector("linear", 32, 64, seed=12)
    release = tmp_path / "LLaVA-7b-delta-v0"
    write_bin_shards(release, {**delta, **projector, **inv_freq})
    config = {k: v for k, v in release_config(len(tokenizer)).items() if not k.startswith(("mm_", "tune", "image"))}
    config.update(mm_hidden_size=32, mm_use_im_start_end=True, mm_vision_select_layer=-2,
                  mm_vision_tower="openai/clip-vit-large-patch14", transformers_version="4.28.0.dev0")
    write_json(release / "config.json", config)
    tokenizer.save_pretrained(release)

    model = LlavaForConditionalGeneration.from_pretrained(
        release, base_model=base_dir, vision_tower=towers.vision_dir
    ).eval()
    processor = LlavaProcessor.from_pretrained(release, base_model=base_dir, vision_tower=towers.vision_dir)
    assert model.generation_config.stop_strings == ["###"]
    applied = {k: delta[k] + (torch.nn.functional.pad(base[k], (0, 0, 0, delta[k].shape[0] - base[k].shape[0]))
                              if delta[k].shape != base[k].shape else base[k]) for k in delta}
    reference = OriginalLlava(applied, projector, towers.vision_dir)
    inputs = assert_matches_original(model, processor, reference, len(tokenizer))

    ids = inputs["input_ids"][0].tolist()
    image = [i for i, token in enumerate(ids) if token == model.config.image_token_id]
    assert ids[image[0] - 1] == tokenizer.convert_tokens_to_ids("<im_start>")
    assert ids[image[-1] + 1] == tokenizer.convert_tokens_to_ids("<im_end>")
    after_image = processor.decode(ids[image[-1] + 1:])
    assert after_image == "<im_end>\nWhat is this?###Assistant: A cat.###Human: Color?###Assistant:"
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False, tokenizer=processor.tokenizer)
    assert 0 < output.shape[1] - len(ids) <= 12  # generates under the `###` stop string


def lora_factors(base: dict, rank: int, seed: int) -> dict:
    """adapter_model.bin tensors of a LLaVA LoRA release (peft 0.4 names, no adapter name)."""
    generator = torch.Generator().manual_seed(seed)
    factors = {}
    for key, weight in base.items():
        if key.startswith("model.layers.") and key.endswith("proj.weight"):
            stem = "base_model.model." + key.removesuffix(".weight")
            factors[f"{stem}.lora_A.weight"] = 0.1 * torch.randn(rank, weight.shape[1], generator=generator)
            factors[f"{stem}.lora_B.weight"] = 0.1 * torch.randn(weight.shape[0], rank, generator=generator)
    return factors


def test_lora_release_merges_onto_base(tmp_path, towers, base_llm):
    base_dir, base = base_llm
    rank, alpha = 4, 8
    factors = lora_factors(base, rank, seed=30)
    projector = random_projector("mlp2x_gelu", 32, 64, seed=31)
    release = tmp_path / "llava-v1.5-7b-lora"
    release.mkdir()
    torch.save(factors, release / "adapter_model.bin")
    torch.save({f"base_model.model.{k}": v for k, v in projector.items()}, release / "non_lora_trainables.bin")
    write_json(release / "adapter_config.json", {
        "base_model_name_or_path": "./checkpoints/vicuna-7b-v1-5", "bias": "none", "fan_in_fan_out": False,
        "inference_mode": True, "init_lora_weights": True, "layers_pattern": None, "layers_to_transform": None,
        "lora_alpha": alpha, "lora_dropout": 0.05, "modules_to_save": None, "peft_type": "LORA", "r": rank,
        "revision": None, "target_modules": ["up_proj", "down_proj", "gate_proj", "o_proj", "v_proj", "q_proj",
                                             "k_proj"], "task_type": "CAUSAL_LM"})
    write_json(release / "config.json", release_config(towers.vocab, torch_dtype="float32"))

    model = LlavaForConditionalGeneration.from_pretrained(
        release, base_model=base_dir, vision_tower=towers.vision_dir
    ).eval()
    processor = LlavaProcessor.from_pretrained(release, base_model=base_dir, vision_tower=towers.vision_dir)
    merged = dict(base)
    for key in merged:
        stem = "base_model.model." + key.removesuffix(".weight")
        if f"{stem}.lora_A.weight" in factors:
            update = factors[f"{stem}.lora_B.weight"] @ factors[f"{stem}.lora_A.weight"]
            merged[key] = base[key] + update * (alpha / rank)
    reference = OriginalLlava(merged, projector, towers.vision_dir)
    assert_matches_original(model, processor, reference, towers.vocab)


def test_projector_only_stage1_output_on_base(tmp_path, towers, base_llm):
    base_dir, base = base_llm
    projector = random_projector("mlp2x_gelu", 32, 64, seed=40)
    release = tmp_path / "llava-v1.5-mlp2x-336px-pretrain-vicuna-7b-v1.5"
    release.mkdir()
    torch.save(projector, release / "mm_projector.bin")
    write_json(release / "config.json", release_config(towers.vocab, tune_mm_mlp_adapter=True, torch_dtype="float32"))
    model = LlavaForConditionalGeneration.from_pretrained(
        release, base_model=base_dir, vision_tower=towers.vision_dir
    ).eval()
    processor = LlavaProcessor.from_pretrained(release, base_model=base_dir, vision_tower=towers.vision_dir)
    reference = OriginalLlava(base, projector, towers.vision_dir)
    assert_matches_original(model, processor, reference, towers.vocab)


@pytest.mark.parametrize("name, config, expected", [
    ("LLaVA-13b-delta-v0", {"mm_use_im_start_end": True}, "llava_v0"),
    ("LLaVA-Lightning-7B-delta-v1-1", {"mm_use_im_start_end": True}, "llava_v1"),
    ("llava-v1-0719-336px-LoRA-vicuna-13b-v1.3", {}, "llava_v1"),
    ("llava-llama-2-13b-chat-lightning-preview", {}, "llava_llama_2"),
    ("llava-v1.5-7b", {"mm_projector_type": "mlp2x_gelu"}, "vicuna_v1"),
    ("checkpoint-5000", {"mm_projector_type": "mlp2x_gelu"}, "vicuna_v1"),
    ("my-run", {"mm_use_im_start_end": True}, "llava_v0"),
])
def test_conversation_format_follows_the_release(name, config, expected):
    assert conversation_format(name, config) == expected


def reference_prompts() -> dict[str, str]:
    """The rendered prompts of CONVERSATIONS.md by format name, with `\\n` turned into newlines."""
    text = reference_path("paper", "CONVERSATIONS.md").read_text(encoding="utf-8")
    blocks = dict(re.findall(r"\*\*(\w+)\*\*[^\n]*\n```\n(.*?)\n```", text, flags=re.S))
    prompts = {name: block.replace("\\n", "\n") for name, block in blocks.items()}
    prompts["vicuna_v1"] = prompts["llava_v1"].replace("curious human", "curious user").replace(
        "the human's questions", "the user's questions")
    return prompts


def test_each_release_renders_its_original_prompt_byte_for_byte(tmp_path, v15, v1, towers):
    prompts = reference_prompts()
    llama_2 = tmp_path / "llava-llama-2-13b-chat-lightning-preview"
    llama_2.symlink_to(v1[0], target_is_directory=True)
    cases = [(v15[0], "vicuna_v1"), (v1[0], "llava_v1"), (llama_2, "llava_llama_2")]
    for root, format_name in cases:
        processor = LlavaProcessor.from_pretrained(root, vision_tower=towers.vision_dir)
        rendered = processor.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)
        assert rendered == prompts[format_name], format_name


def test_image_start_end_wraps_the_v0_prompt(v1, towers, tmp_path):
    """With mm_use_im_start_end the v0 prompt is the original's with `<image>` -> `<im_start><image><im_end>`."""
    import json
    import shutil

    release = tmp_path / "LLaVA-13b-delta-v0-science_qa"
    shutil.copytree(v1[0], release)
    config = json.loads((release / "config.json").read_text())
    config.update(mm_use_im_start_end=True)
    write_json(release / "config.json", config)
    processor = LlavaProcessor.from_pretrained(release, vision_tower=towers.vision_dir)
    expected = reference_prompts()["llava_v0"].replace("<image>", "<im_start><image><im_end>")
    assert processor.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False) == expected
    as_text = [{"role": "user", "content": "<image>\nWhat is this?"}, *CONVERSATION[1:]]
    assert processor.apply_chat_template(as_text, add_generation_prompt=True, tokenize=False) == expected


def test_release_by_hub_name_from_the_cache(v1, towers, tmp_path):
    """`org/name` resolves through the Hugging Face cache (offline here); the repository name picks the format."""
    import shutil

    repo = tmp_path / "hub" / "models--liuhaotian--llava-llama-2-13b-chat-lightning-preview"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(v1[0], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    hub = dict(cache_dir=tmp_path / "hub", local_files_only=True, vision_tower=towers.vision_dir)
    name = "liuhaotian/llava-llama-2-13b-chat-lightning-preview"
    model = LlavaForConditionalGeneration.from_pretrained(name, **hub)
    processor = LlavaProcessor.from_pretrained(name, **hub)
    assert model.config.projector_type == "linear"
    assert processor.chat_template == load_chat_template("llava_llama_2")


def test_release_with_its_sentencepiece_tokenizer(tmp_path, towers):
    """The releases ship tokenizer.model (a slow LlamaTokenizer), not tokenizer.json."""
    from checkpoint_layouts import write_sentencepiece_tokenizer

    from transformers_llava.demo.tiny import BASE_CORPUS

    root = tmp_path / "llava-v1.5-7b"
    sentencepiece = write_sentencepiece_tokenizer(root, BASE_CORPUS)
    vocab = sentencepiece.get_piece_size()
    state = {**random_llama(vocab, seed=60), **random_projector("mlp2x_gelu", 32, 64, seed=61)}
    write_bin_shards(root, state)
    write_json(root / "config.json", release_config(vocab, torch_dtype="float32"))
    model = LlavaForConditionalGeneration.from_pretrained(root, vision_tower=towers.vision_dir).eval()
    processor = LlavaProcessor.from_pretrained(root, vision_tower=towers.vision_dir)
    text = "What is this? ASSISTANT: A cat.\nColor?"
    assert processor(text=[text])["input_ids"][0] == [1] + sentencepiece.encode(text)
    reference = OriginalLlava(llm_part(state), projector_part(state), towers.vision_dir)
    assert_matches_original(model, processor, reference, vocab)
