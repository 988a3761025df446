"""Every recipe in examples/ loads and validates; bad recipes fail naming the file, the key and the numbers."""

from pathlib import Path

import pytest
import yaml

from transformers_llava.training.cli import main
from transformers_llava.training.recipes import RecipeError, load_recipe, recipe_from_dict

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RECIPES = sorted(EXAMPLES.glob("*.yaml"))


def test_there_is_a_recipe_for_each_paper_setting():
    assert {p.stem for p in RECIPES} >= {"llava_v1_stage1", "llava_v1_stage2", "llava_v1_5_stage1",
                                         "llava_v1_5_stage2", "scienceqa", "lora"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_loads_and_validates(path):
    recipe = load_recipe(path, num_processes=8)
    t = recipe.training
    assert t.per_device_batch_size * 8 * recipe.gradient_accumulation_steps == t.global_batch_size
    # The settings the paper and the original scripts share: Adam without weight decay, cosine, 3 % warmup, bf16.
    assert (t.weight_decay, t.lr_scheduler_type, t.warmup_ratio, t.bf16, t.gradient_checkpointing) == (
        0.0, "cosine", 0.03, True, True)
    assert "#" in path.read_text(), "recipes are commented"


@pytest.mark.parametrize("name, lr, batch, epochs", [
    ("llava_v1_stage1", 2e-3, 128, 1), ("llava_v1_stage2", 2e-5, 32, 3),
    ("llava_v1_5_stage1", 1e-3, 256, 1), ("llava_v1_5_stage2", 2e-5, 128, 1),
    ("scienceqa", 2e-5, 128, 12), ("lora", 2e-4, 128, 1),
])
def test_recipes_hold_the_published_hyperparameters(name, lr, batch, epochs):
    recipe = load_recipe(EXAMPLES / f"{name}.yaml")
    assert (recipe.training.learning_rate, recipe.training.global_batch_size, recipe.training.num_train_epochs) == (
        lr, batch, epochs)


def test_variant_specific_settings():
    v15 = load_recipe(EXAMPLES / "llava_v1_5_stage1.yaml")
    assert (v15.model.projector_type, v15.model.image_aspect_ratio, v15.model.conversation_format,
            v15.data.chat_template, v15.data.max_length) == ("mlp2x_gelu", "pad", "vicuna_v1", "plain", 2048)
    lora = load_recipe(EXAMPLES / "lora.yaml")
    assert (lora.stage, lora.lora.r, lora.lora.alpha, lora.training.projector_lr) == ("lora", 128, 256, 2e-5)
    # the released finetuning scripts group samples by modality length; its pretraining (all with images) does not
    assert [load_recipe(EXAMPLES / name).training.group_by_modality_length for name in
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
    ({"training__learning_rate": "fast"}, 1, r"training\.learning_rate: expected float, got 'fast'"),
    ({"training__per_device_batch_size": 2.5}, 1, r"per_device_batch_size: expected int, got 2\.5"),
    ({"training__bf16": "yes"}, 1, r"training\.bf16: expected bool, got 'yes'"),
    ({"data__on_invalid": "ignore"}, 1, r"data\.on_invalid: expected 'fail' \| 'skip', got 'ignore'"),
    ({"training__per_device_batch_size": 3}, 1,
     r"global_batch_size=32 is not divisible by per_device_batch_size=3 x 1 process\(es\) = 3"),
    ({}, 3, r"global_batch_size=32 is not divisible by per_device_batch_size=4 x 3 process\(es\) = 12"),
    ({"training__output_dir": None}, 1, r"training: missing required key\(s\) output_dir"),
    ({"model__vision_tower": "openai/clip"}, 1, r"model: give either checkpoint .* not both"),
    ({"model__projector_type": "mlp2x_gelu", "model__checkpoint": "x"}, 1,
     r"model\.projector_type only applies when building from towers"),
    ({"data__streaming": True}, 1, r"data\.streaming needs training\.max_steps > 0"),
    ({"data__streaming": True, "training__max_steps": 10, "training__group_by_modality_length": True}, 1,
     r"training\.group_by_modality_length needs the whole dataset .* data\.streaming=true"),
    ({"data__chat_template": "chatml"}, 1, r"data\.chat_template: unknown conversation format 'chatml'"),
    ({"data__prompt_format": "QCM-LEPA"}, 1, r"data\.prompt_format only applies to data\.format scienceqa"),
    ({"training__warmup_ratio": 3}, 1, r"training\.warmup_ratio must be in \[0, 1\), got 3"),
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


def test_identity_changes_with_what_changes_the_weights():
    path = EXAMPLES / "llava_v1_stage2.yaml"
    base = load_recipe(path).identity()
    assert load_recipe(path, ["training.logging_steps=50", "training.output_dir=elsewhere",
                              "training.save_steps=7"]).identity() == base
    assert load_recipe(path, ["training.learning_rate=3e-5"]).identity() != base
    assert load_recipe(path, ["data.path=other.json"]).identity() != base


def test_cli_check_prints_the_resolved_batch(capsys):
    assert main([str(EXAMPLES / "llava_v1_stage1.yaml"), "--check"]) == 0
    assert "1 process(es) x 16 per device x 8 accumulation steps = global batch 128" in capsys.readouterr().out
    assert main([str(EXAMPLES / "llava_v1_stage1.yaml"), "--check", "-o", "training.per_device_batch_size=7"]) == 2
    assert "not divisible by per_device_batch_size=7" in capsys.readouterr().err
