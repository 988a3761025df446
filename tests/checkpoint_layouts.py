"""Tiny checkpoints written in the layouts of the original LLaVA releases, and the original model's forward pass.

The "trained LLaVA" of these tests is a tiny CLIP vision tower, a projector and a tiny Llama, all random. Each
writer encodes those weights the way one release did (config keys, tensor names, `.bin` shards, deltas, LoRA
factors, ...). `OriginalLlava` recomputes the original model's logits straight from the weights, the way the original
code did (`llava_arch.py` / `llava.py`): CLIP hidden states -> projector -> spliced into the Llama embeddings. It
shares no code with the package's loaders.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoTokenizer, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from transformers_llava.demo.tiny import save_tiny_towers

TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
TOWER_NAME = "openai/clip-vit-large-patch14-336"  # what the releases name; resolved through vision_tower= offline


def release_config(vocab_size: int, **mm) -> dict:
    """config.json of llava-v1.5-7b (transformers 4.31), tiny sizes; `mm` overrides its LLaVA keys."""
    config = {
        "_name_or_path": "./checkpoints/vicuna-7b-v1-5", "architectures": ["LlavaLlamaForCausalLM"],
        "bos_token_id": 1, "eos_token_id": 2, "freeze_mm_mlp_adapter": False, "hidden_act": "silu",
        "image_aspect_ratio": "pad", "image_grid_pinpoints": None, "initializer_range": 0.02, "max_length": 4096,
        "max_position_embeddings": 4096, "mm_hidden_size": 32, "mm_projector_type": "mlp2x_gelu",
        "mm_resampler_type": None, "mm_use_im_patch_token": False, "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2, "mm_vision_tower": TOWER_NAME,
        "model_type": "llava", "pad_token_id": 0, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
        "tie_word_embeddings": False, "torch_dtype": "float16", "transformers_version": "4.31.0",
        "tune_mm_mlp_adapter": False, "tune_mm_vision_resampler": False, "unfreeze_mm_vision_tower": False,
        "use_cache": True, "use_mm_proj": True, "vocab_size": vocab_size, **TEXT,
    }
    config.update(mm)
    return config


def llama_config(vocab_size: int) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab_size, max_position_embeddings=4096, rms_norm_eps=1e-5, **TEXT)


def random_llama(vocab_size: int, seed: int) -> dict[str, torch.Tensor]:
    """Weights of a tiny Llama with original key names (model.*, lm_head.weight); norms near 1 like a trained one."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(vocab_size))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for key in state:
        if key.endswith("norm.weight"):
            state[key] = 1 + 0.1 * torch.randn_like(state[key])
    return state


def random_projector(projector_type: str, d_in: int, d_out: int, seed: int) -> dict[str, torch.Tensor]:
    """Original projector tensors: `model.mm_projector.{weight,bias}` or `.0` / `.2` (nn.Sequential indices)."""
    generator = torch.Generator().manual_seed(seed)
    if projector_type == "linear":
        return {"model.mm_projector.weight": 0.2 * torch.randn(d_out, d_in, generator=generator),
                "model.mm_projector.bias": 0.1 * torch.randn(d_out, generator=generator)}
    return {"model.mm_projector.0.weight": 0.2 * torch.randn(d_out, d_in, generator=generator),
            "model.mm_projector.0.bias": 0.1 * torch.randn(d_out, generator=generator),
            "model.mm_projector.2.weight": 0.2 * torch.randn(d_out, d_out, generator=generator),
            "model.mm_projector.2.bias": 0.1 * torch.randn(d_out, generator=generator)}


