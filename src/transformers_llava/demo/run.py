"""The embedded default: build a tiny LLaVA locally, train both of the paper's stages on a bundled synthetic visual
task through TRL's `SFTTrainer`, and evaluate it on held-out images next to an image-blind baseline.

    transformers-llava demo                  # a few minutes on 2 CPU cores, no downloads
    transformers-llava demo --out runs/demo --train 3000 --seed 1

The synthetic task (`transformers_llava.demo.synthetic`) asks about the color, shape, count and side of drawn
shapes: questions only the image can answer. The baseline is the same model trained the same way on blanked images.
Each run leaves `stage1/` (the feature-aligned checkpoint) and `model/` (after stage 2), both with a model card that
records how they were trained.
"""

import argparse
import json
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm
from trl import SFTConfig

from ..builder import build_llava
from .synthetic import BACKGROUND, CHANCE, vocabulary, write_synthetic_task
from ..formats.instructions import load_instructions
from .tiny import save_tiny_towers
from ..training.data import load_captions, load_llava_json
from ..checkpoints.model_card import STAGE_WHAT, provenance, set_provenance
from ..training.trainer import make_trainer


def sft_config(output_dir: Path, learning_rate: float, epochs: float, seed: int) -> SFTConfig:
    return SFTConfig(
        output_dir=str(output_dir), learning_rate=learning_rate, num_train_epochs=epochs,
        per_device_train_batch_size=16, lr_scheduler_type="cosine", warmup_steps=0.03, weight_decay=0.0,
        activation_checkpointing=False, save_strategy="no", report_to=[], logging_steps=25,
        seed=seed, data_seed=seed, use_cpu=True, dataloader_num_workers=0,
    )


def train_stage(model, processor, rows, data_path: Path, stage: str, args, output_dir: Path, learning_rate: float,
                epochs: float):
    """One stage through `SFTTrainer`, recorded in the model's training record; the checkpoint is saved (with its
    model card) to `output_dir`."""
    config = sft_config(output_dir, learning_rate, epochs, args.seed)
    record = provenance(model.config)
    record["stages"].append({
        "stage": stage, "what": STAGE_WHAT[stage], "recipe": "transformers-llava demo",
        "data": {"format": "LLaVA JSON" if stage == "stage2" else "captions", "path": str(data_path),
                 "samples": len(rows), "dropped": 0, "chat_template": None},
        "hyperparameters": [["learning_rate", learning_rate], ["epochs", epochs],
                            ["per_device_batch_size", config.per_device_train_batch_size],
                            ["lr_scheduler", config.lr_scheduler_type], ["seed", args.seed]]})
    trainer = make_trainer(model, processor, rows, config, stage=stage)
    result = trainer.train()
    record["stages"][-1].update(steps=trainer.state.global_step, train_loss=result.training_loss,
                                finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    set_provenance(model.config, record)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)


def train(paths: dict, towers: tuple[Path, Path], out: Path, args) -> tuple:
    """Stage 1 (projector only, on captions) then stage 2 (projector + LLM, on conversations); the checkpoints go to
    `out/stage1` and `out/model`.

    The learning rates and epochs are this tiny task's, not the paper's (2e-3 / 1 epoch, 2e-5 / 3 epochs for 13B):
    1,500 images instead of 595K, and a language model that starts from random weights."""
    torch.manual_seed(args.seed)
    model, processor = build_llava(*towers, projector_type="mlp2x_gelu")
    record = provenance(model.config)
    record["base_models"] = {"vision_tower": f"tiny random CLIP ({towers[0]})",
                             "language_model": f"tiny random Llama ({towers[1]})"}
    set_provenance(model.config, record)
    captions, _ = load_captions(paths["stage1"], paths["images"], seed=args.seed)
    train_stage(model, processor, captions, paths["stage1"], "stage1", args, out / "stage1", 1e-2, args.stage1_epochs)
    conversations, _ = load_llava_json(paths["stage2"], paths["images"])
    train_stage(model, processor, conversations, paths["stage2"], "stage2", args, out / "model", 2e-3, args.epochs)
    return model.eval(), processor


def first_word(text: str) -> str:
    words = re.findall(r"[a-z]+", text.lower())
    return words[0] if words else ""


@torch.no_grad()
def evaluate(model, processor, test_rows: list[dict], images: Path, blank: bool = False, batch_size: int = 32):
    """Greedy answers to the held-out questions; accuracy per question kind (the first word must match)."""
    correct: dict[str, list[bool]] = {}
    for start in tqdm(range(0, len(test_rows), batch_size), desc="evaluating", leave=False):
        rows = test_rows[start:start + batch_size]
        prompts = [processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row["question"]}]}],
            add_generation_prompt=True) for row in rows]
        pictures = [Image.new("RGB", (32, 32), BACKGROUND) if blank else Image.open(images / row["image"])
                    for row in rows]
        inputs = processor(images=pictures, text=prompts, padding=True, return_tensors="pt")
        output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        answers = processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        for row, answer in zip(rows, answers):
            correct.setdefault(row["kind"], []).append(first_word(answer) == row["answer"])
    return {kind: sum(hits) / len(hits) for kind, hits in correct.items()} | {
        "all": sum(sum(h) for h in correct.values()) / sum(len(h) for h in correct.values())}


def report(trained: dict, blind: dict, seconds: float) -> str:
    lines = ["", "Held-out image-dependent questions (accuracy):", "",
             f"| {'question':<8} | {'LLaVA':>7} | {'image-blind':>11} | {'best blind guess':>16} |",
             f"|{'-' * 10}|{'-' * 9}|{'-' * 13}|{'-' * 18}|"]
    def cell(accuracy: float | None) -> str:
        return "no test" if accuracy is None else f"{accuracy:.1%}"  # a kind a tiny --test may not draw

    for kind in [*CHANCE, "all"]:
        chance = f"{CHANCE[kind]:.0%}" if kind in CHANCE else ""
        lines.append(f"| {kind:<8} | {cell(trained.get(kind)):>7} | {cell(blind.get(kind)):>11} | {chance:>16} |")
    lines.append(f"\nboth runs trained and evaluated in {seconds / 60:.1f} min")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="transformers-llava demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="where data, models and results go")
    parser.add_argument("--train", type=int, default=1500, help="training images")
    parser.add_argument("--test", type=int, default=200, help="held-out images")
    parser.add_argument("--stage1-epochs", type=float, default=3, help="stage-1 epochs")
    parser.add_argument("--epochs", type=float, default=5, help="stage-2 epochs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.time()
    # 32 px images in 16 px patches: 4 image tokens, one per quadrant of the picture.
    corpus = vocabulary() + list(load_instructions()["brief"])
    towers = save_tiny_towers(args.out / "towers", corpus, image_size=32, patch_size=16, vision_hidden=64,
                              text_hidden=128, seed=args.seed)
    print("The towers are built locally with random weights: everything the model knows comes from this run.")
    results = {}
    for name, blank in (("llava", False), ("image_blind", True)):
        print(f"\n== {'image-blind baseline: the same training on blanked images' if blank else 'LLaVA'} ==")
        paths = write_synthetic_task(args.out / f"data_{name}", args.train, args.test, seed=args.seed, blank=blank)
        model, processor = train(paths, towers, args.out / name, args)
        test_rows = json.loads(paths["test"].read_text())
        results[name] = evaluate(model, processor, test_rows, paths["images"], blank=blank)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(report(results["llava"], results["image_blind"], time.time() - started))
    print(f"\nmodel: {args.out / 'llava' / 'model'}   results: {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
