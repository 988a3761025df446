"""`from_pretrained` for every supported layout: the loaders registered with the model and processor classes.

    from transformers_llava import LlavaForConditionalGeneration, LlavaProcessor
    model = LlavaForConditionalGeneration.from_pretrained("llava-v1.5-7b", vision_tower="clip-vit-large-patch14-336")
    model = LlavaForConditionalGeneration.from_pretrained("LLaVA-7b-delta-v0", base_model="llama-7b")
    model = LlavaForConditionalGeneration.from_pretrained("llava-1.5-7b-hf")            # llava-hf
    processor = LlavaProcessor.from_pretrained("llava-v1.5-7b", vision_tower="clip-vit-large-patch14-336")

Extra keyword arguments, for foreign layouts only: `base_model` (the language model a delta / LoRA / projector-only
release applies to), `vision_tower` (a local copy of the CLIP tower named by `mm_vision_tower`),
`conversation_format` (override the chat template chosen from the release name), `allow_pickle` (trust `.bin` files
that need more than plain tensors). Everything else (`dtype`, `device_map`, `attn_implementation`, ...) goes to
transformers' own loader, which receives the converted config and weights. `path` and `base_model` may be local
directories or Hub repositories (config.json is read first; the snapshot is fetched only for a foreign layout);
this package's own format takes transformers' usual path.
"""

import os
from pathlib import Path

from transformers import GenerationConfig

from ..chat_templates import STOP_STRINGS, load_chat_template
from .delta import apply_delta, check_not_delta
from .detect import Layout, detect_layout, is_foreign_config
from .hub import hub_arguments, resolve_directory
from .llava_hf import from_llava_hf, from_llava_hf_processor, our_generation_config
from .lora_release import lora_release_weights, projector_release_weights
from .original import convert_original, drop_stale_buffers, original_processor, release_tokenizer
from .safe_load import CheckpointError, check_safetensors_size, read_weights, weight_files
from .templates import conversation_format as release_conversation_format

OPTIONS = ("base_model", "vision_tower", "conversation_format", "allow_pickle")


def split_options(kwargs: dict) -> tuple[dict, dict]:
    """(this package's loading options, everything else)."""
    options = {name: kwargs.pop(name, None) for name in OPTIONS}
    options["allow_pickle"] = bool(options["allow_pickle"])
    return options, kwargs


def foreign_layout(path, options: dict, hub: dict, processor_only: bool = False) -> Layout | None:
    """The layout of `path` when it is a foreign one (a local directory or a Hub repository); None otherwise.

    `processor_only`: a directory without config.json is a processor saved on its own, not an unknown layout.
    """
    given = [name for name in ("base_model", "vision_tower", "conversation_format") if options[name] is not None]
    local = isinstance(path, (str, os.PathLike)) and resolve_directory(path, hub, wanted=is_foreign_config)
    if local and processor_only and not (local / "config.json").is_file():
        local = None
    if not local:
        if given and path is not None:
            raise CheckpointError(f"{', '.join(given)} given but {path} is neither a local checkpoint directory nor "
                                  "a Hub repository of an original LLaVA or llava-hf checkpoint.")
        return None
    layout = detect_layout(local, options["base_model"], name=Path(os.fspath(path)).name or None)
    if layout.kind == "ours":
        if given:
            raise CheckpointError(f"{', '.join(given)} apply to original LLaVA and llava-hf checkpoints; {path} is "
                                  "in this package's own format.")
        return None
    if layout.base_model is not None:
        layout.base_model = resolve_directory(options["base_model"], hub)
        if layout.base_model is None:
            raise CheckpointError(f"base_model={str(options['base_model'])!r} is neither a local directory nor a Hub "
                                  "repository that could be fetched.")
    return layout


def base_weights(layout: Layout, allow_pickle: bool) -> dict:
    files = weight_files(layout.base_model) if layout.base_model.is_dir() else []
    if not files:
        raise CheckpointError(
            f"base_model {layout.base_model} holds no model.safetensors / pytorch_model.bin (or sharded index); "
            "give the directory or Hub repository of the base language model."
        )
    return read_weights(files, allow_pickle, desc="Reading base shards")


def release_weights(layout: Layout, allow_pickle: bool = False, trust_remote_code: bool = False) -> dict:
    """The complete weights of an original release, with original key names."""
    if layout.kind == "original":
        weights = drop_stale_buffers(read_weights(weight_files(layout.path), allow_pickle))
        check_not_delta(weights, layout.path)
        return weights
    base = drop_stale_buffers(base_weights(layout, allow_pickle))
    if layout.kind == "original-delta":
        delta = read_weights(weight_files(layout.path), allow_pickle, desc="Reading delta shards")
        return apply_delta(drop_stale_buffers(delta), base, layout.path, layout.base_model)
    if layout.kind == "original-lora":
        return lora_release_weights(layout, base, allow_pickle, trust_remote_code)
    return projector_release_weights(layout, base, allow_pickle)


