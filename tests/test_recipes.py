"""Every recipe in examples/ loads and validates; its training section is TRL's SFTConfig, parsed by TRL; bad
recipes fail naming the file, the key and the numbers, and `--check` catches everything a launch would refuse."""

import json
from pathlib import Path

import pytest
import yaml
from trl import SFTConfig

from training_fixtures import tiny_data, towers  # noqa: F401
from transformers_llava.training.cli import main
from transformers_llava.training.recipes import RecipeError, load_recipe as _load_recipe, recipe_from_dict


def load_recipe(path, overrides=(), num_processes=1):
    """The example recipes name the paper's data and checkpoints, which are not on this machine."""
    return _load_recipe(path, overrides, num_processes=num_processes, check_files=False)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RECIPES = sorted(EXAMPLES.glob("*.yaml"))


def test_there_is_a_recipe_for_each_paper_setting():
    assert {p.stem for p in RECIPES} >= {"llava_v1_stage1", "llava_v1_stage2", "llava_v1_5_stage1",
                                         "llava_v1_5_stage2", "scienceqa", "lora"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_loads_and_validates(path):
    recipe = load_recipe(path, num_processes=8)
    t = recipe.training
    assert isinstance(t, SFTConfig)
    assert t.per_device_train_batch_size * 8 * t.gradient_accumulation_steps == recipe.llava.global_batch_size
    # The settings the paper and the original scripts share: Adam without weight decay, cosine, 3 % warmup, bf16.
    assert (t.weight_decay, t.lr_scheduler_type.value, t.warmup_steps, t.bf16, t.activation_checkpointing) == (
        0.0, "cosine", 0.03, True, True)
    assert t.max_length is None and t.assistant_only_loss  # lengths are data.max_length's: image tokens never cut
    assert "#" in path.read_text(), "recipes are commented"


@pytest.mark.parametrize("name, lr, batch, epochs", [
    ("llava_v1_stage1", 2e-3, 128, 1), ("llava_v1_stage2", 2e-5, 32, 3),
    ("llava_v1_5_stage1", 1e-3, 256, 1), ("llava_v1_5_stage2", 2e-5, 128, 1),
    ("scienceqa", 2e-5, 128, 12), ("lora", 2e-4, 128, 1),
])
def test_recipes_hold_the_published_hyperparameters(name, lr, batch, epochs):
    recipe = load_recipe(EXAMPLES / f"{name}.yaml")
    assert (recipe.training.learning_rate, recipe.global_batch_size, recipe.training.num_train_epochs) == (
        lr, batch, epochs)


def test_variant_specific_settings():
    v15 = load_recipe(EXAMPLES / "llava_v1_5_stage1.yaml")
    assert (v15.model.projector_type, v15.model.image_aspect_ratio, v15.model.conversation_format,
            v15.data.chat_template, v15.data.max_length) == ("mlp2x_gelu", "pad", "vicuna_v1", "plain", 2048)
    lora = load_recipe(EXAMPLES / "lora.yaml")
    assert (lora.stage, lora.lora.r, lora.lora.alpha, lora.llava.projector_lr) == ("lora", 128, 256, 2e-5)
    # the released finetuning scripts group samples by modality length; its pretraining (all with images) does not
    assert [load_recipe(EXAMPLES / name).llava.group_by_modality_length for name in
            ("llava_v1_5_stage1.yaml", "llava_v1_5_stage2.yaml", "lora.yaml")] == [False, True, True]
    sqa = load_recipe(EXAMPLES / "scienceqa.yaml")
    assert (sqa.data.format, sqa.data.prompt_format) == ("scienceqa", "QCM-LEPA")  # reasoning before the answer


def raw(**changes):
    recipe = yaml.safe_load((EXAMPLES / "llava_v1_stage2.yaml").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        if value is None:
            recipe[section].pop(key, None)
        else:
            recipe[section][key] = value
    return recipe


@pytest.mark.parametrize("changes, processes, message", [
    ({"training__learnig_rate": 1e-4}, 1, r"training: unknown key 'learnig_rate' \(did you mean 'learning_rate'\?\)"),
    ({"training__max_grad": 1.0}, 1, r"training: unknown key 'max_grad' \(did you mean 'max_grad_norm'\?\)"),
    ({"training__learning_rate": "fast"}, 1, r"training\.learning_rate: invalid float value: 'fast'"),
    ({"training__per_device_train_batch_size": 2.5}, 1,
     r"training\.per_device_train_batch_size: invalid int value: '2\.5'"),
    ({"training__bf16": "sometimes"}, 1, r"training\.bf16: Truthy value expected: got sometimes"),
    # TRL's / transformers' own choices refuse a misspelt scheduler or optimizer
    ({"training__lr_scheduler_type": "cosnie"}, 1,
     r"training\.lr_scheduler_type: invalid choice: 'cosnie' \(choose from .*'cosine'"),
    ({"training__optim": "adamw_trch"}, 1, r"training\.optim: invalid choice: 'adamw_trch'"),
    ({"training__eval_strategy": "sometimes"}, 1, r"training\.eval_strategy: invalid choice: 'sometimes'"),
    ({"training__projector_lr": "fast"}, 1, r"training\.projector_lr: invalid float value: 'fast'"),
    ({"training__projector_lr": -5}, 1, r"training\.projector_lr must be > 0, got -5"),
    ({"training__dataloader_num_workers": -1}, 1, r"training\.dataloader_num_workers must be >= 0 .* got -1"),
    ({"training__max_length": 512}, 1,
     r"training\.max_length: set by this package, not the recipe: .*data\.max_length"),
    ({"training__gradient_accumulation_steps": 2}, 1,
     r"training: give global_batch_size or gradient_accumulation_steps, not both"),
    ({"training__fp16": True}, 1, r"training\.bf16: At most one of fp16 and bf16 can be True"),
    ({"data__on_invalid": "ignore"}, 1, r"data\.on_invalid: expected 'fail' \| 'skip', got 'ignore'"),
    ({"training__per_device_train_batch_size": 3}, 1,
     r"global_batch_size=32 is not divisible by per_device_train_batch_size=3 x 1 process\(es\) = 3"),
    ({}, 3, r"global_batch_size=32 is not divisible by per_device_train_batch_size=4 x 3 process\(es\) = 12"),
    ({"model__vision_tower": "openai/clip"}, 1, r"model: give either checkpoint .* not both"),
    ({"model__projector_type": "mlp2x_gelu", "model__checkpoint": "x"}, 1,
     r"model\.projector_type only applies when building from towers"),
    ({"data__streaming": True}, 1, r"data\.streaming needs training\.max_steps > 0"),
    ({"data__streaming": True, "training__max_steps": 10, "training__group_by_modality_length": True}, 1,
     r"training\.group_by_modality_length needs the whole dataset .* data\.streaming=true"),
    ({"data__chat_template": "chatml"}, 1, r"data\.chat_template: unknown conversation format 'chatml'"),
    ({"data__prompt_format": "QCM-LEPA"}, 1, r"data\.prompt_format only applies to data\.format scienceqa"),
    ({"training__warmup_steps": -3}, 1,
     r"training\.warmup_steps: Got warmup_steps = -3\.0, Expected value warmup_steps >= 0"),
    ({"training__learning_rate": 0}, 1, r"training\.learning_rate must be > 0, got 0"),
])
def test_invalid_recipes_fail_clearly(changes, processes, message):
    with pytest.raises(RecipeError, match=message) as error:
        recipe_from_dict(raw(**changes), "my.yaml", num_processes=processes)
    assert str(error.value).startswith("my.yaml: ")


def test_stage_and_section_errors():
    with pytest.raises(RecipeError, match="stage: expected one of stage1, stage2, lora, got 'stage3'"):
        recipe_from_dict({**raw(), "stage": "stage3"})
    with pytest.raises(RecipeError, match="a lora section is only used by stage lora, not stage2"):
        recipe_from_dict({**raw(), "lora": {"r": 8}})
    with pytest.raises(RecipeError, match="unknown key 'trainig' .*did you mean 'training'"):
        recipe_from_dict({**raw(), "trainig": {}})
    lora_from_towers = {**raw(model__checkpoint=None), "stage": "lora"}
    lora_from_towers["model"].update(vision_tower="v", language_model="l")
    with pytest.raises(RecipeError, match="stage lora needs model.checkpoint"):
        recipe_from_dict(lora_from_towers)
    scienceqa = raw(data__format="scienceqa", data__prompt_format="QCM-XYZ")
    with pytest.raises(RecipeError, match="data.prompt_format: Unknown prompt format 'QCM-XYZ'"):
        recipe_from_dict(scienceqa)


def test_every_sft_config_field_can_be_set(tmp_path):
    """Fields the recipe schema never mirrored reach SFTConfig as they are, through the recipe or an override."""
    path = EXAMPLES / "llava_v1_stage2.yaml"
    recipe = load_recipe(path, ["training.max_grad_norm=0.5", "training.eval_strategy=steps", "training.eval_steps=7",
                                "data.eval_path=held_out.json",
                                "training.push_to_hub=true", "training.hub_model_id=me/llava",
                                "training.lr_scheduler_kwargs={num_cycles: 2}", "training.report_to=[tensorboard]"])
    t = recipe.training
    assert (t.max_grad_norm, t.eval_strategy.value, t.eval_steps, t.push_to_hub, t.hub_model_id) == (
        0.5, "steps", 7, True, "me/llava")
    assert t.lr_scheduler_kwargs == {"num_cycles": 2} and t.report_to == ["tensorboard"]


def test_overrides_are_yaml_values_and_validated(tmp_path):
    path = EXAMPLES / "llava_v1_stage2.yaml"
    recipe = load_recipe(path, ["training.max_steps=10", "training.learning_rate=1e-4", "data.streaming=true"])
    assert (recipe.training.max_steps, recipe.training.learning_rate, recipe.data.streaming) == (10, 1e-4, True)
    with pytest.raises(RecipeError, match=r"--override 'max_steps': expected KEY=VALUE"):
        load_recipe(path, ["max_steps"])
    with pytest.raises(RecipeError, match="training: unknown key 'max_step'"):
        load_recipe(path, ["training.max_step=3"])
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_a_key_given_twice_is_refused_with_its_lines(tmp_path):
    text = (EXAMPLES / "llava_v1_stage2.yaml").read_text().replace("  learning_rate: 2.0e-5\n",
                                                                   "  learning_rate: 2.0e-5\n  learning_rate: 2.0e-3\n")
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    lines = text.splitlines()
    first = lines.index("  learning_rate: 2.0e-5") + 1
    with pytest.raises(RecipeError, match=rf"{path}: key 'learning_rate' is given twice in one mapping \(lines "
                                          rf"{first} and {first + 1}\)"):
        load_recipe(path)


def test_identity_changes_with_what_changes_the_weights():
    path = EXAMPLES / "llava_v1_stage2.yaml"
    base = load_recipe(path).identity()
    assert load_recipe(path, ["training.logging_steps=50", "training.output_dir=elsewhere",
                              "training.save_steps=7", "training.report_to=tensorboard"]).identity() == base
    assert load_recipe(path, ["training.learning_rate=3e-5"]).identity() != base
    assert load_recipe(path, ["training.max_grad_norm=0.5"]).identity() != base
    assert load_recipe(path, ["data.path=other.json"]).identity() != base


def tiny_check_args(towers, tiny_data, *extra):
    overrides = [f"model.vision_tower={towers[0]}", f"model.language_model={towers[1]}",
                 f"data.path={tiny_data / 'captions.json'}", f"data.image_folder={tiny_data / 'images'}", *extra]
    return [str(EXAMPLES / "llava_v1_stage1.yaml"), "--check", *[a for o in overrides for a in ("-o", o)]]


def test_cli_check_prints_the_resolved_batch(towers, tiny_data, capsys):
    assert main(tiny_check_args(towers, tiny_data)) == 0
    out = capsys.readouterr().out
    assert "1 process(es) x 16 per device x 8 accumulation steps = global batch 128" in out
    assert f"{tiny_data / 'captions.json'}: 16 samples" in out
    assert main(tiny_check_args(towers, tiny_data, "training.per_device_train_batch_size=7")) == 2
    assert "not divisible by per_device_train_batch_size=7" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("training.projector_lr=-5", r"training\.projector_lr must be > 0, got -5"),
    ("training.lr_scheduler_type=cosnie", r"training\.lr_scheduler_type: invalid choice: 'cosnie'"),
    ("training.optim=adamw_trch", r"training\.optim: invalid choice: 'adamw_trch'"),
    ("training.dataloader_num_workers=-1", r"dataloader_num_workers must be >= 0"),
    ("data.path=/nonexistent/data.json", r"data\.path: /nonexistent/data\.json does not exist"),
    ("data.image_folder=/nonexistent/images", r"data\.image_folder: /nonexistent/images is not a folder"),
    ("model.language_model=/nonexistent/llm", r"model\.language_model: /nonexistent/llm does not exist"),
    ("model.vision_tower=someone/no-such-tower",
     r"model\.vision_tower: someone/no-such-tower is not a local folder, and not in the Hub cache"),
    ("training.resume_from_checkpoint=/nonexistent/checkpoint-5",
     r"training\.resume_from_checkpoint: /nonexistent/checkpoint-5 is not a folder"),
])
def test_cli_check_refuses_what_a_launch_would_refuse(towers, tiny_data, capsys, override, message):
    import re

    assert main(tiny_check_args(towers, tiny_data, override)) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"invalid recipe: {EXAMPLES / 'llava_v1_stage1.yaml'}: ") and re.search(message, error)


