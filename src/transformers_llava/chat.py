"""A multi-turn chat about images that keeps the conversation's KV cache between turns.

    chat = LlavaChat(model, processor)
    chat.ask("What is unusual about this image?", images=[Image.open("ironing.jpg")])
    chat.ask("Why might he be doing that?")        # no image re-encoding, no re-reading of earlier turns

Every turn goes through `processor.encode_conversation`, the one path from messages to ids. The conversation so
far is kept as the exact token ids the model read and wrote, with their keys and values in the cache (an answer cut
by `max_new_tokens` is closed with the stop token the template puts after it). A new turn appends only its own tokens — tokenised in context, as they are when the whole conversation is tokenised — and the
model runs on those alone; only images of the new turn are encoded. The first turn, or a template that does not
render a conversation as an extension of its earlier turns, re-tokenises instead and reuses the cache for the longest
shared prefix, never splitting an image.
"""

import numpy as np
import torch
from transformers import DynamicCache


def common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    n = min(len(a), len(b))
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0]) if len(differ) else n


class LlavaChat:
    """One conversation with a LLaVA; `ask` returns the answer text and extends the conversation."""

    def __init__(self, model, processor, system: str | None = None, **generate_kwargs):
        self.model, self.processor = model, processor
        self.messages = [{"role": "system", "content": system}] if system else []
        self.images: list = []
        self.cache = DynamicCache(config=model.config.get_text_config())
        self.ids = torch.empty(0, dtype=torch.long)  # every token read or written so far
        self.prompt_length = 0
        self.rendered = ""  # the conversation's text, when `ids` are exactly its tokens up to a finished answer
        self.generate_kwargs = {"do_sample": False, "max_new_tokens": 256, **generate_kwargs}

    def _continuation(self, encoded) -> torch.Tensor | None:
        """The new turn's tokens as they fall in the whole conversation's tokenisation, or None when they cannot be
        separated cleanly from what is already cached."""
        if not self.rendered or not encoded.text.startswith(self.rendered):
            return None
        boundary = np.flatnonzero(encoded.offsets[:, 0] == len(self.rendered))
        if not len(boundary):
            return None  # a token straddles the boundary
        return torch.from_numpy(encoded.input_ids[boundary[0]:])

    def _retokenised(self, encoded) -> tuple[torch.Tensor, int, int]:
        """The whole conversation's ids; returns (ids, tokens reusable from the cache, first image to encode)."""
        ids = torch.from_numpy(encoded.input_ids)
        reuse = min(common_prefix(ids, self.ids[: self.cache.get_seq_length()]), len(ids) - 1)
        first_new_image = len(self.images)
        if self.images:  # never split an image: recompute from the first image not wholly in the cache
            starts = torch.from_numpy(encoded.image_positions)
            first_new_image = int((starts + self.processor.tokens_per_image <= reuse).sum())
            if first_new_image < len(self.images):
                reuse = min(reuse, int(starts[first_new_image]))
        return ids, reuse, first_new_image

    def ask(self, text: str, images: list | None = None, **generate_kwargs) -> str:
        images = list(images or [])
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
        self.messages.append({"role": "user", "content": content})
        encoded = self.processor.encode_conversation(self.messages, add_generation_prompt=True)
        new = self._continuation(encoded)
        if new is not None:
            ids, reuse, first_new_image = torch.cat([self.ids, new]), self.cache.get_seq_length(), len(self.images)
        else:
            ids, reuse, first_new_image = self._retokenised(encoded)
        self.images += images
        self.cache.crop(-(self.cache.get_seq_length() - reuse))  # a negative count removes that many tokens
        inputs = {"input_ids": ids[None], "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
        if self.images[first_new_image:]:
            inputs["pixel_values"] = self.processor.image_processor(
                self.images[first_new_image:], return_tensors="pt")["pixel_values"]
        output = self.model.generate(**inputs, past_key_values=self.cache,
                                     **{**self.generate_kwargs, **generate_kwargs})
        self.prompt_length = len(ids)  # where the last answer starts in `ids`
        answer_ids = output[0, len(ids):]
        answer = self.processor.tokenizer.decode(answer_ids, skip_special_tokens=True)
        stop_strings = self.model.generation_config.stop_strings or []
        stops = [s for s in stop_strings if answer.rstrip().endswith(s)]
        answer = (answer.rstrip()[: -len(stops[0])] if stops else answer).strip()
        self.messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        self.ids = torch.cat([output[0], self._closing(answer_ids, stops, stop_strings)])
        self.rendered = self.processor.encode_conversation(self.messages).text
        return answer

    def _closing(self, answer_ids: torch.Tensor, stops: list[str], stop_strings: list[str]) -> torch.Tensor:
        """The stop the template puts after an answer, when generation did not write it (cut by max_new_tokens)."""
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        if stops or (len(answer_ids) and int(answer_ids[-1]) in eos_ids):
            return torch.empty(0, dtype=torch.long)
        if stop_strings:
            return torch.tensor(self.processor.tokenizer(stop_strings[0], add_special_tokens=False)["input_ids"])
        return torch.tensor([self.processor.tokenizer.eos_token_id])


__all__ = ["LlavaChat"]
