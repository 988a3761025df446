"""Train one LLaVA stage from a YAML recipe, step by step: parse -> model -> data -> SFTTrainer -> train -> save.

    python examples/train_llava.py examples/llava_v1_stage1.yaml          # the paper, stage 1 (feature alignment)
    python examples/train_llava.py examples/llava_v1_stage2.yaml          # the paper, stage 2 (instruction tuning)
    python examples/train_llava.py examples/llava_v1_5_stage1.yaml        # LLaVA-1.5 (then llava_v1_5_stage2.yaml)
    python examples/train_llava.py examples/scienceqa.yaml                # ScienceQA, 12 epochs, reasoning first
    python examples/train_llava.py examples/lora.yaml                     # LoRA r 128 on the LLM + the projector
    accelerate launch --config_file examples/accelerate/fsdp.yaml examples/train_llava.py examples/llava_v1_stage2.yaml
    python examples/train_llava.py examples/lora.yaml --override training.max_steps=10 --override data.path=my.json

This is what `transformers-llava train RECIPE.yaml` runs, written out to be read and adapted: each block below is
one step, using the package's public pieces. Run it again after a crash and it resumes from the last complete
checkpoint; pointed at a folder that holds a different run it stops without touching anything.
"""

import argparse

from transformers_llava.training.recipes import load_recipe
from transformers_llava.training.run import build_trainer, finish, load_data, load_model, process_state, start


def main(argv=None) -> int:
    # 1. Parse: the recipe file, with any `section.key=value` overrides, validated for this many processes (the
    #    global batch must split into per-device batch x processes x gradient accumulation).
    parser = argparse.ArgumentParser(description="Train one LLaVA stage from a YAML recipe.")
    parser.add_argument("recipe")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    state = process_state()  # one per process under `accelerate launch`; a single CPU/GPU process otherwise
    recipe = load_recipe(args.recipe, args.override, num_processes=state.num_processes)

    # 2. The output folder: new, or this very run to resume from its last complete checkpoint. A folder holding a
    #    different run raises OutputDirConflict here, before anything is loaded or written.
    claim = start(recipe, state)
    if claim.finished:
        return 0

    # 3. Model: a new LLaVA from a CLIP tower and an LLM with a fresh projector (stage 1), or a LLaVA checkpoint
    #    (stage 2, ScienceQA, LoRA) with its own processor and chat format.
    model, processor = load_model(recipe)

    # 4. Data: LLaVA JSON, caption pairs (one of the paper's brief questions each) or ScienceQA converted as the
    #    original did -> chat messages + image paths, opened only when a batch is collated. Invalid samples and
    #    samples over max_length are dropped and listed by id (or stop the run: on_invalid / on_too_long = fail).
    dataset, data_summary = load_data(recipe, processor, state)

    # 5. SFTTrainer: the stage freezes what the paper froze (LoRA wraps the LLM's linear layers in adapters and
    #    trains the projector in full at projector_lr); only assistant answers and their stop tokens carry loss.
    trainer = build_trainer(recipe, model, processor, dataset, data_summary, state)

    # 6. Train, from the last complete checkpoint when this run was interrupted.
    result = trainer.train(resume_from_checkpoint=claim.checkpoint)

    # 7. Save: the weights (or the LoRA adapter with the projector), the processor with the model's own chat
    #    format, and the model card (hub_cards/llava_model_card.md.jinja) with this stage's record.
    finish(recipe, trainer, processor, result, state)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
