"""Each recipe in examples/ runs end to end for two optimizer steps on a tiny model and tiny data (only paths and
sizes overridden) through `transformers-llava train`; what it saves is a model (or LoRA adapter) with its
processor, its training record and its model card. (examples/train_llava.py runs in test_recipes_lora.py.)"""

import json
import shutil

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


def test_training_data_that_leaves_no_sample_stops_with_the_reason(towers, base_checkpoint, tiny_data, tmp_path,
                                                                   capfd):
    path = EXAMPLES / "llava_v1_stage2.yaml"
    base = tiny_overrides(path, towers, base_checkpoint, tiny_data, tmp_path / "out")
    empty_folder = tmp_path / "no_images"
    empty_folder.mkdir()
    # Every image missing: the skip report is printed as the error, not `Column 'length' doesn't exist`.
    assert main([str(path), *override_args(base + [f"data.image_folder={empty_folder}"])]) == 4
    error = capfd.readouterr().err
    assert (f"invalid data: {tiny_data / 'conversations.json'}: 0 valid samples of 16; first skipped: id 000.png: "
            f"image file not found: {empty_folder / '000.png'}") in error and "  015.png: image file not found" in error
    # Every sample over max_length: said so, not a bare StopIteration from TRL.
    assert main([str(path), *override_args(base + ["data.max_length=20", f"training.output_dir={tmp_path / 'o2'}"])
                 ]) == 4
    assert "all 16 samples are over max_length=20 tokens" in capfd.readouterr().err
    # The same with a stream, whose samples are only seen as they stream past.
    assert main([str(path), *override_args(base + [f"data.image_folder={empty_folder}", "data.streaming=true",
                                                   f"training.output_dir={tmp_path / 'o3'}"])]) == 4
    assert "no sample passed the checks: every one was invalid or over data.max_length=2048" in capfd.readouterr().err


def test_a_corrupt_image_is_skipped_at_load_and_training_runs(towers, base_checkpoint, tiny_data, tmp_path, capfd):
    """Four samples, one image cut short: two steps of four samples see every sample (and would decode it)."""
    images = tmp_path / "images"
    shutil.copytree(tiny_data / "images", images)
    records = json.loads((tiny_data / "conversations.json").read_text())[:4]
    png = (images / records[1]["image"]).read_bytes()
    (images / records[1]["image"]).write_bytes(png[: len(png) // 2])
    data = tmp_path / "four.json"
    data.write_text(json.dumps(records))
    path = EXAMPLES / "llava_v1_stage2.yaml"
    overrides = tiny_overrides(path, towers, base_checkpoint, tiny_data, tmp_path / "out") + [
        f"data.path={data}", f"data.image_folder={images}"]
    assert main([str(path), *override_args(overrides)]) == 0
    out = capfd.readouterr().out
    assert f"{data}: invalid samples: kept 3 samples, dropped 1" in out and "image file is cut short" in out
    stage = read_training_record(tmp_path / "out")["stages"][-1]
    assert (stage["steps"], stage["data"]["samples"], stage["data"]["dropped"]) == (2, 3, 1)


def test_sft_config_fields_the_old_schema_lacked_reach_the_trainer(towers, base_checkpoint, tiny_data, tmp_path,
                                                                   capfd):
    """A recipe's training section is SFTConfig: evaluation on held-out data and gradient clipping just work."""
    path = EXAMPLES / "llava_v1_stage2.yaml"
    overrides = tiny_overrides(path, towers, base_checkpoint, tiny_data, tmp_path / "out") + [
        "training.eval_strategy=steps", "training.eval_steps=1", "training.per_device_eval_batch_size=8",
        f"data.eval_path={tiny_data / 'conversations.json'}", "training.max_grad_norm=0.25"]
    assert main([str(path), *override_args(overrides)]) == 0
    out = capfd.readouterr().out
    assert out.count("'eval_loss'") == 2  # after each of the two steps
    assert float(out.split("'grad_norm': ")[1].split(",")[0].strip("'")) > 0
    stage = read_training_record(tmp_path / "out")["stages"][-1]
    assert dict(stage["hyperparameters"])["max_grad_norm"] == 0.25
