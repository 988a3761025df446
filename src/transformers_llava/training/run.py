"""Run one training recipe: claim the output directory -> model -> data -> SFTTrainer -> train -> save.

    from transformers_llava.training.recipes import load_recipe
    from transformers_llava.training.run import run_recipe
    run_recipe(load_recipe("examples/llava_v1_stage1.yaml"))

or `transformers-llava train examples/llava_v1_stage1.yaml` (single process) and
`accelerate launch [--config_file examples/accelerate/fsdp.yaml] -m transformers_llava.cli train RECIPE.yaml`.
Every process runs the same code; only the main process writes the run file, the final model and its card.
"""

import copy
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import AutoModelForImageTextToText, AutoProcessor

from ..builder import build_llava
from ..chat_templates import load_chat_template
from .checkpointing import claim_output_dir, mark_finished
from .data import DataError, drop_too_long, load_captions, load_llava_json
from ..checkpoints.model_card import STAGE_WHAT, provenance, set_provenance, write_model_card
from .recipes import Recipe
from .stages import lora_config
from .trainer import make_trainer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "auto": "auto"}


@dataclass
class RunResult:
    output_dir: str
    steps: int
    train_loss: float | None
    resumed_from: str | None
    already_finished: bool = False


def process_state() -> PartialState:
    """This process's place in the launch (`accelerate launch`, `torchrun`, or alone). Without a GPU the processes
    join over gloo: accelerate counts CPU processes only when told the run is on CPU."""
    has_accelerator = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    return PartialState(cpu=not has_accelerator)


def load_model(recipe: Recipe):
    """`(model, processor)`: a LLaVA checkpoint to continue, or a new LLaVA built from two pretrained towers."""
    section, dtype = recipe.model, DTYPES[recipe.model.dtype]
    if section.checkpoint:
        model = AutoModelForImageTextToText.from_pretrained(section.checkpoint, dtype=dtype)
        return model, AutoProcessor.from_pretrained(section.checkpoint)
    built = {key: getattr(section, key) for key in ("projector_type", "conversation_format", "image_aspect_ratio",
                                                     "vision_feature_layer") if getattr(section, key) is not None}
    model, processor = build_llava(section.vision_tower, section.language_model,
                                   dtype=None if dtype == "auto" else dtype, **built)
    record = provenance(model.config)
    record["base_models"] = {"vision_tower": section.vision_tower, "language_model": section.language_model}
    set_provenance(model.config, record)
    return model, processor


def with_chat_template(processor, name: str | None):
    """The processor rendering conversations in format `name` (the model's own one when None)."""
    if name is None:
        return processor
    processor = copy.copy(processor)
    processor.chat_template = load_chat_template(name)
    return processor


def scienceqa_json(recipe: Recipe, state: PartialState, split: str | None = None) -> Path:
    """ScienceQA's `problems.json` -> LLaVA JSON in the run folder (written by the main process, read by all)."""
    from ..formats.llava_json import write_llava_json
    from ..formats.scienceqa import load_scienceqa, to_llava_records

    data = recipe.data
    split, prompt_format = split or data.split or "train", data.prompt_format or "QCM-LEPA"
    path = Path(recipe.training.output_dir) / f"scienceqa_{split}_{prompt_format}.json"
    with state.main_process_first():
        if state.is_main_process:
            write_llava_json(to_llava_records(load_scienceqa(data.path, split), prompt_format), path)
    return path


def _load(recipe: Recipe, processor, state: PartialState, path, streaming: bool, source: str):
    """One data file -> (dataset without invalid or too-long samples, invalid report, too-long report)."""
    data = recipe.data
    options = {"streaming": streaming, "on_invalid": data.on_invalid}
    if data.format == "captions":
        dataset, report = load_captions(path, data.image_folder, seed=recipe.training.seed, **options)
    else:
        dataset, report = load_llava_json(path, data.image_folder, **options)
    try:
        dataset, too_long = drop_too_long(dataset, with_chat_template(processor, data.chat_template), data.max_length,
                                          on_too_long=data.on_too_long)
    except DataError as error:
        raise DataError(f"{source}: {error}") from None
    for what, summary in (("invalid samples", report), (f"samples over {data.max_length} tokens", too_long)):
        if summary is not None and summary.dropped:
            state.print(f"{source}: {what}: {summary}")
    return dataset, report, too_long


