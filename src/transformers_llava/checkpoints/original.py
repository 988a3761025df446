"""Original LLaVA releases (v0, v1, v1.5) -> this package's config, weights and processor.

    from transformers_llava import LlavaForConditionalGeneration, LlavaProcessor
    model = LlavaForConditionalGeneration.from_pretrained("llava-v1.5-7b", vision_tower="clip-vit-large-patch14-336")
    processor = LlavaProcessor.from_pretrained("llava-v1.5-7b", vision_tower="clip-vit-large-patch14-336")

An original release is a Llama checkpoint with a flat config carrying `mm_*` keys. Its vision tower is named by
`mm_vision_tower` (a Hub name; pass `vision_tower=` a local copy on offline machines); tower weights inside the
checkpoint (`model.vision_tower.vision_tower.*`, present when the tower was unfrozen) win over the named tower's.
The `<image>` token is added to the release's tokenizer (see `vocab.py`).

| original                                         | this package                                  |
|--------------------------------------------------|-----------------------------------------------|
| `model.mm_projector.{weight,bias}` (linear)      | `model.multi_modal_projector.linear_1.*`      |
| `model.mm_projector.{2i}.*` (mlpNx_gelu)         | `model.multi_modal_projector.linear_{i+1}.*`  |
| `model.vision_tower.vision_tower.vision_model.*` | `model.vision_tower.*` (transformers 5 CLIP)  |
| `model.{embed_tokens,layers,norm}.*`             | `model.language_model.*`                      |
| `lm_head.weight`                                 | `lm_head.weight`                              |
| `mm_vision_select_layer`                         | `vision_feature_layer` (-1 if absent, as v0)  |
| `mm_vision_select_feature` patch / cls_patch     | `vision_feature_select_strategy` default/full |
"""

import re
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, CLIPVisionConfig

from ..builder import IMAGE_TOKEN, load_vision_tower, vision_image_processor
from ..configuration_llava import TransformersLlavaConfig
from ..processing_llava import TransformersLlavaProcessor
from .detect import ORIGINAL_MODEL_TYPES, Layout, unexpected_keys_error
from .safe_load import CheckpointError
from .shapes import check_state_dict
from .templates import conversation_format, release_chat_template
from .vocab import grow_vocab, prepare_tokenizer

SELECT_FEATURE = {"patch": "default", "cls_patch": "full"}
# Flat-config keys that belong to LLaVA (or to its training run), not to the language model.
_LLAVA_KEYS = {
    "model_type", "architectures", "_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_mm_proj",
    "image_aspect_ratio", "image_grid_pinpoints", "tokenizer_model_max_length", "tokenizer_padding_side",
    "max_length", "s2", "s2_scales", "image_token_index", "text_architectures",
    "transformers_llava",
}
_LLAVA_PREFIXES = ("mm_", "tune_mm", "freeze_mm", "unfreeze_mm")
_KEY_RULES = [
    (re.compile(r"^model\.mm_projector\.(weight|bias)$"), lambda m: f"model.multi_modal_projector.linear_1.{m[1]}"),
    (re.compile(r"^model\.mm_projector\.(\d+)\.(weight|bias)$"),
     lambda m: f"model.multi_modal_projector.linear_{int(m[1]) // 2 + 1}.{m[2]}" if int(m[1]) % 2 == 0 else None),
    (re.compile(r"^model\.vision_tower\.vision_tower\.vision_model\.(.+)$"), lambda m: f"model.vision_tower.{m[1]}"),
    (re.compile(r"^model\.((?:embed_tokens|layers|norm)\..+)$"), lambda m: f"model.language_model.{m[1]}"),
    (re.compile(r"^lm_head\.weight$"), lambda m: "lm_head.weight"),
]
# Buffers older transformers versions saved; today's modules recompute them.
_STALE_BUFFERS = re.compile(r"(\.rotary_emb\.inv_freq|\.embeddings\.position_ids)$")
EXPECTED_KEYS = [
    "model.embed_tokens.weight", "model.layers.<i>.*", "model.norm.weight", "lm_head.weight",
    "model.mm_projector.weight/.bias (linear) or model.mm_projector.<2i>.weight/.bias (mlpNx_gelu)",
    "optionally model.vision_tower.vision_tower.vision_model.*",
]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
SAVED_TEMPLATE, SAVED_IMAGE_PROCESSOR = "chat_template.jinja", "preprocessor_config.json"


