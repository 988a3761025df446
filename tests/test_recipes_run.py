"""Each recipe in examples/ runs end to end for two optimizer steps on a tiny model and tiny data (only paths and
sizes overridden) through `transformers-llava train`; what it saves is a model (or LoRA adapter) with its
processor, its training record and its model card. (examples/train_llava.py runs in test_recipes_lora.py.)"""

import json

import pytest
import yaml
from transformers import AutoProcessor

from training_fixtures import EXAMPLES, base_checkpoint, tiny_data, tiny_overrides, towers  # noqa: F401
from transformers_llava.chat_templates import load_chat_template
from transformers_llava.checkpoints.training_record import read_training_record
from transformers_llava.training.checkpointing import read_run
from transformers_llava.training.cli import main

RECIPES = sorted(EXAMPLES.glob("*.yaml"))


def override_args(overrides):
    return [arg for override in overrides for arg in ("--override", override)]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_trains_two_steps_and_saves(path, towers, base_checkpoint, tiny_data, tmp_path, capfd):
    out = tmp_path / "out"
    assert main([str(path), *override_args(tiny_overrides(path, towers, base_checkpoint, tiny_data, out))]) == 0
    logs = capfd.readouterr()
    raw = yaml.safe_load(path.read_text())
    assert read_run(out)["finished"]
    card = (out / "README.md").read_text()
    assert "## Training" in card and "| optimizer steps | 2 |" in card
    # Progress bars: reading and checking the data, and the training steps.
    assert "Map: 100%" in logs.err and "2/2 [" in logs.err
    if path.stem == "lora":
        adapter = json.loads((out / "adapter_config.json").read_text())
        assert adapter["r"] == 128 and adapter["modules_to_save"] == ["multi_modal_projector"]
        assert "LoRA adapter" in card
        return
    stage = read_training_record(out)["stages"][-1]
    assert (stage["stage"], stage["steps"], stage["data"]["format"]) == (raw["stage"], 2, raw["data"]["format"])
    assert stage["data"]["samples"] == (2 if raw["data"]["format"] == "scienceqa" else 16)
    assert dict(stage["hyperparameters"])["learning_rate"] == float(raw["training"]["learning_rate"])
    grouped = raw["training"].get("group_by_modality_length", False)
    assert dict(stage["hyperparameters"]).get("group_by_modality_length", False) == grouped
    # The processor keeps the model's own chat format even when the stage trained in another one (v1.5: plain).
    processor = AutoProcessor.from_pretrained(out)
    expected = "vicuna_v1" if path.stem == "llava_v1_5_stage1" else "llava_v1"
    assert processor.chat_template == load_chat_template(expected)


def test_a_streamed_dataset_trains_without_decoding_up_front(towers, base_checkpoint, tiny_data, tmp_path):
    path = EXAMPLES / "llava_v1_stage2.yaml"
    overrides = tiny_overrides(path, towers, base_checkpoint, tiny_data, tmp_path / "out") + ["data.streaming=true"]
    assert main([str(path), *override_args(overrides)]) == 0
    stage = read_training_record(tmp_path / "out")["stages"][-1]
    assert stage["steps"] == 2 and stage["data"]["samples"] is None  # a stream is not counted
