"""Writing a loaded LLaVA as a checkpoint directory: this package's format or llava-hf, sharded safetensors.

    from transformers_llava.checkpoints.writer import save_ours, save_llava_hf
    save_llava_hf(model, processor, "out/llava-hf", max_shard_size="5GB")   # vanilla transformers loads this
    save_ours(model, processor, "out/ours")

`save_ours` is the model's own `save_pretrained` (module names, `auto_map` and source files for
`trust_remote_code=True`, the model card) into a directory that holds no weights yet. `save_llava_hf` writes the
weights shard by shard with a progress bar, tied tensors once, under the names of the llava-hf repositories on the
Hub.
"""

import copy
import json
import os
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .engine_prompts import adds_bos, stop_token_ids
from .llava_hf import EXTRA_KEY, engine_generation_config, file_keys, to_llava_hf, to_llava_hf_processor
from .safe_load import SAFE_INDEX, CheckpointError


def prepare_directory(directory: str | os.PathLike) -> Path:
    """Create `directory`; refuse one that already holds weights (shards of two models must never mix)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    existing = sorted(p.name for p in directory.iterdir() if p.suffix in (".safetensors", ".bin"))
    if existing:
        raise CheckpointError(
            f"{directory} already holds weights ({', '.join(existing[:3])}); write into an empty directory."
        )
    return directory


def write_weights(
    state: dict[str, torch.Tensor], directory: Path, max_shard_size: int | str = "5GB", progress: bool | None = None
) -> list[Path]:
    """`state` as `model.safetensors` or `model-0000i-of-0000n.safetensors` + index; returns the files written."""
    split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_size)
    shards = split.filename_to_tensors
    show = len(shards) > 1 if progress is None else progress
    written = []
    for filename, names in tqdm(shards.items(), desc="Writing shards", unit="shard", disable=not show):
        tensors = {name: state[name].detach().to("cpu").contiguous() for name in names}
        save_file(tensors, directory / filename, metadata={"format": "pt"})
        written.append(directory / filename)
    if split.is_sharded:
        index = {"metadata": {"total_size": split.metadata["total_size"]}, "weight_map": split.tensor_to_filename}
        (directory / SAFE_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return written


def untied_state(model) -> dict[str, torch.Tensor]:
    """The model's tensors with the output embedding left out when it is tied to the input embedding."""
    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    return state


def save_ours(model, processor, directory, max_shard_size: int | str = "5GB", progress: bool | None = None) -> Path:
    """This package's format, written by the model's own `save_pretrained` — config with `auto_map` and source
    files for `trust_remote_code`, generation config, weights, model card (it shows its own progress bar, so
    `progress` only matters to `save_llava_hf`) — and the processor."""
    directory = prepare_directory(directory)
    config = model.config
    model.config = copy.deepcopy(config)  # saving adds auto_map etc.; the caller's model is left as it was
    try:
        model.save_pretrained(directory, max_shard_size=max_shard_size)
    finally:
        model.config = config
    if processor is not None:
        processor.save_pretrained(directory)
    return directory


def save_llava_hf(model, processor, directory, max_shard_size: int | str = "5GB", progress: bool | None = None) -> Path:
    """transformers' llava layout: `LlavaForConditionalGeneration` + `LlavaProcessor`, no code of this package.

    Written for the serving engines too (see `engine_prompts.py`, `linear_projector.py`): the chat template writes
    the BOS and the tokenizer adds none, and the stop strings are listed as stop token ids in `eos_token_id`.
    """
    directory = prepare_directory(directory)
    notes = []
    hf_config, state = to_llava_hf(model.config, untied_state(model), notes)
    for note in notes:
        print(f"note: {note}")
    hf_config.dtype = str(model.dtype).removeprefix("torch.")
    extra = getattr(hf_config, EXTRA_KEY)
    generation = model.generation_config
    if processor is not None:
        hf_processor, extra["chat_template_bos_prefix"] = to_llava_hf_processor(processor)
        if extra["chat_template_bos_prefix"] is None and adds_bos(processor.tokenizer):
            print("note: the chat template could not write the BOS with the same tokens as ours; the tokenizer adds "
                  "it, so engines that tokenise chat prompts with add_special_tokens=False (vLLM's chat endpoint) "
                  "must be asked to add it (vLLM: \"add_special_tokens\": true in the request).")
        stops = stop_token_ids(processor.tokenizer, getattr(generation, "stop_strings", None))
        if stops:
            extra.update(stop_token_ids=stops, eos_token_id=generation.eos_token_id)
            generation = engine_generation_config(generation, stops)
    hf_config.save_pretrained(directory)
    generation.save_pretrained(directory)
    write_weights(file_keys(state), directory, max_shard_size, progress)
    if processor is not None:
        hf_processor.save_pretrained(directory)
        if extra["chat_template_bos_prefix"]:
            # transformers 5 keeps this in tokenizer.json's post-processor only; 4.x's LlamaTokenizerFast (older
            # engine installs) rebuilds the post-processor from this key and defaults it to true.
            config_path = directory / "tokenizer_config.json"
            tokenizer_config = json.loads(config_path.read_text(encoding="utf-8"))
            config_path.write_text(json.dumps({**tokenizer_config, "add_bos_token": False}, indent=2) + "\n",
                                   encoding="utf-8")
    return directory


__all__ = ["save_ours", "save_llava_hf", "write_weights", "prepare_directory"]