def drop_stale_buffers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Without the buffers older transformers saved (`rotary_emb.inv_freq`, CLIP `position_ids`)."""
    return {key: tensor for key, tensor in state.items() if not _STALE_BUFFERS.search(key)}


def our_key(key: str) -> str | None:
    """The name of an original tensor in this package's layout; None when it is no known original key."""
    for pattern, rename in _KEY_RULES:
        match = pattern.match(key)
        if match:
            return rename(match)
    return None


def original_name(key: str, projector_type: str = "mlp2x_gelu") -> str:
    """The original name of one of our tensors (for messages): the inverse of `our_key`."""
    match = re.match(r"^model\.multi_modal_projector\.linear_(\d+)\.(weight|bias)$", key)
    if match:
        index = "" if projector_type == "linear" else f"{(int(match[1]) - 1) * 2}."
        return f"model.mm_projector.{index}{match[2]}"
    for ours, original in (("model.vision_tower.", "model.vision_tower.vision_tower.vision_model."),
                            ("model.language_model.", "model.")):
        if key.startswith(ours):
            return original + key.removeprefix(ours)
    return key


def text_config(flat: dict, vocab_size: int):
    """The language model's own config: the flat config without LLaVA's keys."""
    kept = {k: v for k, v in flat.items() if k not in _LLAVA_KEYS and not k.startswith(_LLAVA_PREFIXES)}
    if flat.get("text_architectures"):  # written by original_writer.py: the language model's own class
        kept["architectures"] = flat["text_architectures"]
    if kept.get("rope_scaling", 0) is None:
        del kept["rope_scaling"]  # transformers 4.31 wrote an explicit null; today's configs omit it
    return AutoConfig.for_model(ORIGINAL_MODEL_TYPES[flat["model_type"]], **{**kept, "vocab_size": vocab_size})


def vision_tower_source(layout: Layout, override=None) -> str:
    """Where the vision tower is read from: the local override, else the config's `mm_vision_tower`."""
    if override is not None:
        if not Path(override).exists():
            raise CheckpointError(f"vision_tower={str(override)!r} does not exist; give a local vision tower "
                                  "directory (a copy of the CLIP model named by mm_vision_tower).")
        return str(override)
    return layout.config["mm_vision_tower"]


def tower_config(source: str, layout: Layout, trust_remote_code: bool = False):
    """The CLIP vision config at `source`, or an error saying how to point at a local copy.

    A checkpoint written by `original_writer.py` carries the config as `mm_vision_config` (and its tower weights),
    so it is read offline unless a tower is given explicitly."""
    saved = layout.config.get("mm_vision_config")
    if saved is not None and source == layout.config.get("mm_vision_tower"):
        return CLIPVisionConfig(**saved)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"The vision tower {source!r} of {layout.path} (config.json mm_vision_tower) cannot be loaded: it is not "
            "a local directory and is not in the Hugging Face cache (or the Hub is unreachable). Pass "
            "vision_tower='/path/to/local/copy' (CLI: --vision-tower). Cause: " + str(err).splitlines()[0]
        ) from err
    vision = getattr(config, "vision_config", config)
    if vision.model_type != "clip_vision_model":
        raise CheckpointError(f"The vision tower {source!r} is a {vision.model_type}; original LLaVA uses CLIP.")
    return vision


def release_tokenizer(layout: Layout, trust_remote_code: bool = False):
    """The release's tokenizer (the base model's when the release has none) with LLaVA's tokens added."""
    source = layout.path
    if not any((layout.path / name).is_file() for name in TOKENIZER_FILES) and layout.base_model is not None:
        source = layout.base_model
    # The language model's config, not the flat LLaVA one transformers would misread as its own llava's.
    config = text_config(layout.config, layout.config.get("vocab_size", 32000))
    tokenizer = AutoTokenizer.from_pretrained(
        source, config=config, padding_side="left", trust_remote_code=trust_remote_code
    )
    return prepare_tokenizer(tokenizer, layout.config)


