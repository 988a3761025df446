"""LlavaDataCollator: the same ids and labels as TRL's vision collator, padding-free batches that give every sample
the loss it has alone, and the supervised-positions-only loss equal to the full one."""

import json

import pytest
import torch
from PIL import Image
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from transformers_llava import PACKED_SDPA
from transformers_llava.packed_attention import packed_segments
from transformers_llava.training.collator import LlavaDataCollator
from transformers_llava.training.data import load_llava_json
from transformers_llava.training.trainer import supervised_loss


@pytest.fixture
def dataset(tmp_path):
    records = []
    answers = ["Red.", "A green square on the left, next to nothing at all.", "Blue.", "Yellow circles everywhere."]
    for i, answer in enumerate(answers):
        Image.new("RGB", (32 + 8 * i, 32), ["red", "green", "blue", "yellow"][i]).save(tmp_path / f"{i}.png")
        turns = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": answer}]
        turns += [{"from": "human", "value": "And the color?"}, {"from": "gpt", "value": answer.split()[0]}] * (i % 2)
        records.append({"id": f"s{i}", "image": f"{i}.png", "conversations": turns})
    records.append({"id": "text", "conversations": [{"from": "human", "value": "Hi there"},
                                                    {"from": "gpt", "value": "Hello."}]})
    (tmp_path / "data.json").write_text(json.dumps(records))
    rows, _ = load_llava_json(tmp_path / "data.json", tmp_path)
    return [dict(row) for row in rows]


def test_same_ids_and_labels_as_trls_vision_collator(tiny, dataset):
    _, processor = tiny
    ours = LlavaDataCollator(processor)(dataset)
    theirs = DataCollatorForVisionLanguageModeling(processor=processor, assistant_only_loss=True)(
        [dict(row) for row in dataset])
    for key in ("input_ids", "labels", "attention_mask", "pixel_values"):
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0, msg=key)


def per_sample_losses(model, batch, lengths=None):
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
    labels = batch["labels"]
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], reduction="none")
    if lengths is None:  # padded rows
        return [row[labels[i, 1:] != -100].mean() for i, row in enumerate(losses)]
    row, mask = losses[0], labels[0, 1:] != -100
    starts = torch.tensor([0, *lengths]).cumsum(0)
    return [row[a:b - 1][mask[a:b - 1]].mean() for a, b in zip(starts[:-1], starts[1:])]


@pytest.mark.parametrize("attention", ["sdpa", PACKED_SDPA])
def test_padding_free_gives_each_sample_its_padded_loss(tiny, dataset, attention):
    model, processor = tiny
    model.set_attn_implementation({"text_config": attention})
    padded = LlavaDataCollator(processor)(dataset)
    packed = LlavaDataCollator(processor, padding_free=True)(dataset)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    lengths = padded["attention_mask"].sum(1).tolist()
    assert packed["input_ids"].shape[1] == sum(lengths)
    assert (packed["position_ids"][0] == 0).sum() == len(dataset)
    for a, b in zip(per_sample_losses(model, padded), per_sample_losses(model, packed, lengths)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_supervised_positions_only_loss_equals_the_full_loss(tiny, dataset):
    model, processor = tiny
    for padding_free in (False, True):
        batch = LlavaDataCollator(processor, padding_free=padding_free)(dataset)
        with torch.no_grad():
            full = model(**batch).loss
            compact, log_probs, _ = supervised_loss(model, batch)
        supervised = int((batch["labels"][:, 1:] != -100).sum())
        assert log_probs.shape == (supervised, model.config.text_config.vocab_size)  # the head ran there only
        torch.testing.assert_close(compact, full, rtol=1e-5, atol=1e-6)


def test_gradients_match_between_padded_and_padding_free(tiny, dataset):
    model, processor = tiny
    grads = []
    for padding_free in (False, True):
        model.zero_grad()
        batch = LlavaDataCollator(processor, padding_free=padding_free)(dataset)
        supervised_loss(model, batch)[0].backward()
        grads.append(model.model.multi_modal_projector.linear_1.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_image_count_mismatch_names_the_sample(tiny, dataset):
    _, processor = tiny
    broken = dict(dataset[0], images=dataset[0]["images"] * 2)
    with pytest.raises(ValueError, match=r"Sample s0: 2 image\(s\) but 1 image part"):
        LlavaDataCollator(processor)([broken])


def test_packed_segments_are_found_from_positions():
    assert packed_segments(torch.tensor([[0, 1, 2, 0, 1, 0]]), 6) == [(0, 3), (3, 5), (5, 6)]
    assert packed_segments(torch.tensor([[0, 1, 2, 3]]), 4) is None  # one sample: plain causal attention
    assert packed_segments(torch.tensor([[0, 1], [0, 1]]), 2) is None  # a padded batch, not a packed row


def test_padding_free_training_through_sft_trainer(tiny, dataset, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig

    from transformers_llava.training.trainer import make_trainer

    model, processor = tiny
    args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=5, max_steps=2, report_to=[],
                     save_strategy="no", use_cpu=True, disable_tqdm=True, gradient_checkpointing=False)
    trainer = make_trainer(model, processor, Dataset.from_list(dataset), args, stage="stage2", padding_free=True)
    assert model.config.text_config._attn_implementation == PACKED_SDPA
    assert trainer.train().training_loss > 0


def test_trainer_logs_trls_entropy_and_token_accuracy(tiny, dataset, tmp_path):
    """The supervised-positions-only loss keeps the metrics SFTTrainer logs, computed as from the full logits."""
    from datasets import Dataset
    from trl import SFTConfig

    from transformers_llava.training.trainer import make_trainer

    model, processor = tiny
    args = SFTConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, gradient_checkpointing=False)
    trainer = make_trainer(model, processor, Dataset.from_list(dataset), args, stage="stage2")
    batch = LlavaDataCollator(processor)(dataset)
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        full = model(**batch)
    logits = full.logits[:, :-1].float()
    mask = batch["labels"][:, 1:] != -100
    log_probs = logits[mask].log_softmax(-1)
    accuracy = (logits[mask].argmax(-1) == batch["labels"][:, 1:][mask]).float().mean()
    entropy = -(log_probs.exp() * log_probs).sum(-1).mean()
    torch.testing.assert_close(loss, full.loss, rtol=1e-5, atol=1e-6)
    assert trainer._metrics["eval"]["mean_token_accuracy"][-1] == pytest.approx(accuracy.item(), abs=1e-6)
    assert trainer._metrics["eval"]["entropy"][-1] == pytest.approx(entropy.item(), rel=1e-5)
