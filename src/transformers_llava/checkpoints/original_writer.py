"""Writing a loaded LLaVA in the original release layout (haotian-liu/LLaVA), which SGLang's LLaVA path also reads.

    from transformers_llava.checkpoints.original_writer import save_original
    save_original(model, processor, "out/llava-v1.5-7b", vision_tower_name="openai/clip-vit-large-patch14-336")

    transformers-llava convert my-llava out/original --to original --vision-tower-name openai/clip-vit-large-patch14-336

The inverse of `original.convert_original` (same tables): a flat Llama config with the `mm_*` keys of llava-v1.5-7b,
`model.{embed_tokens,layers,norm}.*`, `lm_head.weight`, the projector as `model.mm_projector.weight` (linear) or
`model.mm_projector.{0,2,..}.*` (mlpNx_gelu), and the vision tower inside the checkpoint as
`model.vision_tower.vision_tower.vision_model.*` (as releases trained with an unfrozen tower), so that whichever copy
of the tower `mm_vision_tower` names is found, the weights are the model's. Besides the original files it writes
what lets a reader skip the named tower: its config as `mm_vision_config`, and transformers' `LlavaProcessor` files
(tokenizer with `<image>`, `preprocessor_config.json`, chat template) for SGLang's `AutoProcessor` and our loader.
Stop strings are also listed as stop token ids in `generation_config.json`'s `eos_token_id` (see `engine_prompts.py`);
the original `eos_token_id` is kept under `transformers_llava` in config.json, so import restores it.

What readers require (read from their sources; tests in tests/test_checkpoints_original_export.py):
- the original repo (`llava/model/builder.py`, `llava_arch.py`, `multimodal_projector/builder.py`): `mm_vision_tower`
  loadable by `CLIPVisionModel.from_pretrained`, `mm_projector_type` "linear" or `mlp\\d+x_gelu`,
  `mm_vision_select_layer`, `mm_vision_select_feature` "patch" / "cls_patch", `mm_use_im_start_end`,
  `mm_use_im_patch_token`, `image_aspect_ratio` "square" / "pad", `model_type` "llava".
- SGLang v0.5 (`python/sglang/srt/models/llava.py`, `LlavaLlamaForCausalLM`): `architectures`
  ["LlavaLlamaForCausalLM"]; `mm_vision_tower` containing "clip" (it picks the tower class by that substring);
  `mm_hidden_size`; `image_token_index` (the `<image>` id it looks for); projector tensors `model.mm_projector.0` /
  `.2` only (transformers' two-layer `LlavaMultiModalProjector`), so the paper's linear projector is not served
  there (vLLM serves it through the llava-hf export).
"""

import copy
import json
from pathlib import Path

import torch

from ..configuration_llava import projector_depth
from .detect import ORIGINAL_MODEL_TYPES
from .engine_prompts import stop_token_ids
from .llava_hf import EXTRA_KEY, engine_generation_config, to_llava_hf_processor
from .original import SELECT_FEATURE, original_name
from .safe_load import CheckpointError
from .templates import WRAPPED
from .vocab import IM_PATCH
from .writer import prepare_directory, untied_state, write_weights

ARCHITECTURE = "LlavaLlamaForCausalLM"
_SELECT_FEATURE = {ours: original for original, ours in SELECT_FEATURE.items()}  # default -> patch, full -> cls_patch
_SAVED_AS = ("_name_or_path", "architectures", "transformers_version", "dtype", "torch_dtype", "model_type")


def check_exportable(config) -> None:
    """Raise when the original code could not compute this model."""
    problems = []
    if config.text_config.model_type not in ORIGINAL_MODEL_TYPES.values():
        problems.append(f"the language model is a {config.text_config.model_type} (the original layout holds Llama)")
    if config.vision_config.model_type != "clip_vision_model":
        problems.append(f"the vision tower is a {config.vision_config.model_type} (the original layout holds CLIP)")
    if projector_depth(config.projector_type) > 1 and config.projector_hidden_act != "gelu":
        problems.append(f"projector_hidden_act={config.projector_hidden_act!r} (mlpNx_gelu is always gelu there)")
    if not config.multimodal_projector_bias:
        problems.append("the projector has no bias (the original's has one)")
    if not isinstance(config.vision_feature_layer, int):
        problems.append(f"vision_feature_layer={config.vision_feature_layer!r} (one layer only)")
    if problems:
        raise CheckpointError("This model cannot be written in the original LLaVA layout: " + "; ".join(problems) + ".")


