"""group_by_modality_length: every optimizer step draws from one modality (LLaVA-1.5's finetuning), its micro-batches
balanced by words, each sample once per epoch, the same order for the same seed and epoch — also through
SFTTrainer with several processes' worth of gradient accumulation."""

import json
import random

import pytest
import torch
from datasets import Dataset
from PIL import Image
from trl import SFTConfig

from transformers_llava.training.data import load_llava_json
from transformers_llava.training.sampler import ModalityLengthGroupedSampler, grouped_indices, modality_lengths
from transformers_llava.training.trainer import make_trainer


def random_lengths(n_image: int, n_text: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    lengths = [rng.randint(1, 400) for _ in range(n_image)] + [-rng.randint(1, 400) for _ in range(n_text)]
    rng.shuffle(lengths)
    return lengths


@pytest.mark.parametrize("micro_batch,per_step", [(4, 1), (2, 4), (3, 2)])
def test_full_steps_hold_one_modality_and_every_sample_comes_once(micro_batch, per_step):
    lengths = random_lengths(101, 37)
    order = grouped_indices(lengths, micro_batch, per_step, torch.Generator().manual_seed(0))
    assert sorted(order) == list(range(len(lengths)))
    step = micro_batch * per_step
    full_steps = (101 // step) + (37 // step)
    steps = [order[i:i + step] for i in range(0, len(order), step)]
    for members in steps[:full_steps]:
        assert len({lengths[i] > 0 for i in members}) == 1, members
    assert len(order) - full_steps * step == 101 % step + 37 % step  # the one mixed step holds the remainders


def test_a_steps_micro_batches_are_balanced_by_words():
    lengths = random_lengths(64, 0, seed=3)
    order = grouped_indices(lengths, 4, 4, torch.Generator().manual_seed(1))
    for start in range(0, len(order), 16):
        totals = [sum(lengths[i] for i in order[b:b + 4]) for b in range(start, start + 16, 4)]
        longest = max(lengths[i] for i in order[start:start + 16])
        assert max(totals) - min(totals) <= longest, totals


def test_order_is_fixed_by_seed_and_epoch():
    lengths = random_lengths(40, 20)
    sampler = ModalityLengthGroupedSampler(lengths, micro_batch=2, micro_batches_per_step=2, seed=7)
    first, again = list(sampler), list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert first == again and first != second and sorted(second) == sorted(first)
    assert list(ModalityLengthGroupedSampler(lengths, micro_batch=2, micro_batches_per_step=2, seed=7)) == first
    assert len(sampler) == 60


def test_bad_lengths_and_streams_are_refused():
    with pytest.raises(ValueError, match="non-zero"):
        ModalityLengthGroupedSampler([3, 0, -2], micro_batch=1, micro_batches_per_step=1, seed=0)
    stream = Dataset.from_list([{"messages": [], "images": []}]).to_iterable_dataset()
    with pytest.raises(ValueError, match="streaming=True"):
        modality_lengths(stream)


@pytest.fixture
def mixed(tmp_path):
    """7 image conversations and 5 text-only ones, of different lengths."""
    Image.new("RGB", (32, 32), "red").save(tmp_path / "red.png")
    records = []
    for i in range(12):
        answer = " ".join(["word"] * (1 + 3 * i))
        turns = [{"from": "human", "value": ("<image>\n" if i < 7 else "") + "Describe it."},
                 {"from": "gpt", "value": answer}]
        records.append({"id": f"s{i}", "conversations": turns, **({"image": "red.png"} if i < 7 else {})})
    (tmp_path / "data.json").write_text(json.dumps(records))
    dataset, _ = load_llava_json(tmp_path / "data.json", tmp_path)
    return dataset


def test_modality_lengths_count_words_and_sign_the_modality(mixed):
    lengths = modality_lengths(mixed)
    assert lengths[:7] == [1 + 1 + 3 * i + 1 for i in range(7)]  # "Describe it." + the answer's words
    assert lengths[7:] == [-(2 + 1 + 3 * i) for i in range(7, 12)]


def test_sft_trainer_steps_are_single_modality(tiny, mixed, tmp_path):
    model, processor = tiny
    args = SFTConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                     num_train_epochs=2, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
                     gradient_checkpointing=False, seed=3)
    trainer = make_trainer(model, processor, mixed, args, stage="stage2", group_by_modality_length=True)
    seen = []  # the samples of each micro-batch, by their answer (Trainer drops the unused `id` column)
    answer = lambda row: row["messages"][1]["content"][-1]["text"]  # noqa: E731
    collate = trainer.data_collator
    trainer.data_collator = lambda rows: seen.append([answer(row) for row in rows]) or collate(rows)
    trainer.train()
    has_image = {answer(row): bool(row["images"]) for row in mixed}
    micro_batches_per_epoch = len(seen) // 2
    for epoch in (seen[:micro_batches_per_epoch], seen[micro_batches_per_epoch:]):
        assert sorted(i for batch in epoch for i in batch) == sorted(has_image)
        steps = [epoch[i] + epoch[i + 1] for i in range(0, len(epoch) - 1, 2)]
        full = 7 // 4 + 5 // 4
        assert all(len({has_image[i] for i in step}) == 1 for step in steps[:full]), steps
    assert seen[:micro_batches_per_epoch] != seen[micro_batches_per_epoch:]  # reshuffled per epoch