def write_bin_shards(directory: Path, state: dict[str, torch.Tensor], shards: int = 2) -> None:
    """`pytorch_model-0000i-of-0000n.bin` + `pytorch_model.bin.index.json`, as the original releases ship."""
    directory.mkdir(parents=True, exist_ok=True)
    keys = sorted(state)
    weight_map = {}
    for i in range(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {k: state[k].contiguous() for k in keys[i::shards]}
        torch.save(part, directory / name)
        weight_map.update({k: name for k in part})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
             "weight_map": weight_map}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index))


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def write_v15_release(root: Path, towers: "Towers", seed: int = 1, **config) -> dict[str, torch.Tensor]:
    """llava-v1.5-7b's layout: fp16 `.bin` shards + index, mlp2x_gelu projector, no tower inside; returns weights."""
    state = {**random_llama(towers.vocab, seed=seed), **random_projector("mlp2x_gelu", 32, 64, seed=seed + 1)}
    state = {k: v.half() for k, v in state.items()}
    write_bin_shards(root, state)
    write_json(root / "config.json", release_config(towers.vocab, **config))
    towers.tokenizer.save_pretrained(root)
    return state


@dataclass
class Towers:
    """The tiny pretrained pieces every release is built from."""

    vision_dir: Path
    text_dir: Path
    tokenizer: object = field(repr=False)

    @property
    def vocab(self) -> int:
        return len(self.tokenizer)


def make_towers(root: Path) -> Towers:
    vision_dir, text_dir = save_tiny_towers(root, image_size=32, patch_size=8, vision_hidden=32, text_hidden=64)
    return Towers(vision_dir, text_dir, AutoTokenizer.from_pretrained(text_dir))


@pytest.fixture(scope="module")
def towers(tmp_path_factory) -> Towers:
    """Fixture (import it into a test module): the tiny towers and tokenizer, once per module."""
    return make_towers(tmp_path_factory.mktemp("towers"))


@pytest.fixture(scope="module")
def v15(tmp_path_factory, towers) -> tuple[Path, dict]:
    """Fixture: a llava-v1.5-7b-layout release directory and the weights written into it."""
    root = tmp_path_factory.mktemp("releases") / "llava-v1.5-7b"
    return root, write_v15_release(root, towers)


