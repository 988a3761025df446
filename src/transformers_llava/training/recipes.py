"""Training recipes as data: a YAML file -> a validated `Recipe` whose `training` is TRL's own `SFTConfig`.

    recipe = load_recipe("examples/llava_v1_stage1.yaml", overrides=["training.max_grad_norm=0.5"], num_processes=8)
    recipe.training                         # an SFTConfig: every field of it can be set in the recipe
    recipe.llava.projector_lr               # what is LLaVA's: global batch, projector rate, packing, grouping
    recipe.identity()                       # what makes two runs "the same run" (see `ignored_in_identity`)

A recipe has the `stage` and four sections. `model`, `data` and `lora` are LLaVA's and checked against the schema
below. `training` is `SFTConfig`, parsed by TRL's `TrlParser` (`arguments.py`), so a typo or a bad value
(`lr_scheduler_type: cosnie`, `optim: adamw_trch`, an unknown key) is refused by the library that owns the field;
our message adds the file and the key. Four keys of `training` are LLaVA's (`LlavaTrainingArguments`):
`global_batch_size` (gradient accumulation is worked out from it at launch), `projector_lr`, `padding_free` (our
packed collator: TRL's own refuses image data) and `group_by_modality_length`. `check_recipe` refuses what the
libraries accept but cannot train; `inputs.check_inputs` the files that are not there. `--override` values are
parsed as YAML (`training.learning_rate=1e-4`, `data.streaming=true`, `model.checkpoint=null`). The YAML loader
refuses a key given twice in one mapping, naming it and both lines.
"""

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Literal

import yaml
from trl import SFTConfig

from ..chat_templates import FORMATS
from ..configuration_llava import projector_depth
from .arguments import LlavaTrainingArguments, RecipeError, parse_training, unknown_key
from .stages import STAGES


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
    eval_path: str | None = None  # held-out samples in the same format, for training.eval_strategy
    eval_split: str | None = None  # scienceqa only: the held-out split (e.g. val), for training.eval_strategy


@dataclass
class LoraSection:
    r: int = 128
    alpha: int = 256
    dropout: float = 0.05


# `training` keys a resumed run may change without becoming a different run: they do not touch the weights.
IGNORED_IN_IDENTITY = ("output_dir", "save_*", "logging_*", "report_to", "run_name", "push_to_hub", "hub_*",
                       "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers",
                       "dataloader_prefetch_factor", "disable_tqdm", "eval_*", "per_device_eval_batch_size",
                       "resume_from_checkpoint", "use_cpu")


def ignored_in_identity(key: str) -> bool:
    """Whether `training.<key>` may change between attempts of one run."""
    return any(fnmatch(key, pattern) for pattern in IGNORED_IN_IDENTITY)


@dataclass
class Recipe:
    stage: Literal["stage1", "stage2", "lora"]
    model: ModelSection
    data: DataSection
    training: SFTConfig
    llava: LlavaTrainingArguments
    lora: LoraSection | None = None
    training_keys: dict = field(default_factory=dict)  # the training section as given (values as parsed)
    source: str = "<dict>"
    num_processes: int = 1

    @property
    def global_batch_size(self) -> int:
        t = self.training
        return t.per_device_train_batch_size * self.num_processes * t.gradient_accumulation_steps

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.training.gradient_accumulation_steps

    def to_dict(self) -> dict:
        """The recipe's settings as written (without where it was read from): `training` holds the keys given."""
        settings = {"stage": self.stage, "model": dataclasses.asdict(self.model), "data": dataclasses.asdict(self.data),
                    "training": dict(self.training_keys)}
        if self.lora is not None:
            settings["lora"] = dataclasses.asdict(self.lora)
        return settings

    def identity(self) -> str:
        """A hash of every setting that changes the trained weights: equal for a rerun of the same run."""
        settings = self.to_dict()
        settings["training"] = {k: v for k, v in settings["training"].items() if not ignored_in_identity(k)}
        for section in ("model", "data", "lora"):  # unset keys: a key added to the schema is not a new run
            if section in settings:
                settings[section] = {k: v for k, v in settings[section].items() if v is not None}
        for key in ("eval_path", "eval_split"):  # held-out data is only evaluated on
            settings["data"].pop(key, None)
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


SECTIONS = {"model": ModelSection, "data": DataSection, "lora": LoraSection}


