"""transformers' built-in llava layout ("llava-hf", what vLLM, SGLang and TGI read) <-> this package's.

    from transformers_llava.checkpoints.llava_hf import to_llava_hf, from_llava_hf
    hf_config, hf_state = to_llava_hf(model.config, model.state_dict())
    config, state = from_llava_hf(hf_config.to_dict(), hf_state)

The module layouts are the same (`model.vision_tower.*`, `model.multi_modal_projector.*`,
`model.language_model.*`, `lm_head.weight`). Files are written with the key names of the llava-hf repositories on
the Hub (`language_model.model.*`, `vision_tower.vision_model.*`, ...), which every consumer reads; every llava-hf
naming (that one, transformers 4.52+'s, transformers 5's) is read back. What differs is the projector:

- `mlp2x_gelu` (LLaVA-1.5) is llava-hf's own projector: exported as is.
- `linear` (the paper) has no llava-hf equivalent, since the built-in projector always has two layers. It is exported
  exactly inside the activations serving engines know: `projector_hidden_act="relu"` with the construction of
  `linear_projector.py` (`relu(x) - relu(-x) = x` on the projector's input; needs D_llm >= 2 D_vision). When the
  widths do not allow it, the older identity form is written (`projector_hidden_act="linear"`, `linear_2` = the
  identity matrix): transformers computes it exactly, vLLM refuses the activation (`to_llava_hf` says so in its
  `notes`).
- `mlpNx_gelu` with N > 2 cannot be represented and is refused.

The exported config.json carries this package's own fields under the `transformers_llava` key (ignored by
transformers and the engines), so that importing it back restores the config, the chat template, the tokenizer and
the generation config exactly (see `engine_prompts.py` for what the export changes there); both projector
constructions are recognised by their exact pattern, not trusted. A llava-hf checkpoint from elsewhere imports as
`mlp2x_gelu` with its own activation.
"""

import copy
import re

import torch
from transformers import LlavaConfig as HFLlavaConfig
from transformers import LlavaImageProcessorPil
from transformers import LlavaProcessor as HFLlavaProcessor
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from ..configuration_llava import TransformersLlavaConfig, projector_depth
from ..image_processing_llava import TransformersLlavaImageProcessor
from ..processing_llava import TransformersLlavaProcessor
from . import linear_projector
from .engine_prompts import as_list, bos_in_template, bos_out_of_template
from .safe_load import CheckpointError
from .shapes import check_state_dict

EXTRA_KEY = "transformers_llava"  # our fields inside an exported llava-hf config.json
OUR_FIELDS = ("projector_type", "projector_hidden_act", "image_aspect_ratio")
PROJECTOR = "model.multi_modal_projector."
# File key names of llava-hf checkpoints, oldest first -> the module names (ours and transformers 5's built-in).
_FILE_TO_MODULE = [
    (re.compile(r"^language_model\.lm_head\."), "lm_head."),
    (re.compile(r"^language_model\.model\."), "model.language_model."),
    (re.compile(r"^(model\.)?vision_tower\.vision_model\."), "model.vision_tower."),  # transformers 4.x CLIP
    (re.compile(r"^vision_tower\."), "model.vision_tower."),
    (re.compile(r"^multi_modal_projector\."), "model.multi_modal_projector."),
]
# Module names -> the file layout of the llava-hf repositories on the Hub, which every consumer reads
# (transformers 4.x and 5.x, vLLM, SGLang, TGI, llama.cpp's converters).
_MODULE_TO_FILE = [
    (re.compile(r"^lm_head\."), "language_model.lm_head."),
    (re.compile(r"^model\.language_model\."), "language_model.model."),
    (re.compile(r"^model\.vision_tower\."), "vision_tower.vision_model."),
    (re.compile(r"^model\.multi_modal_projector\."), "multi_modal_projector."),
]
# Image-processor settings both processors share.
_IMAGE_SETTINGS = (
    "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor", "do_normalize",
    "image_mean", "image_std", "do_convert_rgb",
)