def test_cli_check_reads_the_data_file(towers, tiny_data, tmp_path, capsys):
    empty = tmp_path / "empty.json"
    empty.write_text("")
    assert main(tiny_check_args(towers, tiny_data, f"data.path={empty}")) == 4
    assert f"invalid data: {empty}: the file is empty (0 bytes)" in capsys.readouterr().err


def test_a_checkpoint_recipe_checks_the_checkpoint(tmp_path, capsys):
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"id": 1, "conversations": []}]))
    args = [str(EXAMPLES / "lora.yaml"), "--check", "-o", f"data.path={data}", "-o", f"data.image_folder={tmp_path}",
            "-o", f"model.checkpoint={tmp_path / 'stage1'}"]
    assert main(args) == 2
    assert f"model.checkpoint: {tmp_path / 'stage1'} does not exist" in capsys.readouterr().err
    (tmp_path / "stage1").mkdir()
    assert main(args) == 2
    assert "is a folder without a config.json" in capsys.readouterr().err


def test_evaluation_needs_held_out_data(tmp_path):
    path = EXAMPLES / "llava_v1_stage2.yaml"
    with pytest.raises(RecipeError, match=r"training\.eval_strategy=steps needs held-out data: data\.eval_path"):
        load_recipe(path, ["training.eval_strategy=steps"])
    recipe = load_recipe(path, ["training.eval_strategy=steps", "data.eval_path=held_out.json"])
    assert recipe.data.eval_path == "held_out.json"
    with pytest.raises(RecipeError, match=r"data\.eval_path: held_out\.json does not exist"):
        _load_recipe(path, ["training.eval_strategy=steps", "data.eval_path=held_out.json"], check_files=True)


def test_held_out_data_and_evaluation_settings_do_not_change_the_run():
    path = EXAMPLES / "llava_v1_stage2.yaml"
    assert load_recipe(path).identity() == load_recipe(path, [
        "data.eval_path=held_out.json", "training.eval_strategy=steps", "training.eval_steps=50"]).identity()


def test_string_values_pass_through_as_written():
    recipe = load_recipe(EXAMPLES / "llava_v1_stage2.yaml", ["training.run_name=--my run", "training.seed=-3"])
    assert (recipe.training.run_name, recipe.training.seed) == ("--my run", -3)
