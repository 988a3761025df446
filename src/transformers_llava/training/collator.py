"""A data collator for LLaVA conversations, padded or padding-free, for `SFTTrainer(data_collator=...)`.

    collator = LlavaDataCollator(processor)                      # rows padded on the right
    collator = LlavaDataCollator(processor, padding_free=True)   # all samples in one row, positions restart per sample
    trainer = SFTTrainer(model, args, train_dataset=dataset, processing_class=processor, data_collator=collator)

It gives the same `input_ids` and `labels` as TRL's vision collator with `assistant_only_loss=True` (each answer
and its stop token supervised, nothing else), from `processor.encode_conversation`: the text is tokenised once with
one placeholder per image, labels come from the template's `{% generation %}` spans, and each placeholder is then
repeated into the tower's token count. Padding-free batches carry `position_ids` and no
`attention_mask`; the model gives each packed sample the hidden states it would have alone.
"""

from dataclasses import dataclass

import numpy as np
import torch

from ..processing_llava import IGNORE_INDEX as IGNORE


@dataclass
class LlavaDataCollator:
    processor: object
    padding_free: bool = False
    pad_to_multiple_of: int | None = None
    chat_template: str | None = None

    def encode(self, example: dict, tokens_per_image: int) -> tuple[np.ndarray, np.ndarray]:
        """One conversation -> (input_ids, labels), images expanded (`processor.encode_conversation`)."""
        encoded = self.processor.encode_conversation(
            example["messages"], example.get("images") or [], chat_template=self.chat_template,
            tokens_per_image=tokens_per_image, sample_id=example.get("id", "?"))
        return encoded.input_ids, encoded.labels

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        images = [image for example in examples for image in (example.get("images") or [])]
        batch = {}
        tokens_per_image = 0
        if images:
            pixel_values = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
            batch["pixel_values"] = pixel_values
            tokens_per_image = self.processor.num_image_tokens(*pixel_values.shape[-2:])
        encoded = [self.encode(example, tokens_per_image) for example in examples]
        if self.padding_free:
            batch["input_ids"] = torch.from_numpy(np.concatenate([ids for ids, _ in encoded]))[None]
            batch["labels"] = torch.from_numpy(np.concatenate([labels for _, labels in encoded]))[None]
            batch["position_ids"] = torch.cat([torch.arange(len(ids)) for ids, _ in encoded])[None]
            return batch
        length = max(len(ids) for ids, _ in encoded)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        pad = self.processor.tokenizer.pad_token_id
        batch["input_ids"] = torch.full((len(encoded), length), pad, dtype=torch.long)
        batch["labels"] = torch.full((len(encoded), length), IGNORE, dtype=torch.long)
        batch["attention_mask"] = torch.zeros((len(encoded), length), dtype=torch.long)
        for row, (ids, labels) in enumerate(encoded):
            batch["input_ids"][row, : len(ids)] = torch.from_numpy(ids)
            batch["labels"][row, : len(ids)] = torch.from_numpy(labels)
            batch["attention_mask"][row, : len(ids)] = 1
        return batch


__all__ = ["LlavaDataCollator"]
