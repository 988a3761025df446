"""Train one LLaVA stage from a YAML recipe, step by step: parse -> model -> data -> SFTConfig -> SFTTrainer -> train
-> save.

    python examples/train_llava.py examples/llava_v1_stage1.yaml          # the paper, stage 1 (feature alignment)
    python examples/train_llava.py examples/llava_v1_stage2.yaml          # the paper, stage 2 (instruction tuning)
    python examples/train_llava.py examples/llava_v1_5_stage1.yaml        # LLaVA-1.5 (then llava_v1_5_stage2.yaml)
    python examples/train_llava.py examples/scienceqa.yaml                # ScienceQA, 12 epochs, reasoning first
    python examples/train_llava.py examples/lora.yaml                     # LoRA r 128 on the LLM + the projector
    accelerate launch --config_file examples/accelerate/fsdp.yaml examples/train_llava.py examples/llava_v1_stage2.yaml
    python examples/train_llava.py examples/lora.yaml -o training.max_steps=10 -o training.max_grad_norm=0.5

This is what `transformers-llava train RECIPE.yaml` runs, written out to be read and adapted, in the order of TRL's
`examples/scripts/sft_vlm.py`. The recipe's `training:` section is TRL's `SFTConfig` itself (parsed by `TrlParser`),
so any of its fields can be set there or with `-o training.KEY=VALUE`. Run it again after a crash and it resumes
from the last complete checkpoint; pointed at a folder that holds a different run it stops without touching anything.
"""

import argparse

from trl import SFTConfig

from transformers_llava.training.recipes import load_recipe
from transformers_llava.training.run import (
    finish,
    load_data,
    load_eval_data,
    load_model,
    process_state,
    record_stage,
    resume_point,
    start,
)
from transformers_llava.training.stages import lora_config
from transformers_llava.training.trainer import LlavaSFTTrainer, make_trainer


def main(argv=None) -> int:
    # 1. Parse: the recipe file with any `section.key=value` overrides. `model`, `data`, `lora` and four `training`
    #    keys are LLaVA's; the rest of `training` is SFTConfig, each value checked by TRL's own parser. The global
    #    batch is split into per-device batch x processes x gradient accumulation for this launch.
    parser = argparse.ArgumentParser(description="Train one LLaVA stage from a YAML recipe.")
    parser.add_argument("recipe")
    parser.add_argument("--override", "-o", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    state = process_state()  # one per process under `accelerate launch`; a single CPU/GPU process otherwise
    recipe = load_recipe(args.recipe, args.override, num_processes=state.num_processes)

    # The output folder: new, or this very run to resume from its last complete checkpoint. A folder holding a
    # different run raises OutputDirConflict here, before anything is loaded or written.
    claim = start(recipe, state)
    if claim.finished:
        return 0

    # 2. Model: a new LLaVA from a CLIP tower and an LLM with a fresh projector (stage 1), or a LLaVA checkpoint
    #    (stage 2, ScienceQA, LoRA) with its own processor and chat format.
    model, processor = load_model(recipe)

    # 3. Data: LLaVA JSON, caption pairs (one of the paper's brief questions each) or ScienceQA converted as the
    #    original did -> chat messages + image paths, opened only when a batch is collated. Invalid samples and
    #    samples over max_length are dropped and listed by id (or stop the run: on_invalid / on_too_long = fail).
    dataset, data_summary = load_data(recipe, processor, state)
    eval_dataset = load_eval_data(recipe, processor, state)  # data.eval_path, for training.eval_strategy (or None)

    # 4. SFTConfig: the recipe's training section, with gradient accumulation worked out from the global batch,
    #    max_length=None (lengths were checked in step 3: image tokens are never cut) and use_cpu without a GPU.
    training_args: SFTConfig = recipe.training
    record_stage(recipe, model, data_summary)  # this stage's record joins the config, so checkpoints carry it

    # 5. SFTTrainer (LlavaSFTTrainer, a subclass): the stage freezes what the paper froze (LoRA wraps the LLM's
    #    linear layers and trains the projector in full at projector_lr); only answers and their stop tokens carry
    #    loss (LlavaDataCollator).
    lora = lora_config(model, recipe.lora.r, recipe.lora.alpha, recipe.lora.dropout) if recipe.lora else None
    trainer: LlavaSFTTrainer = make_trainer(
        model, processor, dataset, training_args, stage=recipe.stage, chat_template=recipe.data.chat_template,
        projector_lr=recipe.llava.projector_lr, padding_free=recipe.llava.padding_free,
        group_by_modality_length=recipe.llava.group_by_modality_length, lora=lora, eval_dataset=eval_dataset)

    # 6. Train, from the last complete checkpoint when this run was interrupted.
    result = trainer.train(resume_from_checkpoint=resume_point(recipe, claim))

    # 7. Save: the weights (or the LoRA adapter with the projector), the processor with the model's own chat
    #    format, and the model card (hub_cards/llava_model_card.md.jinja) with this stage's record.
    finish(recipe, trainer, processor, result, state)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