def load_data(recipe: Recipe, processor, state: PartialState):
    """The training dataset and a summary of what was kept (`format, path, samples, dropped, chat_template`)."""
    data = recipe.data
    path = scienceqa_json(recipe, state) if data.format == "scienceqa" else data.path
    dataset, report, too_long = _load(recipe, processor, state, path, data.streaming, data.path)
    summary = {"format": data.format, "path": data.path, "chat_template": data.chat_template,
               "samples": None if data.streaming else len(dataset),
               "dropped": None if data.streaming else len(report.dropped) + len(too_long.dropped)}
    return dataset, summary


def load_eval_data(recipe: Recipe, processor, state: PartialState):
    """The held-out dataset for `training.eval_strategy` (`data.eval_path`, or ScienceQA's `data.eval_split`), or
    None when the recipe names none. Checked like the training data."""
    data = recipe.data
    if data.eval_split:
        return _load(recipe, processor, state, scienceqa_json(recipe, state, data.eval_split), False,
                     f"{data.path} ({data.eval_split})")[0]
    if data.eval_path:
        return _load(recipe, processor, state, data.eval_path, False, data.eval_path)[0]
    return None


def stage_record(recipe: Recipe, data_summary: dict) -> dict:
    """This stage's entry in the checkpoint's training record (the model card reads it)."""
    t, llava = recipe.training, recipe.llava
    hyperparameters = {
        "learning_rate": t.learning_rate, "projector_lr": llava.projector_lr,
        "global_batch_size": recipe.global_batch_size,
        "per_device_batch_size": t.per_device_train_batch_size, "processes": recipe.num_processes,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "epochs": t.num_train_epochs if t.max_steps <= 0 else None,
        "max_steps": t.max_steps if t.max_steps > 0 else None,
        "lr_scheduler": str(getattr(t.lr_scheduler_type, "value", t.lr_scheduler_type)),
        "warmup": t.warmup_steps, "weight_decay": t.weight_decay, "max_grad_norm": t.max_grad_norm,
        "optimizer": "AdamW" if llava.projector_lr is not None else str(getattr(t.optim, "value", t.optim)),
        "bf16": t.bf16, "gradient_checkpointing": t.activation_checkpointing, "max_length": recipe.data.max_length,
        "seed": t.seed,
        "group_by_modality_length": llava.group_by_modality_length or None,  # listed when it shaped the batches
        **({f"lora_{k}": v for k, v in vars(recipe.lora).items()} if recipe.lora else {}),
    }
    return {"stage": recipe.stage, "what": STAGE_WHAT[recipe.stage], "recipe": recipe.source, "data": data_summary,
            # [name, value] pairs: config.json sorts the keys of mappings, and the card keeps this order
            "hyperparameters": [[k, v] for k, v in hyperparameters.items() if v is not None]}


def start(recipe: Recipe, state: PartialState, allow_data_change: bool = False):
    """Claim the output folder (the main process first); returns the `Claim` (see checkpointing)."""
    with state.main_process_first():  # the main process writes the run file before the others read it
        claim = claim_output_dir(recipe, write=state.is_main_process, allow_data_change=allow_data_change)
    output_dir = recipe.training.output_dir
    if claim.finished:
        state.print(f"{output_dir} already holds the finished run of {recipe.source}; nothing to do.")
    if claim.replaced:
        state.print(f"{output_dir}: the attempt of {claim.replaced} stopped before its first checkpoint; starting "
                    "afresh.")
    for change in claim.data_changed or []:
        state.print(f"Resuming on changed data (--allow-data-change): {change}")
    for folder in claim.skipped:
        state.print(f"{folder} is incomplete (the run stopped while writing it) and is skipped.")
    if claim.checkpoint:
        state.print(f"Resuming {output_dir} from {claim.checkpoint}.")
    return claim


