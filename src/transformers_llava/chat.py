"""A multi-turn chat about images that keeps the conversation's KV cache between turns.

    chat = LlavaChat(model, processor)
    chat.ask("What is unusual about this image?", images=[Image.open("ironing.jpg")])
    chat.ask("Why might he be doing that?")        # no image re-encoding, no re-reading of earlier turns

Each turn renders the whole conversation with the processor's chat template and tokenises it, then reuses the
cache for the longest prefix it shares with what was already computed (the image tokens, earlier questions and
answers) and runs the model only on the rest. Only images whose tokens fall in that rest are encoded.
"""

import numpy as np
import torch
from transformers import DynamicCache


def expand_image_tokens(ids: np.ndarray, image_token_id: int, tokens_per_image: int) -> np.ndarray:
    """Repeat each image placeholder id into the tower's token count."""
    return np.repeat(ids, np.where(ids == image_token_id, tokens_per_image, 1))


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
        self.cached_ids = torch.empty(0, dtype=torch.long)  # the tokens whose keys/values are in the cache
        self.generate_kwargs = {"do_sample": False, "max_new_tokens": 256, **generate_kwargs}

    def _tokenize(self) -> torch.Tensor:
        prompt = self.processor.apply_chat_template(self.messages, add_generation_prompt=True)
        ids = np.asarray(self.processor.tokenizer(prompt)["input_ids"])  # BOS added, as the processor does
        return torch.from_numpy(expand_image_tokens(ids, self.processor.image_token_id, self.tokens_per_image))

    @property
    def tokens_per_image(self) -> int:
        crop = self.processor.image_processor.crop_size
        return self.processor.num_image_tokens(crop["height"], crop["width"])

    def ask(self, text: str, images: list | None = None, **generate_kwargs) -> str:
        images = list(images or [])
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
        self.messages.append({"role": "user", "content": content})
        self.images += images
        ids = self._tokenize()
        reuse = common_prefix(ids, self.cached_ids)
        reuse = min(reuse, len(ids) - 1)  # at least one token must run to produce the next one
        first_new_image = len(self.images)
        if self.images:
            # Never split an image: recompute from the start of the first image not wholly in the cache.
            starts = (ids == self.processor.image_token_id).nonzero().flatten()[:: self.tokens_per_image]
            first_new_image = int((starts + self.tokens_per_image <= reuse).sum())
            if first_new_image < len(self.images):
                reuse = min(reuse, int(starts[first_new_image]))
        self.cache.crop(-(self.cache.get_seq_length() - reuse))  # a negative count removes that many tokens
        inputs = {"input_ids": ids[None], "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
        new_images = self.images[first_new_image:]
        if new_images:
            inputs["pixel_values"] = self.processor.image_processor(new_images, return_tensors="pt")["pixel_values"]
        output = self.model.generate(**inputs, past_key_values=self.cache,
                                     **{**self.generate_kwargs, **generate_kwargs})
        self.cached_ids = output[0, : self.cache.get_seq_length()]
        answer = self.processor.tokenizer.decode(output[0, len(ids):], skip_special_tokens=True).strip()
        self.messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return answer


__all__ = ["LlavaChat", "expand_image_tokens"]
