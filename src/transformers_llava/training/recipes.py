"""Training recipes as data: a YAML file -> a validated `Recipe`, with clear errors for every field.

    recipe = load_recipe("examples/llava_v1_stage1.yaml", overrides=["training.max_steps=10"], num_processes=8)
    recipe.gradient_accumulation_steps      # global batch / (per-device batch x processes)
    recipe.identity()                       # what makes two runs "the same run" (see `IGNORED_IN_IDENTITY`)

A recipe has four sections (`model`, `data`, `training`, `lora`) plus the `stage`; every key is checked against the
schema below (unknown keys, wrong types, impossible combinations), and each error names the file, the key and the
values involved. Numbers such as `2e-5` are read as floats (YAML 1.1 reads them as strings). `--override` values
are parsed as YAML too: `training.learning_rate=1e-4`, `data.streaming=true`, `model.checkpoint=null`.
"""

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from ..chat_templates import FORMATS
from ..configuration_llava import projector_depth
from .stages import STAGES


class RecipeError(ValueError):
    """A recipe that cannot run, with the file and the key at fault."""


@dataclass
class ModelSection:
    """Either two pretrained towers joined by a fresh projector (stage 1), or a LLaVA checkpoint to continue."""

    vision_tower: str | None = None  # e.g. openai/clip-vit-large-patch14 (with language_model)
    language_model: str | None = None  # e.g. lmsys/vicuna-13b-v1.3
    checkpoint: str | None = None  # a LLaVA checkpoint: stage 1's output for stage 2 / LoRA
    # Only when building from towers (a checkpoint brings its own):
    projector_type: str | None = None  # linear (the paper) | mlp2x_gelu (v1.5)
    conversation_format: str | None = None  # the processor's chat template: llava_v1, vicuna_v1, ...
    image_aspect_ratio: Literal["square", "pad"] | None = None
    vision_feature_layer: int | None = None
    dtype: Literal["float32", "bfloat16", "auto"] = "float32"  # weights as loaded; bf16 training is autocast


@dataclass
class DataSection:
    format: Literal["llava_json", "captions", "scienceqa"]
    path: str  # llava_json / captions: the JSON(L) file; scienceqa: the folder with problems.json, pid_splits.json
    image_folder: str | None = None
    split: str | None = None  # scienceqa only (default train)
    prompt_format: str | None = None  # scienceqa only (default QCM-LEPA: reasoning before the answer)
    chat_template: str | None = None  # train in another format than the model's, e.g. plain (v1.5 stage 1)
    max_length: int = 2048  # longer samples are dropped (or fail): image tokens are never cut
    on_invalid: Literal["fail", "skip"] = "skip"
    on_too_long: Literal["drop", "fail"] = "drop"
    streaming: bool = False  # needs training.max_steps


@dataclass
class TrainingSection:
    output_dir: str
    global_batch_size: int  # per-device batch x processes x gradient accumulation
    per_device_batch_size: int
    learning_rate: float
    num_train_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides num_train_epochs
    projector_lr: float | None = None  # the projector's own rate (the original's mm_projector_lr)
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    optim: str = "adamw_torch"
    bf16: bool = True
    gradient_checkpointing: bool = True
    padding_free: bool = False  # pack each batch into one row (positions restart per sample): no padding computed
    group_by_modality_length: bool = False  # every optimizer step from one modality (LLaVA-1.5); not with streaming
    seed: int = 42
    save_steps: int = 500
    save_total_limit: int | None = 1
    logging_steps: int = 1
    dataloader_num_workers: int = 4
    report_to: str = "none"


@dataclass
class LoraSection:
    r: int = 128
    alpha: int = 256
    dropout: float = 0.05