def to_llava_hf(config: TransformersLlavaConfig, state: dict[str, torch.Tensor], notes: list | None = None):
    """(our config, our state dict) -> (transformers `LlavaConfig`, llava-hf state dict).

    `notes` (a list, when given) receives what a user should know about the result (an activation vLLM refuses).
    """
    depth = projector_depth(config.projector_type)
    if depth > 2:
        raise CheckpointError(
            f"projector_type={config.projector_type!r} has {depth} layers; llava-hf's projector has exactly two, so "
            "this model cannot be exported to llava-hf (keep it in this package's format)."
        )
    state = dict(state)
    activation = config.projector_hidden_act
    if depth == 1:
        weight = state.pop(PROJECTOR + "linear_1.weight")
        bias = state.pop(PROJECTOR + "linear_1.bias", None)
        width, d_vision = weight.shape
        if linear_projector.fits(d_vision, width):
            tensors = linear_projector.split_relu(weight, bias, width)
            activation = linear_projector.ACTIVATION  # linear_2(relu(linear_1 x)) == W x + b, see linear_projector.py
        else:
            tensors = {"linear_1.weight": weight, "linear_2.weight": torch.eye(width, dtype=weight.dtype)}
            if bias is not None:
                tensors.update({"linear_1.bias": bias, "linear_2.bias": torch.zeros(width, dtype=weight.dtype)})
            activation = "linear"  # identity: exact in transformers, refused by vLLM
            if notes is not None:
                notes.append(
                    f"the linear projector is written with projector_hidden_act='linear', which transformers runs "
                    f"exactly but vLLM refuses: the exact relu form needs the language model's hidden size ({width}) "
                    f">= 2 x the vision hidden size ({d_vision})."
                )
        state.update({PROJECTOR + name: tensor for name, tensor in tensors.items()})
    text = config.text_config.to_dict()
    extra = {field: getattr(config, field) for field in OUR_FIELDS}
    if not text.get("architectures"):  # vLLM builds the language model from text_config.architectures
        text["architectures"] = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config.text_config.model_type]]
        extra["text_architectures_added"] = True
    hf_config = HFLlavaConfig(
        vision_config=config.vision_config.to_dict(),
        text_config=text,
        image_token_index=config.image_token_index,
        image_seq_length=config.image_seq_length,
        projector_hidden_act=activation,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        vision_feature_layer=config.vision_feature_layer,
        multimodal_projector_bias=config.multimodal_projector_bias,
        tie_word_embeddings=config.tie_word_embeddings,
        **{EXTRA_KEY: extra},
    )
    hf_config.architectures = ["LlavaForConditionalGeneration"]
    return hf_config, state


def is_identity_layer(state: dict[str, torch.Tensor], prefix: str) -> bool:
    weight, bias = state.get(prefix + "weight"), state.get(prefix + "bias")
    if weight is None or weight.ndim != 2 or weight.shape[0] != weight.shape[1]:
        return False
    identity = torch.equal(weight, torch.eye(weight.shape[0], dtype=weight.dtype))
    return identity and (bias is None or not bias.any())


def rename(state: dict[str, torch.Tensor], rules) -> dict[str, torch.Tensor]:
    """Keys renamed by the first rule that matches each (unchanged when none does)."""
    renamed = {}
    for key, tensor in state.items():
        for pattern, replacement in rules:
            if pattern.match(key):
                key = pattern.sub(replacement, key, count=1)
                break
        renamed[key] = tensor
    return renamed


