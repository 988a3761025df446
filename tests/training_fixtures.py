"""Fixtures for running the example recipes on tiny models and tiny data (import them into a test module).

`towers`: a tiny CLIP tower and a tiny Llama saved locally; `base_checkpoint`: a LLaVA built from them (what stage 1
hands to stage 2, ScienceQA and LoRA); `tiny_data`: colored squares as caption pairs (`captions.json`) and
conversations (`conversations.json`) in the original LLaVA formats; `tiny_overrides` points a recipe at them.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from transformers_llava.builder import build_llava
from transformers_llava.demo.tiny import save_tiny_towers
from transformers_llava.formats.instructions import load_instructions

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SCIENCEQA = ROOT / "tests" / "fixtures" / "scienceqa"
COLORS = ["red", "green", "blue", "yellow"]


@pytest.fixture(scope="session")
def towers(tmp_path_factory):
    corpus = list(load_instructions()["brief"]) + [f"A {c} square. {c.capitalize()}. What color is it?" for c in COLORS]
    return save_tiny_towers(tmp_path_factory.mktemp("towers"), corpus)


@pytest.fixture(scope="session")
def base_checkpoint(towers, tmp_path_factory):
    torch.manual_seed(0)
    model, processor = build_llava(*towers)
    directory = tmp_path_factory.mktemp("base") / "llava"
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "images").mkdir()
    captions, conversations = [], []
    for index in range(16):
        color = COLORS[index % len(COLORS)]
        name = f"{index:03d}.png"
        Image.new("RGB", (32, 32), color).save(root / "images" / name)
        captions.append({"id": name, "image": name, "caption": f"A {color} square."})
        conversations.append({"id": name, "image": name, "conversations": [
            {"from": "human", "value": "<image>\nWhat color is it?"}, {"from": "gpt", "value": color.capitalize()},
            {"from": "human", "value": "And the shape?"}, {"from": "gpt", "value": "A square."}]})
    (root / "captions.json").write_text(json.dumps(captions))
    (root / "conversations.json").write_text(json.dumps(conversations))
    # ScienceQA: the fixture's problems and splits, with the images its train split needs.
    problems = json.loads((SCIENCEQA / "problems.json").read_text())
    train = json.loads((SCIENCEQA / "pid_splits.json").read_text())["train"]
    for pid in train:
        if problems[pid]["image"]:
            (root / "scienceqa" / pid).mkdir(parents=True)
            Image.new("RGB", (40, 30), "white").save(root / "scienceqa" / pid / problems[pid]["image"])
    return root


def tiny_overrides(recipe: Path, towers, base_checkpoint, tiny_data, output_dir, **training) -> list[str]:
    """Overrides that run `recipe` on the tiny model and data for a couple of steps: only paths and sizes change."""
    import yaml

    raw = yaml.safe_load(recipe.read_text())
    overrides = []
    if raw["model"].get("checkpoint"):
        overrides.append(f"model.checkpoint={base_checkpoint}")
    else:
        overrides += [f"model.vision_tower={towers[0]}", f"model.language_model={towers[1]}"]
    data = {"captions": (tiny_data / "captions.json", tiny_data / "images"),
            "llava_json": (tiny_data / "conversations.json", tiny_data / "images"),
            "scienceqa": (SCIENCEQA, tiny_data / "scienceqa")}[raw["data"]["format"]]
    overrides += [f"data.path={data[0]}", f"data.image_folder={data[1]}", f"training.output_dir={output_dir}"]
    settings = {"max_steps": 2, "global_batch_size": 4, "per_device_train_batch_size": 2, "dataloader_num_workers": 0,
                **training}
    return overrides + [f"training.{key}={value}" for key, value in settings.items()]


def run_cli(args: list[str], timeout: float = 600, popen: dict | None = None):
    """`python -m transformers_llava.cli ...` in a child process that imports this checkout's package (started
    and returned at once with `popen=` Popen options, else run to the end)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "transformers_llava.cli", *args]
    if popen is not None:
        return subprocess.Popen(command, env=env, cwd=ROOT, **popen)
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