def tower_weights(vision_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(vision_dir / "model.safetensors")


class OriginalLlava(nn.Module):
    """The original LLaVA forward pass, from original-layout tensors (`model.*`, `lm_head.weight`, projector)."""

    def __init__(self, llama: dict, projector: dict, vision_dir: Path, tower: dict | None = None,
                 select_layer: int = -2, select_feature: str = "patch"):
        super().__init__()
        self.lm = LlamaForCausalLM(llama_config(llama["model.embed_tokens.weight"].shape[0]))
        self.lm.load_state_dict({k: v.float() for k, v in llama.items()}, strict=True)
        self.vision = CLIPVisionModel.from_pretrained(vision_dir)
        if tower is not None:
            prefix = "model.vision_tower.vision_tower.vision_model."  # transformers 4.x CLIP names
            self.vision.load_state_dict({k.removeprefix(prefix): v.float()
                                         for k, v in tower.items()}, strict=True)
        self.select_layer, self.select_feature = select_layer, select_feature
        self.projector = self._projector({k.removeprefix("model.mm_projector."): v.float()
                                          for k, v in projector.items()})
        self.eval()

    @staticmethod
    def _projector(weights: dict) -> nn.Module:
        if "weight" in weights:
            layer = nn.Linear(weights["weight"].shape[1], weights["weight"].shape[0])
            layer.load_state_dict(weights)
            return layer
        depth = len([k for k in weights if k.endswith(".weight")])
        modules = []
        for i in range(depth):
            w = weights[f"{2 * i}.weight"]
            modules += ([nn.GELU()] if i else []) + [nn.Linear(w.shape[1], w.shape[0])]
        sequential = nn.Sequential(*modules)
        sequential.load_state_dict(weights)
        return sequential

    @torch.no_grad()
    def embeds(self, input_ids: torch.Tensor, image_mask: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """Token embeddings with the image features written over the image positions (one image per row)."""
        hidden = self.vision(pixel_values.float(), output_hidden_states=True).hidden_states[self.select_layer]
        features = self.projector(hidden[:, 1:] if self.select_feature == "patch" else hidden)
        safe_ids = input_ids.masked_fill(image_mask, 0)  # the original never embeds image markers
        embeds = self.lm.model.embed_tokens(safe_ids)
        for row in range(input_ids.shape[0]):
            embeds[row, image_mask[row]] = features[row]
        return embeds

    @torch.no_grad()
    def logits(self, input_ids, image_mask, pixel_values, attention_mask=None) -> torch.Tensor:
        embeds = self.embeds(input_ids, image_mask, pixel_values)
        return self.lm(inputs_embeds=embeds, attention_mask=attention_mask).logits

    @torch.no_grad()
    def greedy(self, input_ids, image_mask, pixel_values, attention_mask, max_new_tokens: int) -> torch.Tensor:
        embeds = self.embeds(input_ids, image_mask, pixel_values)
        return self.lm.generate(inputs_embeds=embeds, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                do_sample=False, pad_token_id=0)


# The two-turn conversation of shared/reference/paper/CONVERSATIONS.md.
CONVERSATION = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
    {"role": "assistant", "content": "A cat."},
    {"role": "user", "content": "Color?"},
]


def sample_image():
    """A non-square picture, so `pad` and `square` preprocessing differ."""
    import numpy as np
    from PIL import Image

    pixels = np.random.RandomState(0).randint(0, 256, size=(24, 40, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def builtin_llava(model):
    """The same weights in transformers' built-in LlavaForConditionalGeneration."""
    from transformers import LlavaForConditionalGeneration

    from transformers_llava.checkpoints.llava_hf import to_llava_hf

    hf_config, state = to_llava_hf(model.config, model.state_dict())
    builtin = LlavaForConditionalGeneration(hf_config).to(model.dtype).eval()
    builtin.load_state_dict(state, strict=True)
    builtin.generation_config = model.generation_config
    return builtin


@torch.no_grad()
def assert_matches_original(model, processor, reference: OriginalLlava, original_vocab: int, new_tokens: int = 6):
    """Logits within 1e-5 of the original's and of the built-in Llava's, and identical greedy generations."""
    prompt = processor.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[sample_image()], text=[prompt], return_tensors="pt")
    mask = inputs["input_ids"] == model.config.image_token_id
    assert mask.sum() == model.config.image_seq_length
    ours = model(**inputs).logits
    original = reference.logits(inputs["input_ids"], mask, inputs["pixel_values"])
    assert (ours[..., :original_vocab] - original).abs().max() <= 1e-5
    assert (ours.argmax(-1) < original_vocab).all()  # rows added for LLaVA's tokens never win
    builtin = builtin_llava(model)
    assert (builtin(**inputs).logits - ours).abs().max() <= 1e-5

    length = inputs["input_ids"].shape[1]
    settings = dict(max_new_tokens=new_tokens, do_sample=False, stop_strings=None)
    ours_tokens = model.generate(**inputs, **settings)[0, length:].tolist()
    builtin_tokens = builtin.generate(**inputs, **settings)[0, length:].tolist()
    original_tokens = reference.greedy(inputs["input_ids"], mask, inputs["pixel_values"], inputs["attention_mask"],
                                       new_tokens)[0].tolist()
    assert ours_tokens == builtin_tokens == original_tokens
    return inputs


def write_sentencepiece_tokenizer(directory: Path, corpus: list[str], vocab_size: int = 400):
    """tokenizer.model + tokenizer_config.json as the original releases ship them (a slow LlamaTokenizer), trained
    in-process with LLaMA's SentencePiece settings; returns the SentencePieceProcessor (needs `sentencepiece`)."""
    import io

    spm = pytest.importorskip("sentencepiece")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus * 3), model_writer=model, vocab_size=vocab_size, model_type="bpe", unk_id=0,
        bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, character_coverage=1.0, add_dummy_prefix=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
        allow_whitespace_only_pieces=True, minloglevel=2,
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.model").write_bytes(model.getvalue())
    write_json(directory / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": None, "clean_up_tokenization_spaces": False, "legacy": False, "model_max_length": 2048,
        "padding_side": "right", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
    })
    write_json(directory / "special_tokens_map.json", {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                                                       "pad_token": "<unk>"})
    return spm.SentencePieceProcessor(model_proto=model.getvalue())