def original_config(model, processor, vision_tower_name: str) -> dict:
    """The flat config.json of an original release for `model`."""
    config = model.config
    flat = {k: v for k, v in config.text_config.to_dict().items() if k not in _SAVED_AS}
    template = getattr(processor, "chat_template", None) or ""
    vocab = processor.tokenizer.get_vocab() if processor is not None else {}
    flat.update(
        architectures=[ARCHITECTURE],
        model_type="llava",
        dtype=str(model.dtype).removeprefix("torch."),
        tie_word_embeddings=config.tie_word_embeddings,
        vocab_size=config.text_config.vocab_size,
        image_token_index=config.image_token_index,
        mm_vision_tower=vision_tower_name,
        mm_hidden_size=config.vision_config.hidden_size,
        mm_projector_type=config.projector_type,
        mm_vision_select_layer=config.vision_feature_layer,
        mm_vision_select_feature=_SELECT_FEATURE[config.vision_feature_select_strategy],
        mm_use_im_start_end=WRAPPED in template,
        mm_use_im_patch_token=IM_PATCH in vocab,
        mm_patch_merge_type="flat",
        image_aspect_ratio=config.image_aspect_ratio,
        use_mm_proj=True,
        mm_vision_config=config.vision_config.to_dict(),  # lets a reader skip fetching the named tower
        text_architectures=config.text_config.architectures,
    )
    return flat


def tower_name(model, vision_tower_name: str | None) -> str:
    name = vision_tower_name or getattr(model.config.vision_config, "_name_or_path", "") or ""
    if not name:
        raise CheckpointError(
            "The original layout names its vision tower in config.json (mm_vision_tower) and this model does not "
            "know where its tower came from; pass vision_tower_name= (CLI: --vision-tower-name), e.g. "
            "openai/clip-vit-large-patch14-336."
        )
    return str(name)


def save_original(model, processor, directory, max_shard_size: int | str = "5GB", progress: bool | None = None,
                  vision_tower_name: str | None = None) -> Path:
    """The original release layout (see the module docstring); `processor` may be None (weights and config only)."""
    check_exportable(model.config)
    name = tower_name(model, vision_tower_name)
    directory = prepare_directory(directory)
    state = {original_name(key, model.config.projector_type): tensor for key, tensor in untied_state(model).items()}
    flat = original_config(model, processor, name)
    generation = copy.deepcopy(model.generation_config)
    stops = stop_token_ids(processor.tokenizer, generation.stop_strings) if processor is not None else []
    if stops:  # SGLang, like vLLM, stops on generation_config's eos_token_id, never on stop_strings
        flat[EXTRA_KEY] = {"stop_token_ids": stops, "eos_token_id": generation.eos_token_id}
        generation = engine_generation_config(generation, stops)
    (directory / "config.json").write_text(_json(flat), encoding="utf-8")
    generation.save_pretrained(directory)
    write_weights(state, directory, max_shard_size, progress)
    if processor is not None:
        hf, _ = to_llava_hf_processor(processor, engine_bos=False)  # the original tokenizer adds the BOS itself
        hf.save_pretrained(directory)
    if model.config.projector_type == "linear":
        print("note: SGLang's LlavaLlamaForCausalLM loads only two-layer projectors (model.mm_projector.0 / .2); "
              "serve this linear-projector model with vLLM from a --to llava-hf export.")
    if "clip" not in name.lower():
        print(f"note: mm_vision_tower={name!r} does not contain 'clip': SGLang picks the tower class by that "
              "substring and will not load it (pass --vision-tower-name with the Hub name of the CLIP tower).")
    return directory


def _json(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=_plain) + "\n"


def _plain(value):
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


__all__ = ["save_original", "original_config", "check_exportable", "ARCHITECTURE"]
