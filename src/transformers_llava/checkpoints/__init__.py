"""Checkpoints in every layout LLaVA has been released in, loaded directly, and written as llava-hf or ours.

`LlavaForConditionalGeneration.from_pretrained` and `LlavaProcessor.from_pretrained` call its loaders, and
`save_pretrained` writes the checkpoint's model card and training record with it:

    from transformers_llava import LlavaForConditionalGeneration, LlavaProcessor
    model = LlavaForConditionalGeneration.from_pretrained("llava-v1.5-7b", vision_tower="clip-vit-large-patch14-336")
    processor = LlavaProcessor.from_pretrained("llava-v1.5-7b", vision_tower="clip-vit-large-patch14-336")

    from transformers_llava.checkpoints import save_llava_hf
    save_llava_hf(model, processor, "llava-v1.5-7b-hf")   # vanilla transformers loads it; llava-hf layout

Command line: `transformers-llava convert SRC DST --to llava-hf|original|ours` (see `checkpoints/cli.py`).
"""

from .detect import KINDS, Layout, UnknownLayoutError, detect_layout
from .loaders import load_foreign_model, load_foreign_processor
from .model_card import record_evaluation, write_checkpoint_files, write_model_card
from .safe_load import CheckpointError
from .training_record import kept_out_of_config, provenance, read_training_record, set_provenance
from .original_writer import save_original
from .writer import save_llava_hf, save_ours

__all__ = [
    "detect_layout",
    "Layout",
    "KINDS",
    "CheckpointError",
    "UnknownLayoutError",
    "save_llava_hf",
    "save_ours",
    "save_original",
    "load_foreign_model",
    "load_foreign_processor",
    "write_checkpoint_files",
    "write_model_card",
    "record_evaluation",
    "read_training_record",
    "provenance",
    "set_provenance",
    "kept_out_of_config",
]