@dataclass
class Recipe:
    stage: Literal["stage1", "stage2", "lora"]
    model: ModelSection
    data: DataSection
    training: TrainingSection
    lora: LoraSection | None = None
    source: str = field(default="<dict>", compare=False)
    num_processes: int = field(default=1, compare=False)

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.training.global_batch_size // (self.training.per_device_batch_size * self.num_processes)

    def to_dict(self) -> dict:
        """The recipe's settings (without where it was read from)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.compare}

    def identity(self) -> str:
        """A hash of every setting that changes the trained weights: equal for a rerun of the same run."""
        settings = self.to_dict()
        for dotted in IGNORED_IN_IDENTITY:
            section, key = dotted.split(".")
            settings[section].pop(key, None)
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


# Settings a resumed run may change without becoming a different run: they do not touch the weights.
IGNORED_IN_IDENTITY = ("training.output_dir", "training.save_steps", "training.save_total_limit",
                       "training.logging_steps", "training.dataloader_num_workers", "training.report_to")
SECTIONS = {"model": ModelSection, "data": DataSection, "training": TrainingSection, "lora": LoraSection}


def _plain(value):
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def _describe(annotation) -> str:
    if typing.get_origin(annotation) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(annotation))
    return "null" if annotation is type(None) else annotation.__name__


def _coerce(value, annotation, where: str):
    """`value` as the type `annotation` names, or a RecipeError saying what was expected."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _coerce(value, option, where)
            except RecipeError:
                continue
    elif origin is Literal:
        if value in typing.get_args(annotation):
            return value
    elif annotation is type(None):
        if value is None:
            return None
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 2e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
    raise RecipeError(f"{where}: expected {_describe(annotation)}, got {value!r} ({type(value).__name__})")


def _build(cls, values, where: str):
    """A section dataclass from a mapping: unknown keys, missing keys and wrong types are errors."""
    if not isinstance(values, dict):
        raise RecipeError(f"{where}: expected a mapping of keys, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.compare}
    hints = typing.get_type_hints(cls)
    for key in values:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(fields)}"
            raise RecipeError(f"{where}: unknown key {key!r}{hint}")
    missing = [name for name, f in fields.items() if name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise RecipeError(f"{where}: missing required key(s) {', '.join(missing)}")
    return cls(**{key: _coerce(value, hints[key], f"{where}.{key}") for key, value in values.items()})


def apply_override(raw: dict, override: str) -> None:
    """`section.key=value` (value parsed as YAML) into the raw recipe mapping."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--override {override!r}: expected KEY=VALUE, e.g. training.max_steps=10")
    *parents, leaf = key.strip().split(".")
    target = raw
    for part in parents:
        if target.get(part) is None:
            target[part] = {}
        target = target[part]
        if not isinstance(target, dict):
            raise RecipeError(f"--override {override!r}: {part!r} is not a section")
    target[leaf] = yaml.safe_load(text) if text.strip() else None


def recipe_from_dict(raw: dict, source: str = "<dict>", num_processes: int = 1) -> Recipe:
    """Build and validate a recipe from its mapping (as read from YAML)."""
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a recipe is a mapping with keys stage, model, data, training (and lora)")
    known = {"stage", *SECTIONS}
    unknown = [key for key in raw if key not in known]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(sorted(known))}"
        raise RecipeError(f"{source}: unknown key {unknown[0]!r}{hint}")
    for key in ("stage", "model", "data", "training"):
        if key not in raw:
            raise RecipeError(f"{source}: missing required key {key!r}")
    stage = raw["stage"]
    if stage not in STAGES:
        raise RecipeError(f"{source}: stage: expected one of {', '.join(STAGES)}, got {stage!r}")
    lora = raw.get("lora")
    if stage == "lora" and lora is None:
        lora = {}
    sections = {name: _build(cls, raw[name] if name != "lora" else lora, f"{source}: {name}")
                for name, cls in SECTIONS.items() if name != "lora" or lora is not None}
    recipe = Recipe(stage=stage, **sections, source=source, num_processes=num_processes)
    check_recipe(recipe)
    return recipe


def load_recipe(path, overrides: list[str] = (), num_processes: int = 1) -> Recipe:
    """Read, override and validate a YAML recipe for a run on `num_processes` processes."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML: {error}") from error
    for override in overrides:
        apply_override(raw, override)
    return recipe_from_dict(raw, str(path), num_processes)


def _fail(recipe: Recipe, message: str):
    raise RecipeError(f"{recipe.source}: {message}")