def record_stage(recipe: Recipe, model, data_summary: dict) -> None:
    """Append this stage to the model's training record (in its config: checkpoints and the card carry it)."""
    record = provenance(model.config)
    record["stages"].append(stage_record(recipe, data_summary))
    set_provenance(model.config, record)


def build_trainer(recipe: Recipe, model, processor, dataset, data_summary: dict, state: PartialState,
                  eval_dataset=None):
    """The stage's `SFTTrainer`; this stage's record joins the config first, so checkpoints carry it too."""
    record_stage(recipe, model, data_summary)
    lora = lora_config(model, recipe.lora.r, recipe.lora.alpha, recipe.lora.dropout) if recipe.lora else None
    args = recipe.training
    if args.world_size != recipe.num_processes:
        raise RuntimeError(
            f"{recipe.source}: the recipe was resolved for {recipe.num_processes} process(es) but the Trainer runs on "
            f"{args.world_size}: the global batch would be "
            f"{recipe.global_batch_size // recipe.num_processes * args.world_size}, "
            f"not {recipe.global_batch_size}.")
    return make_trainer(model, processor, dataset, args, stage=recipe.stage, chat_template=recipe.data.chat_template,
                        projector_lr=recipe.llava.projector_lr, padding_free=recipe.llava.padding_free,
                        group_by_modality_length=recipe.llava.group_by_modality_length,
                        lora=lora, eval_dataset=eval_dataset)


def finish(recipe: Recipe, trainer, processor, result, state: PartialState) -> None:
    """Record the outcome, save the weights (or the LoRA adapter), the processor and the card; mark the run done."""
    output_dir = recipe.training.output_dir
    base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    record = provenance(base.config)
    # The mean of every logged loss of the run: `result.training_loss` covers only the steps since a resume.
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    record["stages"][-1].update(steps=trainer.state.global_step,
                                train_loss=sum(losses) / len(losses) if losses else result.training_loss,
                                finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    set_provenance(base.config, record)
    trainer.save_model(output_dir)  # the weights and the card (or the adapter), on the main process only
    if state.is_main_process:
        processor.save_pretrained(output_dir)  # the model's own chat format, not the one trained with
        if recipe.stage == "lora":
            write_model_card(trainer.model, output_dir)  # in place of PEFT's generic adapter card
        mark_finished(output_dir)
        state.print(f"Saved the {recipe.stage} model to {output_dir} ({trainer.state.global_step} steps, "
                    f"mean training loss {record['stages'][-1]['train_loss']:.4f}).")
    state.wait_for_everyone()


def resume_point(recipe: Recipe, claim) -> str | None:
    """The checkpoint to resume from: the recipe's `training.resume_from_checkpoint` when given, else the claim's."""
    return recipe.training.resume_from_checkpoint or claim.checkpoint


def no_samples_left(recipe: Recipe) -> DataError:
    """What an empty stream means (TRL reads the first sample up front and raises a bare StopIteration)."""
    data = recipe.data
    return DataError(f"{data.path}: no sample passed the checks: every one was invalid or over "
                     f"data.max_length={data.max_length} (each skipped sample was logged above)")


def run_recipe(recipe: Recipe, allow_data_change: bool = False) -> RunResult:
    state = process_state()
    claim = start(recipe, state, allow_data_change=allow_data_change)
    if claim.finished:
        return RunResult(recipe.training.output_dir, 0, None, None, already_finished=True)
    model, processor = load_model(recipe)
    dataset, data_summary = load_data(recipe, processor, state)
    eval_dataset = load_eval_data(recipe, processor, state)
    try:
        trainer = build_trainer(recipe, model, processor, dataset, data_summary, state, eval_dataset)
    except StopIteration:
        raise no_samples_left(recipe) from None
    result = trainer.train(resume_from_checkpoint=resume_point(recipe, claim))
    finish(recipe, trainer, processor, result, state)
    return RunResult(recipe.training.output_dir, trainer.state.global_step, result.training_loss,
                     claim.checkpoint)


__all__ = ["run_recipe", "process_state", "start", "load_model", "load_data", "load_eval_data", "build_trainer",
           "finish", "resume_point", "record_stage", "stage_record", "RunResult"]
