"""Stage presets (what is trainable), LoRA scoped to the LLM, the projector's own learning rate, and a few real
SFTTrainer steps of each stage."""

import json

import pytest
import torch
from PIL import Image
from trl import SFTConfig

from transformers_llava.training.data import load_llava_json
from transformers_llava.training.stages import (
    ProjectorLearningRate,
    check_qlora_available,
    prepare_stage,
    trainable_parameters,
)
from transformers_llava.training.trainer import make_trainer


def snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("stage, trainable", [
    ("stage1", {"projector"}),
    ("stage2", {"projector", "language_model", "lm_head"}),
])
def test_stage_presets_freeze_the_right_parts(tiny, stage, trainable):
    model, _ = tiny
    report = trainable_parameters(prepare_stage(model, stage))
    for part, count in report.trainable.items():
        assert count == (report.total[part] if part in trainable else 0), part
    assert "trainable" in str(report)


def test_lora_adapts_only_the_llm_and_trains_the_whole_projector(tiny):
    model, _ = tiny
    peft_model = prepare_stage(model, "lora")
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    lora = [n for n in names if "lora_" in n]
    assert lora and all(".language_model." in n for n in lora)
    assert not any("vision_tower" in n for n in names)
    projector = [n for n in names if "multi_modal_projector" in n]
    assert projector and all("modules_to_save" in n for n in projector)
    assert not any("lora_" in n for n in projector)
    targeted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in lora}
    assert targeted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_projector_gets_its_own_learning_rate(tiny):
    model, _ = tiny
    prepare_stage(model, "stage2")
    optimizer = ProjectorLearningRate()(model, lr=2e-5, projector_lr=2e-3, weight_decay=0.1)
    projector_ids = {id(p) for p in model.model.multi_modal_projector.parameters()}
    for group in optimizer.param_groups:
        in_projector = {id(p) in projector_ids for p in group["params"]}
        assert len(in_projector) == 1
        assert group["lr"] == (2e-3 if in_projector.pop() else 2e-5)
        assert group["weight_decay"] == (0.1 if all(p.ndim >= 2 for p in group["params"]) else 0.0)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == sum(
        1 for p in model.parameters() if p.requires_grad)


def test_qlora_says_what_is_missing():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="QLoRA .* needs .*a CUDA GPU"):
        check_qlora_available()


def test_unknown_stage():
    with pytest.raises(ValueError, match="stage3.*stage1, stage2, lora"):
        prepare_stage(None, "stage3")


@pytest.fixture
def shapes(tmp_path):
    records = []
    for i, color in enumerate(["red", "green", "blue", "yellow"] * 2):
        Image.new("RGB", (32, 32), color).save(tmp_path / f"{i}.png")
        records.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat color is it?"}, {"from": "gpt", "value": color}]})
    (tmp_path / "data.json").write_text(json.dumps(records))
    dataset, _ = load_llava_json(tmp_path / "data.json", tmp_path)
    return dataset


def args(tmp_path, **kwargs):
    return SFTConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=3,
                     learning_rate=1e-3, assistant_only_loss=True, max_length=None, save_strategy="no",
                     report_to=[], use_cpu=True, disable_tqdm=True, **kwargs)


@pytest.mark.parametrize("stage, changes, frozen", [
    ("stage1", ["multi_modal_projector"], ["vision_tower", "language_model", "lm_head"]),
    ("stage2", ["multi_modal_projector", "language_model", "lm_head"], ["vision_tower"]),
])
def test_sft_trainer_updates_exactly_the_stage_parameters(tiny, shapes, tmp_path, stage, changes, frozen):
    model, processor = tiny
    before = snapshot(model)
    result = make_trainer(model, processor, shapes, args(tmp_path), stage=stage, projector_lr=1e-2).train()
    assert result.training_loss > 0
    after = snapshot(model)
    for name in before:
        moved = not torch.equal(before[name], after[name])
        if any(part in name for part in frozen):
            assert not moved, name
        elif any(part in name for part in changes) and name.endswith("weight"):
            assert moved, name


def test_lora_training_moves_adapters_and_projector_only(tiny, shapes, tmp_path):
    model, processor = tiny
    base_before = snapshot(model)
    trainer = make_trainer(model, processor, shapes, args(tmp_path), stage="lora", projector_lr=1e-2)
    trainer.train()
    merged = trainer.model.merge_and_unload()
    after = snapshot(merged)
    assert all(torch.equal(base_before[n], after[n]) for n in base_before if "vision_tower" in n)
    assert any(not torch.equal(base_before[n], after[n]) for n in base_before if "multi_modal_projector" in n)
    assert any(not torch.equal(base_before[n], after[n]) for n in base_before if "self_attn.q_proj" in n)


def test_stock_sft_trainer_with_trls_own_collator(tiny, shapes, tmp_path):
    """No helper from this package in the loop: the processor's templates are enough for assistant_only_loss."""
    from trl import SFTTrainer

    model, processor = tiny
    config = args(tmp_path)
    config.max_length = None
    before = model.model.multi_modal_projector.linear_1.weight.clone()
    SFTTrainer(model=prepare_stage(model, "stage2"), args=config, train_dataset=shapes,
               processing_class=processor).train()
    assert not torch.equal(before, model.model.multi_modal_projector.linear_1.weight)