def check_recipe(recipe: Recipe) -> None:
    """Checks across keys: what a type alone cannot say."""
    model, data, training = recipe.model, recipe.data, recipe.training
    towers = model.vision_tower is not None or model.language_model is not None
    if bool(model.checkpoint) == towers:
        _fail(recipe, "model: give either checkpoint (continue a LLaVA) or vision_tower and language_model (build a "
                      f"new one), not {'both' if towers else 'neither'}")
    if towers and not (model.vision_tower and model.language_model):
        _fail(recipe, "model: building a LLaVA needs both vision_tower and language_model")
    build_only = [k for k in ("projector_type", "conversation_format", "image_aspect_ratio", "vision_feature_layer")
                  if getattr(model, k) is not None]
    if model.checkpoint and build_only:
        _fail(recipe, f"model.{build_only[0]} only applies when building from towers; the checkpoint "
                      f"{model.checkpoint} brings its own")
    if model.projector_type is not None:
        try:
            projector_depth(model.projector_type)
        except ValueError as error:
            _fail(recipe, f"model.projector_type: {error}")
    for where, name in (("model.conversation_format", model.conversation_format),
                        ("data.chat_template", data.chat_template)):
        if name is not None and name not in FORMATS:
            _fail(recipe, f"{where}: unknown conversation format {name!r}; known: {', '.join(FORMATS)}")
    if recipe.stage == "lora" and not model.checkpoint:
        _fail(recipe, "stage lora needs model.checkpoint: the LLaVA the adapter applies to (e.g. stage 1's output), "
                      "so that the saved adapter can find its base model")
    if recipe.lora is not None and recipe.stage != "lora":
        _fail(recipe, f"a lora section is only used by stage lora, not {recipe.stage}")
    scienceqa_only = [k for k in ("split", "prompt_format") if getattr(data, k) is not None]
    if data.format != "scienceqa" and scienceqa_only:
        _fail(recipe, f"data.{scienceqa_only[0]} only applies to data.format scienceqa, not {data.format}")
    if data.format == "scienceqa" and data.prompt_format is not None:
        from ..formats.scienceqa import parse_prompt_format

        try:
            parse_prompt_format(data.prompt_format)
        except ValueError as error:
            _fail(recipe, f"data.prompt_format: {error}")
    if data.streaming and training.max_steps <= 0:
        _fail(recipe, "data.streaming needs training.max_steps > 0: a stream has no length to count epochs by")
    if data.streaming and training.group_by_modality_length:
        _fail(recipe, "training.group_by_modality_length needs the whole dataset to order; it cannot be combined "
                      "with data.streaming=true")
    positive = {"data.max_length": data.max_length, "training.global_batch_size": training.global_batch_size,
                "training.per_device_batch_size": training.per_device_batch_size,
                "training.learning_rate": training.learning_rate, "training.save_steps": training.save_steps,
                "training.logging_steps": training.logging_steps}
    if training.max_steps <= 0:
        positive["training.num_train_epochs"] = training.num_train_epochs
    for key, value in positive.items():
        if value <= 0:
            _fail(recipe, f"{key} must be > 0, got {value}")
    if not 0 <= training.warmup_ratio < 1:
        _fail(recipe, f"training.warmup_ratio must be in [0, 1), got {training.warmup_ratio}")
    per_step = training.per_device_batch_size * recipe.num_processes
    if training.global_batch_size % per_step:
        _fail(recipe, f"training.global_batch_size={training.global_batch_size} is not divisible by "
                      f"per_device_batch_size={training.per_device_batch_size} x {recipe.num_processes} process(es) "
                      f"= {per_step}; the gradient accumulation steps would not be a whole number")
    if recipe.lora is not None and min(recipe.lora.r, recipe.lora.alpha) <= 0:
        _fail(recipe, f"lora.r and lora.alpha must be > 0, got r={recipe.lora.r}, alpha={recipe.lora.alpha}")


__all__ = ["Recipe", "RecipeError", "load_recipe", "recipe_from_dict", "apply_override", "ModelSection",
           "DataSection", "TrainingSection", "LoraSection", "IGNORED_IN_IDENTITY"]
