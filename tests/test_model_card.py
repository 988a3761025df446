"""The model card: `save_pretrained` writes it, `push_to_hub` uploads it (not transformers' generic card), it shows
the base models, the stages with their data and hyperparameters and evaluation results, and it ships in the
installed package."""

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from transformers import AutoModelForImageTextToText

from fake_hub import FakeHub
from transformers_llava.checkpoints.model_card import (
    TEMPLATE,
    provenance,
    record_evaluation,
    set_provenance,
    template_text,
)
from transformers_llava.checkpoints.training_record import PROVENANCE, RECORD_FILE, read_training_record

ROOT = Path(__file__).resolve().parents[1]
STAGE = {"stage": "stage1", "what": "feature alignment", "recipe": "examples/llava_v1_stage1.yaml",
         "data": {"format": "captions", "path": "cc3m/metadata.json", "samples": 595375, "dropped": 12,
                  "chat_template": None},
         "hyperparameters": [["learning_rate", 0.002], ["global_batch_size", 128]], "steps": 4651,
         "train_loss": 2.3456, "finished": "2026-01-01T00:00:00+00:00"}


def trained(model):
    set_provenance(model.config, {"base_models": {"vision_tower": "openai/clip-vit-large-patch14",
                                                  "language_model": "lmsys/vicuna-13b-v1.3"}, "stages": [STAGE]})
    return model


def test_save_pretrained_writes_the_card_with_the_training_record(tiny, tmp_path):
    model, _ = tiny
    trained(model).save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("---\nbase_model:\n- openai/clip-vit-large-patch14\n- lmsys/vicuna-13b-v1.3\n")
    assert "pipeline_tag: image-text-to-text" in card
    assert "### 1. stage1: feature alignment" in card
    assert "Data: `cc3m/metadata.json` (captions, 595,375 samples, 12 dropped)." in card
    assert "| learning_rate | 0.002 |\n| global_batch_size | 128 |" in card  # in the recorded order
    assert "| optimizer steps | 4651 |" in card and "| mean training loss | 2.3456 |" in card
    assert "## Evaluation" not in card  # no results yet
    # The record travels with the weights: loading and saving again keeps it.
    again = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert provenance(again.config)["stages"] == [STAGE]


def test_the_record_is_its_own_file_and_older_checkpoints_still_read(tiny, tmp_path):
    import json

    model, _ = tiny
    trained(model).save_pretrained(tmp_path / "new")
    assert PROVENANCE not in json.loads((tmp_path / "new" / "config.json").read_text())
    assert json.loads((tmp_path / "new" / RECORD_FILE).read_text())["stages"] == [STAGE]
    assert provenance(model.config)["stages"] == [STAGE]  # still on the model after saving
    # A checkpoint written before the record had its own file: the record is a config.json field.
    old = tmp_path / "old"
    model.save_pretrained(old)
    (old / RECORD_FILE).unlink()
    config = json.loads((old / "config.json").read_text())
    (old / "config.json").write_text(json.dumps({**config, PROVENANCE: {"stages": [STAGE]}}))
    assert read_training_record(old)["stages"] == [STAGE]
    assert provenance(AutoModelForImageTextToText.from_pretrained(old).config)["stages"] == [STAGE]


def test_a_model_never_trained_here_gets_a_card_naming_its_towers(tiny, tmp_path):
    model, _ = tiny
    model.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert "No training record" in card
    assert model.config.vision_config._name_or_path in card
    assert "base_model" not in card.split("---")[1]  # local paths are not Hub models


def test_evaluation_results_are_added_to_a_saved_checkpoint(tiny, tmp_path):
    model, _ = tiny
    trained(model).save_pretrained(tmp_path)
    record_evaluation(tmp_path, "ScienceQA", {"accuracy": 90.92})
    record_evaluation(tmp_path, "LLaVA-Bench (COCO)", {"relative score": 85.1})
    card = (tmp_path / "README.md").read_text()
    assert "| LLaVA-Bench (COCO) | relative score | 85.1 |\n| ScienceQA | accuracy | 90.92 |" in card
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert getattr(loaded.config, PROVENANCE)["evaluation"]["ScienceQA"] == {"accuracy": 90.92}
    assert read_training_record(tmp_path)["evaluation"]["ScienceQA"] == {"accuracy": 90.92}


def test_push_to_hub_uploads_our_card_through_transformers_upload(tiny, tmp_path):
    model, processor = tiny
    trained(model).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    script = textwrap.dedent("""
        import sys
        import transformers_llava
        from transformers import AutoModelForImageTextToText, AutoProcessor
        AutoModelForImageTextToText.from_pretrained(sys.argv[1]).push_to_hub("user/llava-tiny", tags=["my-tag"])
        AutoProcessor.from_pretrained(sys.argv[1]).push_to_hub("user/llava-tiny")   # keeps the card on the Hub
    """)
    with FakeHub() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "hf_test", "HF_HUB_OFFLINE": "0",
               "HF_HUB_DISABLE_XET": "1", "PYTHONPATH": str(ROOT / "src")}
        result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        card = hub.files["user/llava-tiny"]["README.md"].decode()
    assert "# llava-tiny" in card and "### 1. stage1: feature alignment" in card
    assert "- my-tag" in card  # the push's tags are kept
    assert "automatically generated" not in card  # not transformers' generic card
    assert 'from_pretrained("user/llava-tiny")' in card


def test_the_template_ships_inside_the_package(tmp_path):
    assert template_text() == (ROOT / "hub_cards" / "llava_model_card.md.jinja").read_text()
    wheel_dir = tmp_path / "wheel"
    # Built with this environment's setuptools (the test extra), so no package index is needed.
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(wheel_dir), str(ROOT)], capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.fail(f"building the wheel failed: {result.stderr[-2000:]}")
    (wheel,) = wheel_dir.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = archive.read(f"transformers_llava/{TEMPLATE}").decode()
    assert shipped == template_text()
