"""`transformers-llava train RECIPE.yaml [--override KEY=VALUE ...] [--check]`: run one training stage from a recipe.

    transformers-llava train examples/llava_v1_stage1.yaml
    transformers-llava train examples/llava_v1_stage2.yaml --override training.output_dir=runs/s2
    transformers-llava train examples/lora.yaml --check            # validate and print the settings, no training
    accelerate launch --num_processes 8 -m transformers_llava.cli train examples/llava_v1_stage2.yaml
    accelerate launch --config_file examples/accelerate/fsdp.yaml -m transformers_llava.cli train RECIPE.yaml

Running the same command again after a crash resumes from the last complete checkpoint; an output directory that
holds a different run, or a run whose data files changed since it started, is refused (see
`transformers_llava.training.checkpointing`; `--allow-data-change` resumes on changed data anyway). `--check` runs
every check a launch runs before loading a model: the recipe, the libraries' own parsing of `training`, and the
files and folders it names.

Exit status: 0 done (or nothing to do), 1 an unexpected error (with its traceback), 2 the recipe is invalid,
3 the output directory holds another run (or the data changed), 4 the data cannot be trained on.
"""

import argparse
import json
import sys

from .checkpointing import OutputDirConflict
from .data import DataError, read_records
from .recipes import RecipeError, load_recipe
from .run import process_state, run_recipe


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="transformers-llava train", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="a YAML recipe, e.g. examples/llava_v1_stage1.yaml")
    parser.add_argument("--override", "-o", action="append", default=[], metavar="KEY=VALUE",
                        help="change one setting, e.g. training.max_steps=10 (repeatable; the value is YAML)")
    parser.add_argument("--check", action="store_true", help="validate the recipe, print its settings and exit")
    parser.add_argument("--allow-data-change", action="store_true",
                        help="resume even though the data file changed since the run started (recorded in the run)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    state = process_state()
    try:
        recipe = load_recipe(args.recipe, args.override, num_processes=state.num_processes)
    except RecipeError as error:
        print(f"invalid recipe: {error}", file=sys.stderr)
        return 2
    if args.check:
        print(json.dumps(recipe.to_dict(), indent=2))
        if recipe.data.format != "scienceqa" and not recipe.data.streaming:
            try:  # the file-level checks of a launch (empty, not UTF-8, cut short, not a list); samples at launch
                print(f"{recipe.data.path}: {len(read_records(recipe.data.path))} samples")
            except DataError as error:
                print(f"invalid data: {error}", file=sys.stderr)
                return 4
        print(f"{recipe.num_processes} process(es) x {recipe.training.per_device_train_batch_size} per device x "
              f"{recipe.gradient_accumulation_steps} accumulation steps = global batch "
              f"{recipe.global_batch_size}; run identity {recipe.identity()}")
        return 0
    try:
        run_recipe(recipe, allow_data_change=args.allow_data_change)
    except OutputDirConflict as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except DataError as error:
        print(f"invalid data: {error}", file=sys.stderr)
        return 4
    print(f"rank {state.process_index}/{state.num_processes} finished")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