def feature_settings(layout: Layout) -> dict:
    """Our config fields that come straight from the flat config's `mm_*` keys."""
    flat = layout.config
    select = flat.get("mm_vision_select_feature", "patch")
    if select not in SELECT_FEATURE:
        raise CheckpointError(
            f"{layout.path}: mm_vision_select_feature={select!r}; supported: {sorted(SELECT_FEATURE)}."
        )
    return dict(
        projector_type=flat.get("mm_projector_type", "linear"),
        vision_feature_select_strategy=SELECT_FEATURE[select],
        vision_feature_layer=flat.get("mm_vision_select_layer", -1),
        image_aspect_ratio=flat.get("image_aspect_ratio", "square"),
    )


def convert_original(
    layout: Layout, weights: dict[str, torch.Tensor], tokenizer, vision_tower=None, trust_remote_code=False
) -> tuple[TransformersLlavaConfig, dict[str, torch.Tensor]]:
    """Original weights (original key names) -> (our config, our state dict)."""
    source = vision_tower_source(layout, vision_tower)
    vision = tower_config(source, layout, trust_remote_code)
    mm_hidden = layout.config.get("mm_hidden_size")
    if mm_hidden is not None and mm_hidden != vision.hidden_size:
        raise CheckpointError(
            f"{layout.path}: config mm_hidden_size={mm_hidden} but the vision tower {source!r} has hidden_size "
            f"{vision.hidden_size}; this is not the tower the projector was trained on."
        )
    weights = drop_stale_buffers(weights)
    vocab_size = grow_vocab(weights, len(tokenizer))
    state, unexpected = {}, []
    for key, tensor in weights.items():
        name = our_key(key)
        if name is None:
            unexpected.append(key)
        else:
            state[name] = tensor
    if unexpected:
        raise unexpected_keys_error(layout.path, unexpected, EXPECTED_KEYS)
    if not any(key.startswith("model.vision_tower.") for key in state):
        tower = load_vision_tower(source)
        state.update({f"model.vision_tower.{k}": v for k, v in tower.state_dict().items()})
    config = TransformersLlavaConfig(
        vision_config=vision,
        text_config=text_config(layout.config, vocab_size),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        tie_word_embeddings=bool(layout.config.get("tie_word_embeddings", False)),
        **feature_settings(layout),
    )
    check_state_dict(config, state, layout.path, lambda key: original_name(key, config.projector_type))
    return config, state


def original_processor(
    layout: Layout, tokenizer, vision_tower=None, conversation_format_name=None, trust_remote_code=False
) -> TransformersLlavaProcessor:
    """The processor the release was used with: its CLIP preprocessing, aspect-ratio mode and conversation format."""
    source = vision_tower_source(layout, vision_tower)
    vision = tower_config(source, layout, trust_remote_code)
    settings = feature_settings(layout)
    saved_template = layout.path / SAVED_TEMPLATE  # written by original_writer.py; the releases have none
    if conversation_format_name is None and saved_template.is_file():
        template = saved_template.read_text(encoding="utf-8")
    else:
        format_name = conversation_format_name or conversation_format(layout.name, layout.config)
        template = release_chat_template(format_name, bool(layout.config.get("mm_use_im_start_end", False)))
    # preprocessing saved beside the weights wins over the named tower's (original_writer.py writes it)
    image_source = layout.path if (layout.path / SAVED_IMAGE_PROCESSOR).is_file() else source
    return TransformersLlavaProcessor(
        image_processor=vision_image_processor(image_source, vision, settings["image_aspect_ratio"]),
        tokenizer=tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy=settings["vision_feature_select_strategy"],
        num_additional_image_tokens=1,  # CLIP's CLS token
        chat_template=template,
    )


__all__ = ["convert_original", "original_processor", "release_tokenizer", "our_key", "original_name", "text_config"]
