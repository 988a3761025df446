"""A recipe's `training` section: TRL's `SFTConfig` plus the four keys that are LLaVA's, parsed by TRL's parser.

    config, llava, keys = parse_training({"learning_rate": 2e-5, "global_batch_size": 128, ...}, "my.yaml: training",
                                         num_processes=8)
    config.gradient_accumulation_steps      # worked out from the global batch for 8 processes

Each value goes through `TrlParser` (transformers' `HfArgumentParser`) as `--key=value` would: its type converted,
its choices checked (`lr_scheduler_type: cosnie`, `optim: adamw_trch`), then `SFTConfig.__post_init__` validates the
whole; an unknown key is refused with the closest known one. Errors are `RecipeError`s naming the file and the key.
"""

import dataclasses
import difflib
import json
import re
from dataclasses import dataclass, field

from trl import SFTConfig, TrlParser


class RecipeError(ValueError):
    """A recipe that cannot run, with the file and the key at fault."""


@dataclass
class LlavaTrainingArguments:
    """The keys of a recipe's `training` section that are LLaVA's, not `SFTConfig`'s."""

    global_batch_size: int | None = field(default=None, metadata={
        "help": "per-device batch x processes x gradient accumulation; the accumulation is worked out at launch"})
    projector_lr: float | None = field(default=None, metadata={
        "help": "the projector's own learning rate (the original's mm_projector_lr)"})
    padding_free: bool = field(default=False, metadata={
        "help": "pack each batch into one row, positions restarting per sample (LLaVA's collator)"})
    group_by_modality_length: bool = field(default=False, metadata={
        "help": "every optimizer step from one modality (LLaVA-1.5); not with streaming"})


# `SFTConfig` fields this package sets itself, and why a recipe may not.
FIXED = {
    "max_length": "sample lengths are checked by data.max_length (longer samples are dropped or fail, image tokens "
                  "are never cut); TRL's max_length would truncate through them",
    "assistant_only_loss": "LLaVA's collator always supervises the answers only, as the paper did",
}
# Our defaults for `SFTConfig` fields where the library's are wrong for LLaVA (unless the recipe sets them).
DEFAULTS = {"max_length": None, "assistant_only_loss": True, "report_to": "none"}


def unknown_key(key: str, known, where: str) -> RecipeError:
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(sorted(known))}"
    return RecipeError(f"{where}: unknown key {key!r}{hint}")


class _Parser(TrlParser):
    """TRL's parser, raising instead of printing usage and exiting; no abbreviations (`max_grad` is a typo)."""

    def __init__(self, dataclass_types):
        super().__init__(dataclass_types, allow_abbrev=False)

    def error(self, message):
        raise RecipeError(message)


def _as_argument(value) -> str | None:
    """A YAML value as the command-line string argparse converts and checks (None: pass it as it is)."""
    if value is None or isinstance(value, list):
        return None
    return json.dumps(value) if isinstance(value, dict) else str(value)


def parse_dataclasses(types_, values: dict, where: str):
    """`values` (one YAML mapping) as instances of `types_`, through TRL's argument parser: each value is converted
    and checked (types, choices) as `--key value` would be; lists and nulls are set as they are, as TrlParser does
    with a config file. Unknown keys are refused."""
    parser = _Parser(types_)
    known = {action.dest for action in parser._actions if action.dest != "help"}
    for key in values:
        if key not in known:
            raise unknown_key(key, known, where)
    argv, as_is = [], {}
    for key, value in values.items():
        string = _as_argument(value)
        if string is None:
            as_is[key] = value
        else:
            argv.append(f"--{key}={string}")  # one token: a value starting with "-" stays a value
    parser.set_defaults_with_config(**as_is)
    try:
        parsed = parser.parse_args_into_dataclasses(argv, look_for_args_file=False)
    except RecipeError as error:  # argparse's "argument --key/--key-alias: message" -> "training.key: message"
        named = re.match(r"argument --(\w+)(?:/--[\w-]+)?: (.*)", str(error), re.S)
        raise RecipeError(f"{where}.{named[1]}: {named[2]}" if named else f"{where}: {error}") from None
    except (ValueError, TypeError) as error:  # a dataclass's own __post_init__ refused a value
        named = [key for key, value in values.items() if key in str(error) or (
            isinstance(value, str) and value and value in str(error))]
        raise RecipeError(f"{where}{'.' + named[0] if named else ''}: {error}") from None
    return parsed


def _has_accelerator() -> bool:
    import torch

    return torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()


def parse_training(values, where: str, num_processes: int) -> tuple[SFTConfig, LlavaTrainingArguments, dict]:
    """The `training` section -> `(SFTConfig, LlavaTrainingArguments, the keys as given, values as parsed)`."""
    if not isinstance(values, dict):
        raise RecipeError(f"{where}: expected a mapping of SFTConfig keys, got {values!r}")
    ours = {f.name for f in dataclasses.fields(LlavaTrainingArguments)}
    for key, why in FIXED.items():
        if key in values:
            raise RecipeError(f"{where}.{key}: set by this package, not the recipe: {why}")
    if "global_batch_size" in values and "gradient_accumulation_steps" in values:
        raise RecipeError(f"{where}: give global_batch_size or gradient_accumulation_steps, not both (the "
                          "accumulation is worked out from the global batch for the processes of the launch)")
    (llava,) = parse_dataclasses([LlavaTrainingArguments], {k: v for k, v in values.items() if k in ours}, where)
    given = {k: v for k, v in values.items() if k not in ours}
    settings = {**DEFAULTS, **given}
    if "use_cpu" not in settings and not _has_accelerator():
        settings["use_cpu"] = True  # bf16 on a CPU is autocast; without this, SFTConfig asks for a GPU
    if llava.global_batch_size is not None:
        try:
            per_device = int(str(settings.get("per_device_train_batch_size", 8)))
        except ValueError:
            per_device = 0  # the library names the bad value below
        if per_device > 0 and llava.global_batch_size > 0:
            per_step = per_device * num_processes
            if llava.global_batch_size % per_step:
                raise RecipeError(
                    f"{where}.global_batch_size={llava.global_batch_size} is not divisible by "
                    f"per_device_train_batch_size={per_device} x {num_processes} process(es) = {per_step}; the "
                    "gradient accumulation steps would not be a whole number")
            settings["gradient_accumulation_steps"] = llava.global_batch_size // per_step
    try:
        (config,) = parse_dataclasses([SFTConfig], settings, where)
    except RecipeError as error:
        if "support bf16" not in str(error):
            raise
        raise RecipeError(f"{error} This GPU has no bf16: run with -o training.bf16=false (fp32) or "
                          "-o training.bf16=false -o training.fp16=true.") from None
    as_dict = config.to_dict()
    keys = {key: as_dict.get(key, values[key]) for key in values if key not in ours}
    keys.update({key: getattr(llava, key) for key in values if key in ours})
    return config, llava, keys


__all__ = ["RecipeError", "LlavaTrainingArguments", "parse_training", "parse_dataclasses", "FIXED", "DEFAULTS"]
