"""The embedded default (`./demo.sh` runs `transformers-llava demo`): the synthetic task only the image can answer,
and the whole demo — tiny towers, both stages through SFTTrainer, evaluation next to an image-blind baseline — at a
size that runs in seconds. The full-size run's accuracy is measured by the demo itself (README)."""

import json
from collections import Counter

import numpy as np
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from transformers_llava.demo import main
from transformers_llava.synthetic import CHANCE, COLORS, write_synthetic_task


def test_the_synthetic_task_needs_the_image(tmp_path):
    paths = write_synthetic_task(tmp_path / "task", n_train=60, n_test=40, seed=3)
    stage1, stage2, test = (json.loads(paths[split].read_text()) for split in ("stage1", "stage2", "test"))
    assert len(stage1) == len(stage2) == 60 and {row["image"] for row in test} <= {f"test_{i:06d}.png"
                                                                                    for i in range(60, 100)}
    for row in test:  # the color answer is the color drawn in the image
        if row["kind"] == "color":
            pixels = np.asarray(Image.open(paths["images"] / row["image"])).reshape(-1, 3)
            colors = {tuple(p) for p in pixels} - {(128, 128, 128)}
            assert tuple(COLORS[row["answer"]]) in colors
    # a blind guess of the most frequent answer is right about as often as CHANCE says
    for kind, chance in CHANCE.items():
        answers = Counter(row["answer"] for row in test if row["kind"] == kind)
        assert max(answers.values()) / sum(answers.values()) < chance + 0.35, (kind, answers)
    blank = write_synthetic_task(tmp_path / "blank", n_train=4, n_test=2, seed=3, blank=True)
    train_image = np.asarray(Image.open(blank["images"] / "train_000000.png"))
    assert (train_image == 128).all()  # blanked: nothing to learn from
    assert not (np.asarray(Image.open(blank["images"] / "test_000004.png")) == 128).all()  # held-out images are not


def test_the_demo_trains_both_models_and_reports_every_question(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--train", "48", "--test", "16", "--epochs", "1"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    for name in ("llava", "image_blind"):
        assert set(results[name]) == {*CHANCE, "all"} and all(0 <= v <= 1 for v in results[name].values())
    printed = capsys.readouterr().out
    assert "| question |   LLaVA | image-blind | best blind guess |" in printed
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "llava" / "model")  # loads like any checkpoint
    processor = AutoProcessor.from_pretrained(tmp_path / "llava" / "model")
    assert type(model).__name__ == "TransformersLlavaForConditionalGeneration" and processor.tokens_per_image == 4
