"""Checkpoints in every layout LLaVA has been released in, loaded directly, and written as llava-hf or ours.

Importing `transformers_llava` imports this package, which registers its loaders with
`LlavaForConditionalGeneration.from_pretrained` and `LlavaProcessor.from_pretrained`:

    from transformers_llava import LlavaForConditionalGeneration, LlavaProcessor
    model = LlavaForConditionalGeneration.from_pretrained("llava-v1.5-7b", vision_tower="clip-vit-large-patch14-336")
    processor = LlavaProcessor.from_pretrained("llava-v1.5-7b", vision_tower="clip-vit-large-patch14-336")

    from transformers_llava.checkpoints import save_llava_hf
    save_llava_hf(model, processor, "llava-v1.5-7b-hf")   # vanilla transformers loads it; llava-hf layout

Command line: `transformers-llava convert SRC DST --to llava-hf` (see `checkpoints/cli.py`).
"""

from ..modeling_llava import FOREIGN_CHECKPOINT_LOADERS
from ..processing_llava import FOREIGN_PROCESSOR_LOADERS
from .detect import KINDS, Layout, UnknownLayoutError, detect_layout
from .loaders import load_foreign_model, load_foreign_processor
from .safe_load import CheckpointError
from .writer import save_llava_hf, save_ours

if load_foreign_model not in FOREIGN_CHECKPOINT_LOADERS:
    FOREIGN_CHECKPOINT_LOADERS.append(load_foreign_model)
if load_foreign_processor not in FOREIGN_PROCESSOR_LOADERS:
    FOREIGN_PROCESSOR_LOADERS.append(load_foreign_processor)

__all__ = [
    "detect_layout",
    "Layout",
    "KINDS",
    "CheckpointError",
    "UnknownLayoutError",
    "save_llava_hf",
    "save_ours",
]
