"""transformers-llava: LLaVA (Visual Instruction Tuning, Liu et al. 2023) as a Hugging Face Transformers plugin.

Importing the package is the whole setup: it registers LLaVA with the Auto classes (`AutoConfig`, `AutoModel`,
`AutoModelForImageTextToText`, `AutoImageProcessor`, `AutoProcessor`) under its own model type, so transformers'
built-in `llava` keeps working unchanged beside it.

    import transformers_llava
    from transformers import AutoModelForImageTextToText, AutoProcessor
    model = AutoModelForImageTextToText.from_pretrained("path/to/checkpoint")
    processor = AutoProcessor.from_pretrained("path/to/checkpoint")

The public names mirror transformers' (`LlavaConfig`, `LlavaForConditionalGeneration`, ...); the classes behind them
are named `TransformersLlava*` so that names written into saved files never resolve to the built-in classes.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from .builder import build_llava
from .chat import LlavaChat
from .chat_templates import load_chat_template
from .configuration_llava import MODEL_TYPE, PRESETS, TransformersLlavaConfig
from .image_processing_llava import ImageLoadError, TransformersLlavaImageProcessor
from .modeling_llava import (
    TransformersLlavaForConditionalGeneration,
    TransformersLlavaModel,
    TransformersLlavaPreTrainedModel,
)
from .packed_attention import PACKED_SDPA
from .processing_llava import TransformersLlavaProcessor

__version__ = "0.1.0"

LlavaConfig = TransformersLlavaConfig
LlavaPreTrainedModel = TransformersLlavaPreTrainedModel
LlavaModel = TransformersLlavaModel
LlavaForConditionalGeneration = TransformersLlavaForConditionalGeneration
LlavaProcessor = TransformersLlavaProcessor
LlavaImageProcessor = TransformersLlavaImageProcessor


def _register() -> None:
    AutoConfig.register(MODEL_TYPE, TransformersLlavaConfig, exist_ok=True)
    AutoModel.register(TransformersLlavaConfig, TransformersLlavaModel, exist_ok=True)
    AutoModelForImageTextToText.register(
        TransformersLlavaConfig, TransformersLlavaForConditionalGeneration, exist_ok=True
    )
    AutoImageProcessor.register(
        TransformersLlavaConfig, image_processor_classes={"pil": TransformersLlavaImageProcessor}, exist_ok=True
    )
    AutoProcessor.register(TransformersLlavaConfig, TransformersLlavaProcessor, exist_ok=True)
    # Saved checkpoints carry `auto_map` and these classes' source files, so machines without this package can
    # load them with `trust_remote_code=True`.
    TransformersLlavaConfig.register_for_auto_class("AutoConfig")
    TransformersLlavaModel.register_for_auto_class("AutoModel")
    TransformersLlavaForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
    TransformersLlavaImageProcessor.register_for_auto_class("AutoImageProcessor")
    TransformersLlavaProcessor.register_for_auto_class("AutoProcessor")


_register()

from .checkpoints import auto_classes as _auto_classes  # noqa: E402

_auto_classes.register()  # original releases through AutoConfig / AutoModel* / AutoProcessor / pipeline

__all__ = [
    "LlavaConfig",
    "LlavaPreTrainedModel",
    "LlavaModel",
    "LlavaForConditionalGeneration",
    "LlavaProcessor",
    "LlavaImageProcessor",
    "ImageLoadError",
    "PRESETS",
    "build_llava",
    "LlavaChat",
    "load_chat_template",
    "PACKED_SDPA",
]