def release_generation_config(tokenizer, format_name: str) -> GenerationConfig:
    """Token ids from the release's tokenizer; the `###` stop string for the v0 format."""
    generation = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    if format_name in STOP_STRINGS:
        generation.stop_strings = STOP_STRINGS[format_name]
    return generation


def convert_layout(layout: Layout, options: dict, trust_remote_code: bool = False):
    """(our config, our state dict, generation config or None) for a foreign layout."""
    if layout.kind == "llava-hf":
        state = read_weights(weight_files(layout.path), options["allow_pickle"])
        config, state = from_llava_hf(layout.config, state, layout.path)
        has_generation = (layout.path / "generation_config.json").is_file()
        generation = GenerationConfig.from_pretrained(layout.path) if has_generation else None
        return config, state, our_generation_config(generation, layout.config)
    weights = release_weights(layout, options["allow_pickle"], trust_remote_code)
    tokenizer = release_tokenizer(layout, trust_remote_code)
    config, state = convert_original(layout, weights, tokenizer, options["vision_tower"], trust_remote_code)
    format_name = options["conversation_format"] or release_conversation_format(layout.name, layout.config)
    if "mm_vision_config" in layout.config and (layout.path / "generation_config.json").is_file():
        generation = GenerationConfig.from_pretrained(layout.path)  # written by original_writer.py
        return config, state, our_generation_config(generation, layout.config)
    return config, state, release_generation_config(tokenizer, format_name)


def load_own_format(cls, path, options: dict, args: tuple, rest: dict):
    """A local checkpoint in this package's format, when its weights need our reader: a truncated `.safetensors`
    fails naming the file and the sizes, `.bin` pickles load under our rules (`allow_pickle`), and `allow_pickle`
    itself is not passed on to transformers' loader (which would hand it to the model's constructor). None: let
    transformers load it as usual."""
    if "state_dict" in rest or not isinstance(path, (str, os.PathLike)) or not os.path.isdir(path):
        return None
    files = weight_files(path)
    for file in files:
        if file.suffix == ".safetensors":
            check_safetensors_size(file)
    if any(file.suffix == ".bin" for file in files):
        state = read_weights(files, options["allow_pickle"])
        config = rest.pop("config", None) or cls.config_class.from_pretrained(path)
        model = cls.from_pretrained(None, *args, config=config, state_dict=state, **rest)
        model.config._name_or_path = os.fspath(path)
        if (Path(path) / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(path)
        return model
    if options["allow_pickle"]:  # nothing to unpickle: load without the option
        return cls.from_pretrained(path, *args, **rest)
    return None


def load_foreign_model(cls, pretrained_model_name_or_path, *args, **kwargs):
    """Called by `LlavaForConditionalGeneration.from_pretrained`: a model for foreign layouts (or for our own format
    when its weights need our reader, see `load_own_format`), else None."""
    options, rest = split_options(kwargs)
    layout = foreign_layout(pretrained_model_name_or_path, options, hub_arguments(rest))
    if layout is None:
        return load_own_format(cls, pretrained_model_name_or_path, options, args, rest)
    config, state, generation = convert_layout(layout, options, rest.get("trust_remote_code", False))
    rest.pop("config", None)
    model = cls.from_pretrained(None, *args, config=config, state_dict=state, **rest)
    model.config._name_or_path = os.fspath(pretrained_model_name_or_path)
    if generation is not None:
        model.generation_config = generation
    return model


def load_foreign_processor(cls, pretrained_model_name_or_path, **kwargs):
    """Called by `LlavaProcessor.from_pretrained`: a processor for foreign layouts, else None."""
    options, rest = split_options(kwargs)
    layout = foreign_layout(pretrained_model_name_or_path, options, hub_arguments(rest), processor_only=True)
    if layout is None:  # this package's format; `allow_pickle` only concerns weights
        return cls.from_pretrained(pretrained_model_name_or_path, **rest) if options["allow_pickle"] else None
    format_name = options["conversation_format"]
    trust_remote_code = rest.get("trust_remote_code", False)
    if layout.kind == "llava-hf":
        template = load_chat_template(format_name) if format_name else None
        return from_llava_hf_processor(layout.path, layout.config, template, trust_remote_code=trust_remote_code)
    tokenizer = release_tokenizer(layout, trust_remote_code)
    return original_processor(layout, tokenizer, options["vision_tower"], format_name, trust_remote_code)


__all__ = ["load_foreign_model", "load_foreign_processor", "release_weights", "convert_layout", "OPTIONS"]
