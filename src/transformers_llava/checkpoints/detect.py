"""Which checkpoint layout a directory holds, read from its config.json and file names (no weights are loaded).

    from transformers_llava.checkpoints.detect import detect_layout
    layout = detect_layout("path/to/llava-v1.5-7b")        # Layout(kind="original", ...)
    layout = detect_layout("path/to/delta", base_model="path/to/llama-7b")   # kind="original-delta"

Kinds:
- `ours`: this package's own format (`model_type` "transformers_llava").
- `llava-hf`: transformers' built-in llava layout (`model_type` "llava" with nested `vision_config` / `text_config`),
  what vLLM, SGLang and TGI read.
- `original`: an original LLaVA release (v0 / v1 / v1.5): a flat Llama config with `mm_*` keys and full weights.
- `original-delta`: the same layout holding delta weights (the v0 release), applied to `base_model`.
- `original-lora`: a LoRA release: `adapter_config.json` + adapter weights + `non_lora_trainables.bin`, on `base_model`.
- `original-projector`: a stage-1 output: `mm_projector.bin` (+ config), on `base_model`.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from ..configuration_llava import MODEL_TYPE
from .safe_load import CheckpointError, first_file, read_json, weight_files

# model_type of the original releases -> the text model family inside them
ORIGINAL_MODEL_TYPES = {"llava": "llama", "llava_llama": "llama"}
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
PROJECTOR_FILES = ("mm_projector.safetensors", "mm_projector.bin")
NON_LORA_FILES = ("non_lora_trainables.safetensors", "non_lora_trainables.bin")
KINDS = ("ours", "llava-hf", "original", "original-delta", "original-lora", "original-projector")


class UnknownLayoutError(CheckpointError):
    """A directory or a set of weights in no layout this package reads; the message says what was expected."""


@dataclass
class Layout:
    kind: str
    path: Path
    config: dict
    base_model: Path | None = None
    release_name: str | None = None

    @property
    def name(self) -> str:
        """The release name (repository or directory name): the original code chose the conversation format by it."""
        return self.release_name or self.path.absolute().name


def is_original_config(config: dict) -> bool:
    return "mm_vision_tower" in config and "vision_config" not in config and "text_config" not in config


def is_llava_hf_config(config: dict) -> bool:
    return config.get("model_type") == "llava" and ("vision_config" in config or "text_config" in config)


def is_foreign_config(config: dict) -> bool:
    """A config.json of a layout this package converts (llava-hf or an original release)."""
    return is_llava_hf_config(config) or is_original_config(config)


def detect_layout(
    path: str | os.PathLike, base_model: str | os.PathLike | None = None, name: str | None = None
) -> Layout:
    """The layout of a local checkpoint directory; raises `UnknownLayoutError` saying what was expected.

    `name` is the release name when the directory's own name is not (a Hub snapshot is named by its commit).
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory; checkpoints are read from local directories.")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise UnknownLayoutError(
            f"{path} has no config.json; every supported layout has one. Files found: {_listing(path)}."
        )
    config = read_json(config_path)
    model_type = config.get("model_type")
    if model_type == MODEL_TYPE:
        kind = "ours"
    elif is_llava_hf_config(config):
        kind = "llava-hf"
    elif is_original_config(config):
        _check_original_supported(path, config)
        kind = _original_kind(path, base_model)
    else:
        raise UnknownLayoutError(
            f"{config_path}: not a LLaVA checkpoint this package reads. Expected model_type {MODEL_TYPE!r} (this "
            "package), 'llava' with vision_config/text_config (llava-hf), or 'llava'/'llava_llama' with "
            f"mm_vision_tower (original LLaVA); found model_type {model_type!r} with keys {sorted(config)[:12]}."
        )
    if base_model is not None and not kind.startswith("original-"):
        raise CheckpointError(
            f"base_model={os.fspath(base_model)!r} applies to original LLaVA delta, LoRA and projector-only releases; "
            f"{path} is a complete {kind} checkpoint."
        )
    return Layout(kind, path, config, Path(base_model) if base_model is not None else None, name)


def _check_original_supported(path: Path, config: dict) -> None:
    model_type = config.get("model_type")
    if model_type not in ORIGINAL_MODEL_TYPES:
        raise UnknownLayoutError(
            f"{path}: original LLaVA with model_type {model_type!r} is not supported; supported: "
            f"{', '.join(sorted(ORIGINAL_MODEL_TYPES))} (Llama-family language models)."
        )
    aspect = config.get("image_aspect_ratio", "square")
    merge = config.get("mm_patch_merge_type", "flat")
    if aspect not in ("square", "pad") or merge != "flat":
        raise UnknownLayoutError(
            f"{path}: image_aspect_ratio={aspect!r}, mm_patch_merge_type={merge!r} is LLaVA-NeXT (v1.6) any-resolution "
            "tiling, which this model does not implement; supported: image_aspect_ratio 'square' or 'pad' with 'flat'."
        )
    resampler = config.get("mm_resampler_type")
    if resampler not in (None, "none"):
        raise UnknownLayoutError(f"{path}: mm_resampler_type={resampler!r} is not supported (LLaVA has none).")


def _original_kind(path: Path, base_model) -> str:
    has_weights = bool(weight_files(path))
    if first_file(path, ADAPTER_FILES) is not None:
        kind = "original-lora"
    elif has_weights:
        kind = "original-delta" if base_model is not None else "original"
    elif first_file(path, PROJECTOR_FILES) is not None:
        kind = "original-projector"
    else:
        raise UnknownLayoutError(
            f"{path}: an original LLaVA config but no weights. Expected model.safetensors / pytorch_model.bin (or "
            f"their sharded index), adapter_model.* (LoRA release) or mm_projector.bin (stage-1 output); found "
            f"{_listing(path)}."
        )
    if kind != "original" and base_model is None:
        what = "LoRA" if kind == "original-lora" else "projector-only (stage-1)"
        raise CheckpointError(
            f"{path} is a {what} release: it holds only part of a model. Pass base_model='path/to/base-llm' (CLI: "
            "--base-model), the language model it was trained on"
            + _adapter_base_hint(path) + "."
        )
    return kind


def _adapter_base_hint(path: Path) -> str:
    adapter_config = path / "adapter_config.json"
    if adapter_config.is_file():
        base = read_json(adapter_config).get("base_model_name_or_path")
        if base:
            return f" (adapter_config.json names {base!r})"
    return ""


def _listing(path: Path, limit: int = 15) -> str:
    names = sorted(entry.name for entry in path.iterdir())
    shown = ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")
    return shown or "nothing"


def unexpected_keys_error(source, unexpected: list[str], expected: list[str]) -> UnknownLayoutError:
    """An error naming the keys found that fit no expected pattern, and the patterns."""
    unexpected = sorted(unexpected)
    return UnknownLayoutError(
        f"{source}: {len(unexpected)} tensors fit no known key of this layout (e.g. {', '.join(unexpected[:5])}). "
        f"Expected keys: {'; '.join(expected)}."
    )


__all__ = ["Layout", "detect_layout", "is_foreign_config", "UnknownLayoutError", "KINDS", "unexpected_keys_error"]
