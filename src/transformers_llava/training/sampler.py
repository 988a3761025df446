"""Optimizer steps of one modality, their micro-batches balanced by length — LLaVA-1.5's `group_by_modality_length`.

    sampler = ModalityLengthGroupedSampler(modality_lengths(dataset), micro_batch=16, micro_batches_per_step=8,
                                           seed=42)

LLaVA-1.5 finetunes on a mix of image conversations and text-only ones (ShareGPT). Its released recipe draws every
optimizer step from one modality only, and spreads a step's samples over the devices' micro-batches so that each
holds about as many words. Sample lengths are the original's cheap proxy: the words of the conversation, positive
for a sample with images and negative for a text-only one.

The order for an epoch is fixed by `seed + epoch` (`set_epoch`, which `Trainer` calls), so a resumed run sees the
same batches as an uninterrupted one.
"""

from collections.abc import Iterator

import datasets
import torch
from torch.utils.data import Sampler


def modality_lengths(dataset: datasets.Dataset) -> list[int]:
    """Per sample, its words (at least 1), negated for a sample without images."""
    if not isinstance(dataset, datasets.Dataset):
        raise ValueError(
            f"group_by_modality_length needs a dataset with a length to order (a datasets.Dataset), not "
            f"{type(dataset).__name__}: load the data without streaming=True, or train without grouping."
        )
    columns = dataset.select_columns(["messages", "images"])
    lengths = []
    for messages, images in zip(columns["messages"], columns["images"]):
        words = sum(len((part.get("text") or "").split()) for message in messages for part in message["content"])
        lengths.append(max(words, 1) if images else -max(words, 1))
    return lengths


def _balanced_micro_batches(step: list[int], lengths: list[int], count: int) -> list[list[int]]:
    """Deal a step's samples, longest first, to the micro-batch with the fewest words that still has room."""
    size = -(-len(step) // count)
    batches, totals = [[] for _ in range(count)], [0] * count
    for index in sorted(step, key=lambda i: abs(lengths[i]), reverse=True):
        open_batches = [b for b in range(count) if len(batches[b]) < size]
        target = min(open_batches, key=lambda b: totals[b])
        batches[target].append(index)
        totals[target] += abs(lengths[index])
    return [batch for batch in batches if batch]


def grouped_indices(lengths: list[int], micro_batch: int, micro_batches_per_step: int,
                    generator: torch.Generator) -> list[int]:
    """Every sample once. Full steps hold one modality and come in random order; the remainders of both
    modalities form one last, mixed step."""
    step_size = micro_batch * micro_batches_per_step
    steps, remainder = [], []
    for modality in (True, False):
        members = [i for i, n in enumerate(lengths) if (n > 0) == modality]
        shuffled = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
        full = len(shuffled) - len(shuffled) % step_size
        steps += [shuffled[start:start + step_size] for start in range(0, full, step_size)]
        remainder += shuffled[full:]
    steps = [steps[i] for i in torch.randperm(len(steps), generator=generator).tolist()]
    if remainder:
        steps.append(remainder)
    return [index for step in steps
            for batch in _balanced_micro_batches(step, lengths, micro_batches_per_step) for index in batch]


class ModalityLengthGroupedSampler(Sampler[int]):
    """Indices in `grouped_indices` order; a step is `micro_batch * micro_batches_per_step` samples (per-device
    batch x devices x gradient accumulation)."""

    def __init__(self, lengths: list[int], *, micro_batch: int, micro_batches_per_step: int, seed: int):
        if any(n == 0 for n in lengths):
            raise ValueError("Modality lengths must be non-zero: positive with images, negative without.")
        self.lengths, self.micro_batch, self.micro_batches_per_step = list(lengths), micro_batch, micro_batches_per_step
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(grouped_indices(self.lengths, self.micro_batch, self.micro_batches_per_step, generator))


__all__ = ["ModalityLengthGroupedSampler", "modality_lengths", "grouped_indices"]
