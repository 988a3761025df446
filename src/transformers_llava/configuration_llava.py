"""LLaVA configuration: a vision tower config, a language model config, and how they are joined.

Defaults are the paper's model (Visual Instruction Tuning, Liu et al. 2023): CLIP ViT-L/14 at 224 px, features of the
penultimate layer with the CLS token dropped (16 x 16 = 256 image tokens), a linear projection into a Vicuna-13B.
`LlavaConfig.from_preset("llava-v1.5-7b")` and friends give the released variants.

This file is also shipped inside saved checkpoints as remote code, so it imports only from transformers.
"""

import re
from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

MODEL_TYPE = "transformers_llava"
_MLP_PATTERN = re.compile(r"^mlp(\d+)x_gelu$")

# CLIP ViT-L/14 vision tower; image_size is set per variant (224 in the paper, 336 in v1.5).
CLIP_VIT_L_14 = dict(
    model_type="clip_vision_model",
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    patch_size=14,
    projection_dim=768,
    hidden_act="quick_gelu",
)
# Vicuna / Llama text models. 32000 SentencePiece tokens + `<image>` + `<pad>`, padded to a multiple of 64.
VICUNA_7B = dict(
    model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5,
)
VICUNA_13B = dict(
    model_type="llama", hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
    vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5,
)

PRESETS = {
    # The paper: 224 px, linear projector, square (center-crop) images.
    "llava-v1-7b": dict(vision_config={**CLIP_VIT_L_14, "image_size": 224}, text_config=VICUNA_7B,
                        projector_type="linear", image_aspect_ratio="square"),
    "llava-v1-13b": dict(vision_config={**CLIP_VIT_L_14, "image_size": 224}, text_config=VICUNA_13B,
                         projector_type="linear", image_aspect_ratio="square"),
    # LLaVA-1.5: 336 px, two-layer GELU MLP, images padded to square with the mean color.
    "llava-v1.5-7b": dict(vision_config={**CLIP_VIT_L_14, "image_size": 336}, text_config=VICUNA_7B,
                          projector_type="mlp2x_gelu", image_aspect_ratio="pad"),
    "llava-v1.5-13b": dict(vision_config={**CLIP_VIT_L_14, "image_size": 336}, text_config=VICUNA_13B,
                           projector_type="mlp2x_gelu", image_aspect_ratio="pad"),
}
PRESETS["llava-v1"] = PRESETS["llava-v1-13b"]  # the paper's headline model is LLaVA-13B
PRESETS["llava-v1.5"] = PRESETS["llava-v1.5-13b"]


def projector_depth(projector_type: str) -> int:
    """Number of linear layers of a projector type: 1 for `linear`, N for `mlpNx_gelu`."""
    if projector_type == "linear":
        return 1
    match = _MLP_PATTERN.match(projector_type)
    if match is None or int(match.group(1)) < 1:
        raise ValueError(
            f"LlavaConfig.projector_type={projector_type!r} is not supported; allowed: 'linear' (the paper), "
            "'mlp2x_gelu' (LLaVA-1.5) or 'mlpNx_gelu' with N >= 1."
        )
    return int(match.group(1))


def num_image_tokens(vision_config, vision_feature_select_strategy: str) -> int:
    """Tokens one image becomes: one per patch, plus the CLS token when the strategy keeps it ('full')."""
    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    return patches + (1 if vision_feature_select_strategy == "full" else 0)


@strict
class TransformersLlavaConfig(PreTrainedConfig):
    r"""
    vision_config (`dict` or `PreTrainedConfig`): the vision tower (CLIP ViT-L/14 at 224 px by default).
    text_config (`dict` or `PreTrainedConfig`): the language model (Vicuna-13B-shaped Llama by default).
    image_token_index (`int`): id of the `<image>` placeholder token (alias `image_token_id`).
    image_seq_length (`int`): tokens per image; derived from the vision tower when left unset.
    projector_type (`str`): `"linear"` (the paper: `W z + b`) or `"mlp2x_gelu"` (LLaVA-1.5), or `"mlpNx_gelu"`.
    projector_hidden_act (`str`): activation between the MLP projector's layers.
    vision_feature_select_strategy (`"default"` | `"full"`): `"default"` drops the CLS token, as the paper does.
    vision_feature_layer (`int` or `list[int]`): hidden state(s) of the vision tower fed to the projector (-2 = the
        penultimate layer; a list concatenates several along the feature axis).
    multimodal_projector_bias (`bool`): whether the projector's layers have a bias.
    image_aspect_ratio (`"square"` | `"pad"`): how the processor fits images: CLIP's resize + center crop, or
        LLaVA-1.5's pad to a square with the mean color.
    """

    model_type = MODEL_TYPE
    attribute_map = {"image_token_id": "image_token_index"}
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="clip_vision_model",
            init_kwargs={k: v for k, v in {**CLIP_VIT_L_14, "image_size": 224}.items() if k != "model_type"},
        ),
        "text_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="llama",
            init_kwargs={k: v for k, v in VICUNA_13B.items() if k != "model_type"},
        ),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_index: int = 32000
    image_seq_length: int | None = None
    projector_type: str = "linear"
    projector_hidden_act: str = "gelu"
    vision_feature_select_strategy: Literal["default", "full"] = "default"
    vision_feature_layer: int | list[int] = -2
    multimodal_projector_bias: bool = True
    image_aspect_ratio: Literal["square", "pad"] = "square"
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # Several text models keep `tie_word_embeddings` in their own config; the composite model follows it.
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        if self.image_seq_length is None and hasattr(self.vision_config, "image_size"):
            self.image_seq_length = num_image_tokens(self.vision_config, self.vision_feature_select_strategy)

    def validate_architecture(self):
        """Fail at construction, naming the field and what is allowed."""
        super().validate_architecture()
        projector_depth(self.projector_type)
        layers = [self.vision_feature_layer] if isinstance(self.vision_feature_layer, int) else self.vision_feature_layer
        if not layers:
            raise ValueError("LlavaConfig.vision_feature_layer is an empty list; give at least one layer index.")
        depth = getattr(self.vision_config, "num_hidden_layers", None)
        if depth is not None:
            # hidden_states has depth + 1 entries: the embeddings, then one per layer.
            bad = [layer for layer in layers if not -(depth + 1) <= layer <= depth]
            if bad:
                raise ValueError(
                    f"LlavaConfig.vision_feature_layer={self.vision_feature_layer!r}: {bad} out of range for a "
                    f"vision tower with {depth} layers; allowed {-(depth + 1)}..{depth} (-2 = penultimate)."
                )

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "TransformersLlavaConfig":
        """The config of a released variant: `llava-v1[-7b|-13b]`, `llava-v1.5[-7b|-13b]`."""
        if name not in PRESETS:
            raise ValueError(f"Unknown LLaVA preset {name!r}; known presets: {sorted(PRESETS)}.")
        preset = {**PRESETS[name], **overrides}
        return cls(**preset)

    @property
    def num_feature_layers(self) -> int:
        return 1 if isinstance(self.vision_feature_layer, int) else len(self.vision_feature_layer)

# Loaded as a checkpoint's remote code (`trust_remote_code=True`) on a machine where transformers-llava is
# installed: the installed package is used, so one process never mixes two versions of these classes.
if not __name__.startswith("transformers_llava."):
    try:
        from transformers_llava.configuration_llava import TransformersLlavaConfig  # noqa: F811
    except ImportError:
        pass


__all__ = ["TransformersLlavaConfig", "PRESETS", "MODEL_TYPE"]
