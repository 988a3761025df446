"""LoRA releases and stage-1 (projector-only) outputs of the original code, completed into full original weights.

    model = LlavaForConditionalGeneration.from_pretrained("llava-v1.5-7b-lora", base_model="vicuna-7b-v1.5")
    model = LlavaForConditionalGeneration.from_pretrained("llava-v1.5-mlp2x-pretrain", base_model="vicuna-7b-v1.5")

A LoRA release holds `adapter_config.json`, `adapter_model.*` (the LoRA matrices of the language model) and
`non_lora_trainables.bin` (everything else that was trained: the projector, sometimes embeddings or the vision tower).
As the original `load_pretrained_model` did, the non-LoRA tensors go into the base language model, then PEFT merges
the adapter into it. A stage-1 output holds `mm_projector.bin` (the projector, plus the token embeddings when
`<im_start>`/`<im_end>` were trained) on top of the unchanged base. Both return original key names, for
`original.convert_original`.
"""

import torch
from transformers import AutoConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from .detect import ADAPTER_FILES, NON_LORA_FILES, PROJECTOR_FILES, Layout, unexpected_keys_error
from .safe_load import CheckpointError, first_file, load_weight_file
from .vocab import EMBED_KEY, HEAD_KEY, match_head_to_embeddings

PROJECTOR_MARK = "mm_projector."


def non_lora_key(key: str, nested: bool) -> str:
    """`base_model.model.model.mm_projector.0.weight` -> `model.mm_projector.0.weight` (the original's renaming)."""
    key = key.removeprefix("base_model.")
    return key.removeprefix("model.") if nested else key


def lora_release_weights(
    layout: Layout, base: dict[str, torch.Tensor], allow_pickle: bool = False, trust_remote_code: bool = False
) -> dict[str, torch.Tensor]:
    """Base weights + non-LoRA trainables + the merged adapter, with original key names."""
    non_lora_path = first_file(layout.path, NON_LORA_FILES)
    extra = {}
    if non_lora_path is not None:
        raw = load_weight_file(non_lora_path, allow_pickle)
        nested = any(key.removeprefix("base_model.").startswith("model.model.") for key in raw)
        extra = {non_lora_key(key, nested): tensor for key, tensor in raw.items()}
    language = {key: tensor for key, tensor in extra.items() if key in base or key in (EMBED_KEY, HEAD_KEY)}
    rest = {key: tensor for key, tensor in extra.items() if key not in language}
    merged = merge_adapter(layout, {**base, **language}, allow_pickle, trust_remote_code)
    return {**merged, **rest}


def merge_adapter(
    layout: Layout, weights: dict[str, torch.Tensor], allow_pickle: bool, trust_remote_code: bool
) -> dict[str, torch.Tensor]:
    """Build the base language model from `weights`, load the LoRA adapter with PEFT and merge it."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict  # only LoRA releases need PEFT

    match_head_to_embeddings(weights)
    config = AutoConfig.from_pretrained(layout.base_model, trust_remote_code=trust_remote_code)
    config.vocab_size = weights[EMBED_KEY].shape[0]
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    language_model = model_class.from_pretrained(None, config=config, state_dict=weights)
    peft_model = get_peft_model(language_model, LoraConfig.from_pretrained(layout.path))
    adapter_path = first_file(layout.path, ADAPTER_FILES)
    adapter = load_weight_file(adapter_path, allow_pickle)
    result = set_peft_model_state_dict(peft_model, adapter)
    if result.unexpected_keys:
        raise unexpected_keys_error(
            adapter_path, result.unexpected_keys,
            ["base_model.model.model.layers.<i>.<module>.lora_A.weight / lora_B.weight for the base LM's modules"],
        )
    missing = sorted(key for key in result.missing_keys if "lora_" in key)
    if missing:
        raise CheckpointError(
            f"{adapter_path} has no weights for {len(missing)} LoRA matrices adapter_config.json asks for (e.g. "
            f"{', '.join(missing[:3])}); the adapter does not match its config or the base {layout.base_model}."
        )
    return dict(peft_model.merge_and_unload().state_dict())


def projector_release_weights(
    layout: Layout, base: dict[str, torch.Tensor], allow_pickle: bool = False
) -> dict[str, torch.Tensor]:
    """Base weights + the stage-1 projector (and embeddings when they were trained), with original key names."""
    projector_path = first_file(layout.path, PROJECTOR_FILES)
    trained = {}
    unexpected = []
    for key, tensor in load_weight_file(projector_path, allow_pickle).items():
        if PROJECTOR_MARK in key:
            trained["model." + PROJECTOR_MARK + key.split(PROJECTOR_MARK, 1)[1]] = tensor
        elif key.endswith("embed_tokens.weight"):
            trained[EMBED_KEY] = tensor
        else:
            unexpected.append(key)
    if unexpected or not any(PROJECTOR_MARK in key for key in trained):
        raise unexpected_keys_error(
            projector_path, unexpected or ["(no projector tensors at all)"],
            ["model.mm_projector.weight/.bias or model.mm_projector.<2i>.weight/.bias",
             "model.embed_tokens.weight (when <im_start>/<im_end> were trained)"],
        )
    weights = {**base, **trained}
    # lm_head stayed frozen in stage 1 and is not saved: tokens added then keep the mean row the original gave them.
    match_head_to_embeddings(weights)
    return weights


__all__ = ["lora_release_weights", "projector_release_weights", "merge_adapter"]