def file_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Module names -> the key names llava-hf files use on the Hub."""
    return rename(state, _MODULE_TO_FILE)


def from_llava_hf(hf_config: dict, state: dict[str, torch.Tensor], source="llava-hf checkpoint"):
    """(llava-hf config.json dict, llava-hf state dict) -> (our config, our state dict)."""
    resolved = HFLlavaConfig.from_dict({k: v for k, v in hf_config.items() if k != EXTRA_KEY})
    ours = dict(hf_config.get(EXTRA_KEY) or {})
    if ours.get("text_architectures_added"):
        resolved.text_config.architectures = None
    state = rename(state, _FILE_TO_MODULE)
    activation = resolved.projector_hidden_act
    projector = {k.removeprefix(PROJECTOR): v for k, v in state.items() if k.startswith(PROJECTOR)}
    recovered = linear_projector.unsplit_relu(projector) if activation == linear_projector.ACTIVATION else None
    if recovered is not None:  # the exact relu form of a one-layer projector: back to one layer
        state = {k: v for k, v in state.items() if not k.startswith(PROJECTOR)}
        state[PROJECTOR + "linear_1.weight"] = recovered[0]
        if recovered[1] is not None:
            state[PROJECTOR + "linear_1.bias"] = recovered[1]
        projector_type, activation = "linear", ours.get("projector_hidden_act", "gelu")
    elif activation == "linear" and is_identity_layer(state, PROJECTOR + "linear_2."):
        # The identity form of a one-layer projector: drop the identity layer again.
        state = {k: v for k, v in state.items() if not k.startswith(PROJECTOR + "linear_2.")}
        projector_type = "linear"
        activation = ours.get("projector_hidden_act", "gelu")
    else:
        projector_type = "mlp2x_gelu"
    config = TransformersLlavaConfig(
        vision_config=resolved.vision_config,
        text_config=resolved.text_config,
        image_token_index=resolved.image_token_index,
        image_seq_length=resolved.image_seq_length,
        projector_type=projector_type,
        projector_hidden_act=activation,
        vision_feature_select_strategy=resolved.vision_feature_select_strategy,
        vision_feature_layer=resolved.vision_feature_layer,
        multimodal_projector_bias=resolved.multimodal_projector_bias,
        image_aspect_ratio=ours.get("image_aspect_ratio", "square"),
        tie_word_embeddings=resolved.tie_word_embeddings,
    )
    check_state_dict(config, state, source)
    return config, state


def engine_generation_config(generation, stop_ids: list[int]):
    """A copy of `generation` whose `eos_token_id` also lists `stop_ids` (what vLLM and SGLang stop on)."""
    generation = copy.deepcopy(generation)
    eos = as_list(generation.eos_token_id)
    generation.eos_token_id = eos + [i for i in stop_ids if i not in eos] if stop_ids else generation.eos_token_id
    return generation


def our_generation_config(generation, hf_config: dict):
    """The inverse of `engine_generation_config`, given the exported config.json: our own `eos_token_id` back."""
    ours = hf_config.get(EXTRA_KEY) or {}
    if ours.get("stop_token_ids") and generation is not None:
        generation.eos_token_id = ours.get("eos_token_id")
    return generation


def to_llava_hf_processor(
    processor: TransformersLlavaProcessor, engine_bos: bool = True
) -> tuple[HFLlavaProcessor, str | None]:
    """Our processor as transformers' `LlavaProcessor` (pad-to-square becomes the built-in `do_pad`), and the BOS
    prefix its chat template now writes (the tokenizer then adds none; see `engine_prompts.py`), or None.
    `engine_bos=False` keeps our tokenizer and template as they are."""
    ours = processor.image_processor
    settings = {key: getattr(ours, key) for key in _IMAGE_SETTINGS if getattr(ours, key, None) is not None}
    image_processor = LlavaImageProcessorPil(**settings, do_pad=getattr(ours, "image_aspect_ratio", "square") == "pad")
    tokenizer, chat_template, prefix = processor.tokenizer, processor.chat_template, None
    if engine_bos:
        tokenizer, chat_template, prefix = bos_in_template(tokenizer, chat_template)
    hf = HFLlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=processor.patch_size,
        vision_feature_select_strategy=processor.vision_feature_select_strategy,
        chat_template=chat_template,
        image_token=processor.image_token,
        num_additional_image_tokens=processor.num_additional_image_tokens,
    )
    return hf, prefix


def from_llava_hf_processor(path, model_config: dict, chat_template=None, **kwargs) -> TransformersLlavaProcessor:
    """A llava-hf processor directory as our processor; `model_config` (its config.json) fills legacy gaps."""
    hf = HFLlavaProcessor.from_pretrained(path, **kwargs)
    theirs = hf.image_processor
    settings = {key: getattr(theirs, key) for key in _IMAGE_SETTINGS if getattr(theirs, key, None) is not None}
    aspect = "pad" if getattr(theirs, "do_pad", False) else "square"
    resolved = HFLlavaConfig.from_dict({k: v for k, v in model_config.items() if k != EXTRA_KEY})
    tokenizer, template = hf.tokenizer, hf.chat_template
    prefix = (model_config.get(EXTRA_KEY) or {}).get("chat_template_bos_prefix")
    if prefix:  # our export: the BOS back from the template into the tokenizer
        tokenizer, template = bos_out_of_template(tokenizer, template, prefix)
    patch_size, extra = hf.patch_size, hf.num_additional_image_tokens
    if patch_size is None:  # processors saved before transformers 4.47 left the expansion to the model
        patch_size = resolved.vision_config.patch_size
        extra = 1 if resolved.vision_config.model_type == "clip_vision_model" else 0
    return TransformersLlavaProcessor(
        image_processor=TransformersLlavaImageProcessor(**settings, image_aspect_ratio=aspect),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy=hf.vision_feature_select_strategy or resolved.vision_feature_select_strategy,
        chat_template=chat_template or template,
        image_token=hf.image_token,
        num_additional_image_tokens=extra,
    )


__all__ = [
    "to_llava_hf", "from_llava_hf", "file_keys", "to_llava_hf_processor", "from_llava_hf_processor",
    "engine_generation_config", "our_generation_config",
]