class _DuplicateKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise RecipeError(f"key {key!r} is given twice in one mapping (lines {seen[key] + 1} and "
                                  f"{key_node.start_mark.line + 1}); YAML would keep only the last")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path):
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_DuplicateKeyLoader)
    except RecipeError as error:
        raise RecipeError(f"{path}: {error}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise RecipeError(f"{path}: not valid YAML: {error}") from error


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
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in values:
        if key not in fields:
            raise unknown_key(key, fields, where)
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
    known = {"stage", "training", *SECTIONS}
    unknown = [key for key in raw if key not in known]
    if unknown:
        raise unknown_key(unknown[0], known, source)
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
    training, llava, keys = parse_training(raw["training"], f"{source}: training", num_processes)
    recipe = Recipe(stage=stage, **sections, training=training, llava=llava, training_keys=keys, source=source,
                    num_processes=num_processes)
    check_recipe(recipe)
    return recipe


def load_recipe(path, overrides: list[str] = (), num_processes: int = 1, check_files: bool = True) -> Recipe:
    """Read, override and validate a YAML recipe for a run on `num_processes` processes; with `check_files`, the
    files and folders it names must exist (`inputs.check_inputs`)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    raw = read_yaml(path) or {}
    for override in overrides:
        apply_override(raw, override)
    recipe = recipe_from_dict(raw, str(path), num_processes)
    if check_files:
        from .inputs import check_inputs

        check_inputs(recipe)
    return recipe


def _fail(recipe: Recipe, message: str):
    raise RecipeError(f"{recipe.source}: {message}")


def check_recipe(recipe: Recipe) -> None:
    """Checks across keys, and values the libraries accept but that cannot train: what a type alone cannot say."""
    model, data, training, llava = recipe.model, recipe.data, recipe.training, recipe.llava
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
    scienceqa_only = [k for k in ("split", "prompt_format", "eval_split") if getattr(data, k) is not None]
    if data.format != "scienceqa" and scienceqa_only:
        _fail(recipe, f"data.{scienceqa_only[0]} only applies to data.format scienceqa, not {data.format}")
    if data.format == "scienceqa" and data.prompt_format is not None:
        from ..formats.scienceqa import parse_prompt_format

        try:
            parse_prompt_format(data.prompt_format)
        except ValueError as error:
            _fail(recipe, f"data.prompt_format: {error}")
    if data.format == "scienceqa" and data.eval_path is not None:
        _fail(recipe, "data.eval_path: ScienceQA's held-out samples are a split of data.path: give data.eval_split")
    evaluates = str(getattr(training.eval_strategy, "value", training.eval_strategy)) != "no"
    if evaluates and not (data.eval_path or data.eval_split):
        _fail(recipe, f"training.eval_strategy={training.eval_strategy.value} needs held-out data: data.eval_path "
                      "(data.eval_split for ScienceQA)")
    if data.streaming and training.max_steps <= 0:
        _fail(recipe, "data.streaming needs training.max_steps > 0: a stream has no length to count epochs by")
    if data.streaming and llava.group_by_modality_length:
        _fail(recipe, "training.group_by_modality_length needs the whole dataset to order; it cannot be combined "
                      "with data.streaming=true")
    positive = {"data.max_length": data.max_length, "training.per_device_train_batch_size":
                training.per_device_train_batch_size, "training.learning_rate": training.learning_rate,
                "training.gradient_accumulation_steps": training.gradient_accumulation_steps}
    if llava.global_batch_size is not None:
        positive["training.global_batch_size"] = llava.global_batch_size
    if llava.projector_lr is not None:  # a negative rate runs gradient ascent on the projector
        positive["training.projector_lr"] = llava.projector_lr
    if training.max_steps <= 0:
        positive["training.num_train_epochs"] = training.num_train_epochs
    for key, value in positive.items():
        if value <= 0:
            _fail(recipe, f"{key} must be > 0, got {value}")
    if training.dataloader_num_workers < 0:
        _fail(recipe, f"training.dataloader_num_workers must be >= 0 (0: load in the training process), got "
                      f"{training.dataloader_num_workers}")
    if recipe.lora is not None and min(recipe.lora.r, recipe.lora.alpha) <= 0:
        _fail(recipe, f"lora.r and lora.alpha must be > 0, got r={recipe.lora.r}, alpha={recipe.lora.alpha}")


__all__ = ["Recipe", "RecipeError", "load_recipe", "recipe_from_dict", "apply_override", "parse_training",
           "ModelSection", "DataSection", "LlavaTrainingArguments", "LoraSection", "IGNORED_IN_IDENTITY",
           "ignored_in_identity", "read_yaml"]
