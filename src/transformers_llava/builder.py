"""Build a new LLaVA from a pretrained vision tower and a pretrained causal LM, ready for stage-1 training.

    from transformers_llava import build_llava
    model, processor = build_llava("openai/clip-vit-large-patch14", "lmsys/vicuna-13b-v1.5")  # or local paths

The vision tower may be any CLIP-like vision model transformers can load (a full CLIP checkpoint or a vision-only
one); the LM any `AutoModelForCausalLM`. The `<image>` token is added to the tokenizer, the embeddings resized and a
fresh projector created. Both towers keep their pretrained weights; nothing else is initialised at random.
"""

import os

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.utils import logging
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from .chat_templates import STOP_STRINGS, load_chat_template
from .configuration_llava import TransformersLlavaConfig
from .image_processing_llava import TransformersLlavaImageProcessor
from .modeling_llava import LlavaMultiModalProjector, TransformersLlavaForConditionalGeneration
from .processing_llava import TransformersLlavaProcessor

IMAGE_TOKEN = "<image>"
LOG = logging.get_logger(__name__)


def load_vision_tower(source, dtype=None) -> PreTrainedModel:
    """A vision model from a path/name (full CLIP-style checkpoints give their vision half) or an instance."""
    if isinstance(source, PreTrainedModel):
        return source
    config = AutoConfig.from_pretrained(source)
    vision_config = getattr(config, "vision_config", config)
    if type(vision_config) not in MODEL_MAPPING:
        raise ValueError(f"{source}: no vision model class is registered for config {type(vision_config).__name__}.")
    model_class = MODEL_MAPPING[type(vision_config)]
    return model_class.from_pretrained(source, dtype=dtype)


def vision_image_processor(source, vision_config, image_aspect_ratio: str) -> TransformersLlavaImageProcessor:
    """The tower's own preprocessing settings (size, mean, std) in LLaVA's image processor."""
    settings = {}
    if isinstance(source, (str, os.PathLike)):
        try:
            settings = AutoImageProcessor.from_pretrained(source).to_dict()
        except (OSError, ValueError):
            settings = {}
    if not settings:
        side = vision_config.image_size
        settings = dict(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                        image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)
    keep = set(TransformersLlavaImageProcessor.valid_kwargs.__annotations__)
    settings = {k: v for k, v in settings.items() if k in keep and v is not None}
    return TransformersLlavaImageProcessor(**{**settings, "image_aspect_ratio": image_aspect_ratio})


def extra_tower_tokens(vision_tower: PreTrainedModel) -> int:
    """Tokens the tower emits besides its patches (1 for CLIP's CLS, 0 for SigLIP), measured on a blank image."""
    config = vision_tower.config
    pixels = torch.zeros(1, config.num_channels, config.image_size, config.image_size, dtype=vision_tower.dtype)
    with torch.no_grad():
        hidden = vision_tower(pixels, output_hidden_states=True).hidden_states[0]
    return hidden.shape[1] - (config.image_size // config.patch_size) ** 2


def resize_embeddings(lm: PreTrainedModel, size: int, pad_to_multiple_of: int | None) -> None:
    """transformers' resize with mean resizing (new rows drawn from the old rows' mean and covariance). Its two
    "will be initialized from a multivariate normal distribution" warnings (input embeddings, then LM head) say
    what every LLaVA build does; they are kept out of the output, and one line goes to this module's log."""
    old = lm.get_input_embeddings().weight.shape[0]
    logger = logging.get_logger("transformers.modeling_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        lm.resize_token_embeddings(size, pad_to_multiple_of=pad_to_multiple_of)
    finally:
        logger.setLevel(level)
    new = lm.get_input_embeddings().weight.shape[0]
    if new > old:
        LOG.info("%d new embedding rows (<image>, padding) drawn from the distribution of the existing %d", new - old,
                 old)


def build_llava(
    vision_model,
    language_model,
    tokenizer=None,
    *,
    projector_type: str = "linear",
    conversation_format: str = "llava_v1",
    vision_feature_layer: int | list[int] = -2,
    vision_feature_select_strategy: str = "default",
    image_aspect_ratio: str = "square",
    projector_hidden_act: str = "gelu",
    pad_vocab_to_multiple_of: int | None = 64,
    dtype: torch.dtype | None = None,
) -> tuple[TransformersLlavaForConditionalGeneration, TransformersLlavaProcessor]:
    """Join a vision tower and a causal LM into a LLaVA with a fresh projector; returns `(model, processor)`.

    `vision_model` / `language_model` are paths, Hub names or loaded models; `tokenizer` defaults to the LM's.
    The tokenizer pads on the left (batched generation); training collators pad on the right themselves.
    """
    vision = load_vision_tower(vision_model, dtype=dtype)
    if isinstance(language_model, PreTrainedModel):
        lm = language_model
        if tokenizer is None:
            raise ValueError("Pass `tokenizer=` when `language_model` is an already-loaded model.")
    else:
        lm = AutoModelForCausalLM.from_pretrained(language_model, dtype=dtype)
    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer or language_model, padding_side="left")

    tokenizer.add_special_tokens({"extra_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        # The original LLaVA pads with <unk>; tokenizers without one get a dedicated <pad>.
        if tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
    resize_embeddings(lm, len(tokenizer), pad_vocab_to_multiple_of)

    extra = extra_tower_tokens(vision)
    if extra == 0 and vision_feature_select_strategy == "default":
        raise ValueError(
            f"The vision tower {type(vision).__name__} has no CLS token, so vision_feature_select_strategy='default' "
            "would drop a real patch; use vision_feature_select_strategy='full'."
        )
    config = TransformersLlavaConfig(
        vision_config=vision.config,
        text_config=lm.config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        projector_type=projector_type,
        projector_hidden_act=projector_hidden_act,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=vision_feature_select_strategy,
        image_aspect_ratio=image_aspect_ratio,
        tie_word_embeddings=bool(getattr(lm.config, "tie_word_embeddings", False)),
    )
    # Build the shell on the meta device, then move the pretrained towers in: nothing large is initialised twice.
    with torch.device("meta"):
        model = TransformersLlavaForConditionalGeneration(config)
    model.model.vision_tower = vision
    model.model.language_model = lm.base_model
    model.lm_head = lm.get_output_embeddings()
    model.model.multi_modal_projector = LlavaMultiModalProjector(config).to(dtype=lm.dtype)
    model.model._init_weights(model.model.multi_modal_projector)

    generation = model.generation_config
    generation.bos_token_id = tokenizer.bos_token_id
    generation.eos_token_id = lm.generation_config.eos_token_id or tokenizer.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id
    if conversation_format in STOP_STRINGS:
        generation.stop_strings = STOP_STRINGS[conversation_format]
    config.text_config.pad_token_id = tokenizer.pad_token_id

    processor = TransformersLlavaProcessor(
        image_processor=vision_image_processor(vision_model, vision.config, image_aspect_ratio),
        tokenizer=tokenizer,
        patch_size=vision.config.patch_size,
        vision_feature_select_strategy=vision_feature_select_strategy,
        num_additional_image_tokens=extra,
        chat_template=load_chat_template(conversation_format),
    )
    return model, processor


__all__ = ["build_llava", "load_vision_tower", "IMAGE_TOKEN"]
