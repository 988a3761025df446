"""Original LLaVA releases through transformers' Auto classes and `pipeline`, beside the built-in llava-hf checkpoints.

    import transformers_llava
    from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline
    model = AutoModelForImageTextToText.from_pretrained("llava-v1.5-13b")   # original release: this package's model
    processor = AutoProcessor.from_pretrained("llava-v1.5-13b")
    pipe = pipeline("image-text-to-text", model="llava-v1.5-13b")
    model = AutoModelForImageTextToText.from_pretrained("llava-hf/llava-1.5-7b-hf")  # llava-hf: the built-in, unchanged

An original release's config.json is a flat Llama config with `mm_*` keys and `model_type` "llava" (v1, v1.5) or
"llava_llama" (later releases). `llava_llama` is not a transformers type, so it is registered with `AutoConfig`.
`llava` is the built-in's type: `AutoConfig` reads a `model_type` straight from the registry and calls
`from_dict`, so the registered entry for `llava` is `LlavaConfigByLayout`, which hands llava-hf dicts (nested
`vision_config` / `text_config`) to the built-in `LlavaConfig.from_dict` untouched, and the flat `mm_*` dicts to
`LlavaReleaseConfig`. Constructing it directly (`AutoConfig.for_model("llava", ...)`) gives the built-in config.

`LlavaReleaseConfig` holds the release's keys as they are; it routes the Auto classes to this package's loaders,
which convert the release (tower config, tokenizer, weights) exactly as `LlavaForConditionalGeneration.
from_pretrained` does, and return this package's classes. It cannot build a model by itself (`from_config`): that
fails before allocating anything, naming the call that works.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor, PreTrainedConfig
from transformers import LlavaConfig as BuiltinLlavaConfig

from ..modeling_llava import TransformersLlavaForConditionalGeneration, TransformersLlavaModel
from ..processing_llava import TransformersLlavaProcessor
from .detect import is_original_config

WORKING_CALL = (
    "load it with `AutoModelForImageTextToText.from_pretrained(path)` (or `transformers_llava."
    "LlavaForConditionalGeneration.from_pretrained(path)`), which converts the release"
)


class LlavaReleaseConfig(PreTrainedConfig):
    """config.json of an original LLaVA release, as `AutoConfig` reads it: the release's own keys, unconverted."""

    model_type = "llava_llama"


class LlavaConfigByLayout(BuiltinLlavaConfig):
    """The `AutoConfig` entry for model_type "llava": llava-hf dicts -> the built-in `LlavaConfig`, original
    releases (flat, with `mm_*` keys) -> `LlavaReleaseConfig`. Never an instance of its own."""

    def __new__(cls, *args, **kwargs):
        return BuiltinLlavaConfig(*args, **kwargs)

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        if is_original_config(config_dict):
            return LlavaReleaseConfig.from_dict(config_dict, **kwargs)
        return BuiltinLlavaConfig.from_dict(config_dict, **kwargs)


def _release_only(cls):
    raise ValueError(
        f"{cls.__name__} cannot be built from an original LLaVA release's config alone (its sizes are in the vision "
        f"tower named by mm_vision_tower and in the tokenizer); {WORKING_CALL}."
    )


class LlavaReleaseForConditionalGeneration(TransformersLlavaForConditionalGeneration):
    """What `AutoModelForImageTextToText` maps a release config to: loading returns this package's model."""

    config_class = LlavaReleaseConfig

    def __init__(self, config, *args, **kwargs):
        _release_only(type(self))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        kwargs.pop("config", None)  # the release config; the loader converts the release itself
        return TransformersLlavaForConditionalGeneration.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


class LlavaReleaseModel(TransformersLlavaModel):
    """What `AutoModel` maps a release config to: loading returns this package's backbone."""

    config_class = LlavaReleaseConfig

    def __init__(self, config, *args, **kwargs):
        _release_only(type(self))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        kwargs.pop("config", None)
        return TransformersLlavaModel.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


def register() -> None:
    """Called once by `import transformers_llava`."""
    AutoConfig.register("llava_llama", LlavaReleaseConfig, exist_ok=True)
    AutoConfig.register("llava", LlavaConfigByLayout, exist_ok=True)
    AutoModel.register(LlavaReleaseConfig, LlavaReleaseModel, exist_ok=True)
    AutoModelForImageTextToText.register(LlavaReleaseConfig, LlavaReleaseForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(LlavaReleaseConfig, TransformersLlavaProcessor, exist_ok=True)


__all__ = ["LlavaReleaseConfig", "LlavaConfigByLayout", "register"]
